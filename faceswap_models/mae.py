"""Face masked autoencoder (MAE, He et al. 2022) used as Fswa's shared encoder Ef (paper III-A1).

`FaceMAE` = `MAEEncoder` (ViT over all or only the visible patches) + `MAEDecoder` (light ViT that
predicts pixels of the masked patches). Pretraining loss: per-patch normalised-pixel MSE on the
masked patches only. The swap network keeps only the encoder and uses it unmasked:
`FaceMAE.forward_encoder(imgs) -> e (B, N, L)`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from faceswap_models.config import MAEConfig
from faceswap_models.layers import PatchEmbed, TransformerBlock, init_vit_weights, patchify, sincos_pos_embed_2d


def random_masking(x: Tensor, mask_ratio: float, noise: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Keep a random (1 - mask_ratio) subset of tokens per sample (MAE's argsort trick).

    Args:
        x: (B, N, D) tokens.
        mask_ratio: fraction of tokens removed.
        noise: optional (B, N) uniform noise that fixes the shuffle (tests, reproducibility).
    Returns:
        kept (B, N_keep, D); mask (B, N) with 1 = removed, 0 = kept; ids_restore (B, N).
    """
    B, N, D = x.shape
    n_keep = int(N * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(B, N, device=x.device)
    assert noise.shape == (B, N)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N)
    ids_keep = ids_shuffle[:, :n_keep]  # (B, N_keep)
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # (B, N_keep, D)
    mask = torch.ones(B, N, device=x.device, dtype=x.dtype)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, N) in original patch order
    return kept, mask, ids_restore


class MAEEncoder(nn.Module):
    """ViT encoder Ef: patch embedding + fixed sin-cos positions + cls token + blocks + LayerNorm."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        pos = torch.cat([torch.zeros(1, cfg.dim), sincos_pos_embed_2d(cfg.dim, cfg.grid_size)])  # (1+N, D)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1+N, D), fixed
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        init_vit_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)

    def _run(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs: Tensor) -> Tensor:
        """Unmasked patch embeddings e = Ef(I), paper eq. (1).

        Args:
            imgs: (B, C, H, W) faces in [-1, 1].
        Returns:
            (B, N, L) patch tokens (cls token dropped), N = (H/p)^2, L = dim.
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # (B, N, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self._run(torch.cat([cls, x], dim=1))  # (B, 1+N, D)
        return x[:, 1:]  # (B, N, D)

    def forward_masked(self, imgs: Tensor, mask_ratio: float,
                       noise: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Encode only the visible patches. Returns latent (B, 1+N_keep, D), mask (B, N), ids_restore (B, N)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # (B, N, D)
        x, mask, ids_restore = random_masking(x, mask_ratio, noise)  # (B, N_keep, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        return self._run(torch.cat([cls, x], dim=1)), mask, ids_restore


class MAEDecoder(nn.Module):
    """Lightweight ViT decoder used only for pretraining: re-inserts mask tokens, predicts pixels."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        pos = torch.cat([torch.zeros(1, cfg.decoder_dim), sincos_pos_embed_2d(cfg.decoder_dim, cfg.grid_size)])
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1+N, Dd)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth))
        self.norm = nn.LayerNorm(cfg.decoder_dim)
        self.pred = nn.Linear(cfg.decoder_dim, cfg.patch_size**2 * cfg.in_chans)
        init_vit_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (B, 1+N_keep, D), ids_restore (B, N) -> pixel predictions (B, N, p*p*C)."""
        B, N = ids_restore.shape
        x = self.embed(latent)  # (B, 1+N_keep, Dd)
        n_mask = N + 1 - x.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, n_mask, -1)], dim=1)  # (B, N, Dd) shuffled
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], tokens], dim=1) + self.pos_embed  # (B, 1+N, Dd)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]  # (B, N, p*p*C)


class FaceMAE(nn.Module):
    """Masked autoencoder for faces; pretraining stage `pretrain_mae`.

    Example:
        >>> mae = FaceMAE(MAEConfig.tiny())
        >>> loss, pred, mask = mae(torch.randn(2, 3, 32, 32))
        >>> e = mae.forward_encoder(torch.randn(2, 3, 32, 32))  # (2, 16, 32), unmasked
    """

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MAEEncoder(cfg)
        self.decoder = MAEDecoder(cfg)

    def forward_encoder(self, imgs: Tensor) -> Tensor:
        """Unmasked patch embeddings (B, N, L) as used by the swap network."""
        return self.encoder(imgs)

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        return self.decoder(latent, ids_restore)

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """MSE on masked patches; targets normalised per patch (mean/var) when cfg.norm_pix_loss.

        Args:
            imgs: (B, C, H, W); pred: (B, N, p*p*C); mask: (B, N), 1 = masked.
        """
        target = patchify(imgs, self.cfg.patch_size)  # (B, N, p*p*C)
        assert pred.shape == target.shape, f"pred {tuple(pred.shape)} vs target {tuple(target.shape)}"
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(self, imgs: Tensor, mask_ratio: Optional[float] = None,
                noise: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Pretraining step. Returns (loss scalar, pred (B, N, p*p*C), mask (B, N))."""
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.encoder.forward_masked(imgs, ratio, noise)
        pred = self.decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask
