"""Face swapping network Fswa (paper III-A, Figure 2): frozen MAE encoder -> CAFM -> ConvDecoder."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.config import SwapConfig
from faceswap_models.decoder import ConvDecoder
from faceswap_models.fusion import CrossAttentionFusion
from faceswap_models.generator import SwapModel
from faceswap_models.mae import MAEEncoder


class SwapGenerator(SwapModel):
    """Fswa(I_s, I_t) -> I_o.

    The shared encoder Ef is pretrained (`FaceMAE`) and, with cfg.freeze_encoder (paper), kept
    frozen: requires_grad False, always in eval mode, run under no_grad (no activations stored).

    Example:
        >>> g = SwapGenerator(SwapConfig.tiny())
        >>> g.load_encoder_state(mae.state_dict())  # FaceMAE or MAEEncoder state dict
        >>> out = g(source, target)  # (B, 3, 32, 32) in [-1, 1]
    """

    architecture = "flowfacepp"

    def __init__(self, cfg: SwapConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MAEEncoder(cfg.mae)
        self.fusion = CrossAttentionFusion(cfg.fusion)
        self.decoder = ConvDecoder(cfg.decoder)
        if cfg.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        if cfg.decoder.skip:  # False: the skip branches are closed (train_swap.skip_start_step); saved with the weights
            self.register_buffer("skip_open", torch.tensor(True))
        if "source_flow" in cfg.decoder.skip:  # per token (dx, dy) in grid_sample units, zero at init
            self.skip_flow = nn.Linear(cfg.decoder.in_dim, 2)
            nn.init.zeros_(self.skip_flow.weight)
            nn.init.zeros_(self.skip_flow.bias)
        self.register_buffer("face_mask", face_ellipse_mask(cfg.mae.img_size, cfg.face_ellipse), persistent=False)
        spare = torch.zeros(1, 1, cfg.mae.img_size, cfg.mae.img_size)
        for ellipse in cfg.target_face_spare:
            spare = torch.maximum(spare, face_ellipse_mask(cfg.mae.img_size, ellipse, edge=0.3))
        self.register_buffer("spare_mask", spare * self.face_mask, persistent=False)  # (1, 1, H, W)

    def target_input(self, target: Tensor) -> Tensor:
        """What the encoder sees of the target: itself (paper), or with cfg.target_face_lowpass = k its
        inner face (soft ellipse `face_mask`) replaced by a k x k-average low-pass, which keeps pose,
        illumination and coarse expression but not the detail identity lives in; inside `spare_mask`
        (cfg.target_face_spare: eyes, mouth) only a cfg.target_spare_lowpass one. (B, 3, H, W)."""
        k = self.cfg.target_face_lowpass
        if not k:
            return target
        out = target + self.face_mask * (lowpass(target, k) - target)
        if self.cfg.target_face_spare:
            out = out + self.spare_mask * (lowpass(target, self.cfg.target_spare_lowpass) - out)
        return out

    def train(self, mode: bool = True) -> SwapGenerator:
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.encoder.eval()
        return self

    @property
    def img_size(self) -> int:
        return self.cfg.mae.img_size

    def encode_source(self, source: Tensor) -> Tensor:
        """The source's encoder tokens (B, N, L) (`swap_encoded`'s e_s)."""
        return self.encode(source)

    def load_encoder_state(self, state: Mapping[str, Tensor]) -> None:
        """Load Ef from a `FaceMAE` state dict (keys 'encoder.*', decoder keys ignored) or an `MAEEncoder` one."""
        if any(k.startswith("encoder.") for k in state):
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        self.encoder.load_state_dict(state, strict=True)

    def encode(self, imgs: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, L) patch embeddings, without graph when the encoder is frozen."""
        if self.cfg.freeze_encoder:
            with torch.no_grad():
                return self.encoder(imgs)
        return self.encoder(imgs)

    def forward(self, source: Tensor, target: Tensor,  # type: ignore[override]
                return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Swap the identity of `source` onto `target`.

        Args:
            source, target: (B, 3, H, W) aligned faces in [-1, 1], H = W = cfg.mae.img_size.
            return_attn: also return CAFM cross-attention maps (B, heads, N, N).
        Returns:
            I_o (B, 3, H, W) in [-1, 1] (and attn if asked).
        """
        assert source.shape == target.shape, f"source {tuple(source.shape)} vs target {tuple(target.shape)}"
        B = source.shape[0]
        seen = self.target_input(target)
        e = self.encode(torch.cat([source, seen]))  # (2B, N, L), one encoder pass
        return self._fuse_decode(e[:B], e[B:], source, seen, return_attn)

    def swap_encoded(self, e_s: Tensor, source: Tensor, target: Tensor) -> Tensor:
        """`forward` with the source's tokens e_s = encode(source) computed once (inference: one
        source, many targets). e_s (1 or B, N, L), source (1 or B, 3, H, W) (read only by
        decoder.skip), target (B, 3, H, W) -> (B, 3, H, W)."""
        seen = self.target_input(target)
        e_t = self.encode(seen)  # (B, N, L)
        B = e_t.shape[0]
        return self._fuse_decode(e_s.expand(B, -1, -1), e_t, source.expand(B, -1, -1, -1), seen, False)

    def _fuse_decode(self, e_s: Tensor, e_t: Tensor, source: Tensor, seen: Tensor,
                     return_attn: bool) -> Tensor | tuple[Tensor, Tensor]:
        if return_attn:
            e_o, attn = self.fusion(e_s, e_t, return_attn=True)
        else:
            e_o = self.fusion(e_s, e_t)  # (B, N, L)
        out = self.decoder(e_o, self.skip_images(source, seen, e_o))  # (B, 3, H, W)
        return (out, attn) if return_attn else out

    def skip_images(self, source: Tensor, seen: Tensor, fused: Tensor) -> Tensor | None:
        """The decoder's skip input (cfg.decoder.skip), (B, 3k, H, W), or None: source, seen (what the
        encoder saw of the target) and the source warped by the flow `skip_flow` reads off the fused
        tokens (B, N, L), upsampled bilinearly to the image. None also while `skip_open` is False."""
        if not self.cfg.decoder.skip or not bool(self.skip_open):
            return None
        if self.training and self.cfg.decoder.skip_jitter:
            source = jitter(source, self.cfg.decoder.skip_jitter)
        images = {"source": source, "target": seen}
        if "source_flow" in self.cfg.decoder.skip:
            B, _, H, W = source.shape
            g = self.cfg.decoder.grid_size
            flow = self.skip_flow(fused).transpose(1, 2).reshape(B, 2, g, g)  # (B, 2, g, g): (dx, dy)
            flow = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
            identity = torch.eye(2, 3, dtype=source.dtype, device=source.device).expand(B, 2, 3)
            base = F.affine_grid(identity, [B, 3, H, W], align_corners=False)  # (B, H, W, 2): pixel centres
            images["source_flow"] = F.grid_sample(source, base + flow, mode="bilinear", padding_mode="border",
                                                  align_corners=False)
        return torch.cat([images[k] for k in self.cfg.decoder.skip], 1)


def jitter(img: Tensor, amount: float) -> Tensor:
    """(B, C, H, W) each moved by its own random similarity: shift up to `amount` of the side, rotation
    up to amount * 90 degrees, scale 1 +- amount (torch's RNG); borders repeat the edge."""
    B = img.shape[0]
    u = (torch.rand(B, 4, device=img.device) * 2 - 1) * amount  # (B, 4): angle, scale, dx, dy in [-a, a]
    ang, scale = u[:, 0] * torch.pi / 2, 1 + u[:, 1]
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, 2 * u[:, 2]], 1), torch.stack([sin, cos, 2 * u[:, 3]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(img.dtype), list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


def lowpass(img: Tensor, k: int) -> Tensor:
    """(B, C, H, W) averaged over k x k blocks and upsampled back bilinearly (k = 0 or 1: unchanged)."""
    if k <= 1:
        return img
    return F.interpolate(F.avg_pool2d(img, k), size=img.shape[-2:], mode="bilinear", align_corners=False)


def face_ellipse_mask(size: int, ellipse: tuple[float, float, float, float], edge: float = 0.15) -> Tensor:
    """(1, 1, size, size) soft ellipse in [0, 1]: 1 inside, 0 outside, a linear ramp over `edge` of the
    radius. ellipse = (centre y, centre x, radius y, radius x) as fractions of the side."""
    cy, cx, ry, rx = ellipse
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    r = (((c[:, None] - cy) / ry) ** 2 + ((c[None, :] - cx) / rx) ** 2).sqrt()  # (size, size), 1 on the ellipse
    return ((1 + edge - r) / edge).clamp(0, 1)[None, None]
