"""Cross-attention fusion module (CAFM, paper III-A2, eqs. 2-3).

One cross-attention block (queries from target patches, keys/values from source patches, target
values added back: V_fu = softmax(Q_t K_s^T / sqrt(d_k)) V_s + V_t) followed by two standard
transformer blocks. Attention maps can be returned for the paper's Figure 13 visualisation.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.config import FusionConfig
from faceswap_models.layers import MLP, TransformerBlock, init_vit_weights


class CrossAttention(nn.Module):
    """Multi-head cross attention target <- source with the target-value skip of eq. (3).

    Q, K, V projections are shared by source and target (one unified MAE latent space);
    Q_t = W_q t, K_s = W_k s, V_s = W_v s, V_t = W_v t.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

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
        if return_attn:
            attn = (q_t @ k_s.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)  # (B, h, Nt, Ns)
            agg = attn @ v_s  # (B, h, Nt, hd)
        else:
            agg = F.scaled_dot_product_attention(q_t, k_s, v_s)  # (B, h, Nt, hd)
        v_fu = agg + v_t  # eq. (3)
        return self.proj(v_fu.transpose(1, 2).reshape(B, Nt, D)), attn  # (B, Nt, D)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block: x = e_t + CA(LN(e_t), LN(e_s)); e_fu = x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(dim)
        self.norm_s = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
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
        self.cross = CrossAttentionBlock(cfg.dim, cfg.heads, cfg.mlp_ratio)
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
