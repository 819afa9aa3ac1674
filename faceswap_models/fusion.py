"""Cross-attention fusion module (CAFM, paper III-A2, eqs. 2-3).

One cross-attention block (queries from target patches, keys/values from source patches, target
values added back: V_fu = softmax(Q_t K_s^T / sqrt(d_k)) V_s + V_t) followed by two standard
transformer blocks. Attention maps can be returned for the paper's Figure 13 visualisation.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.config import FusionConfig
from faceswap_models.layers import MLP, TransformerBlock, init_vit_weights


class CrossAttention(nn.Module):
    """Multi-head cross attention target <- source with the target-value skip of eq. (3).

    Q, K, V projections are shared by source and target (one unified MAE latent space);
    Q_t = W_q t, K_s = W_k s, V_s = W_v s, V_t = W_v t.
    """

    def __init__(self, dim: int, heads: int, position_prior: float = 0.0) -> None:
        super().__init__()
        assert dim % heads == 0
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.position_prior = float(position_prior)
        # per-head log-scale of the locality prior (learned; only with position_prior > 0)
        self.prior_log_scale = nn.Parameter(torch.zeros(heads)) if position_prior > 0 else None
        # squared grid distances (n, n), built on first use for the token count seen (not saved)
        self.register_buffer("grid_d2", torch.zeros(0, 0), persistent=False)

    def locality_bias(self, n: int) -> Optional[Tensor]:
        """(heads, n, n) logit bias -a_h * squared grid distance on a sqrt(n) x sqrt(n) grid, or None."""
        if self.prior_log_scale is None:
            return None
        if self.grid_d2.shape[0] != n:
            g = math.isqrt(n)
            assert g * g == n, f"locality prior needs a square token grid, got {n} tokens"
            yx = torch.stack(torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij"), -1).reshape(n, 2)
            self.grid_d2 = (yx[:, None, :] - yx[None, :, :]).pow(2).sum(-1).to(self.prior_log_scale)  # (n, n)
        return -(self.position_prior * self.prior_log_scale.exp())[:, None, None] * self.grid_d2

    def _split(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        return x.reshape(B, N, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, hd)

    def forward(self, t: Tensor, s: Tensor, return_attn: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """t: (B, Nt, D) target tokens; s: (B, Ns, D) source tokens.

        Returns (B, Nt, D) projected V_fu and, if asked, CA maps (B, heads, Nt, Ns) (rows sum to 1).
        """
        B, Nt, D = t.shape
        assert s.shape[0] == B and s.shape[2] == D, f"source {tuple(s.shape)} vs target {tuple(t.shape)}"
        q_t, k_s = self._split(self.q(t)), self._split(self.k(s))  # (B, h, Nt, hd), (B, h, Ns, hd)
        v_s, v_t = self._split(self.v(s)), self._split(self.v(t))  # (B, h, Ns, hd), (B, h, Nt, hd)
        attn: Optional[Tensor] = None
        bias = self.locality_bias(Nt) if Nt == s.shape[1] else None  # (h, Nt, Ns) or None
        if return_attn:
            logits = q_t @ k_s.transpose(-2, -1) * self.head_dim**-0.5  # (B, h, Nt, Ns)
            attn = (logits if bias is None else logits + bias.to(logits.dtype)).softmax(dim=-1)
            agg = attn @ v_s  # (B, h, Nt, hd)
        else:
            agg = F.scaled_dot_product_attention(q_t, k_s, v_s, attn_mask=None if bias is None else bias.to(q_t.dtype))
        v_fu = agg + v_t  # eq. (3)
        return self.proj(v_fu.transpose(1, 2).reshape(B, Nt, D)), attn  # (B, Nt, D)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block: x = e_t + CA(LN(e_t), LN(e_s)); e_fu = x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, position_prior: float = 0.0) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(dim)
        self.norm_s = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads, position_prior)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, e_t: Tensor, e_s: Tensor, return_attn: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        y, attn = self.attn(self.norm_t(e_t), self.norm_s(e_s), return_attn)
        x = e_t + y  # (B, N, D)
        return x + self.mlp(self.norm2(x)), attn  # (B, N, D)


class CrossAttentionFusion(nn.Module):
    """CAFM: cross-attention block + `num_blocks` transformer blocks + LayerNorm -> e_o (B, N, D)."""

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cross = CrossAttentionBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.position_prior)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.num_blocks))
        self.norm = nn.LayerNorm(cfg.dim)
        init_vit_weights(self)

    def forward(self, e_s: Tensor, e_t: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Fuse source identity into target tokens.

        Args:
            e_s: (B, N, D) source patch embeddings; e_t: (B, N, D) target patch embeddings.
            return_attn: also return the cross-attention maps (B, heads, N_t, N_s).
        Returns:
            e_o (B, N, D), or (e_o, attn) when return_attn.
        """
        assert e_s.shape == e_t.shape and e_t.shape[-1] == self.cfg.dim, \
            f"e_s {tuple(e_s.shape)}, e_t {tuple(e_t.shape)}, dim {self.cfg.dim}"
        x, attn = self.cross(e_t, e_s, return_attn)  # (B, N, D)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)  # (B, N, D)
        if return_attn:
            assert attn is not None
            return x, attn
        return x
