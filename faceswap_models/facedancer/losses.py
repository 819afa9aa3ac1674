"""FaceDancer loss terms as pure functions (identity 1 - cos: `faceswap_models.losses.identity_loss`;
R1 gradient penalty: `faceswap_models.losses.r1_penalty`).

L_G = L_adv + 10 L_i + 5 L_r + 0.2 L_p + L_c + L_ifsr; the discriminator: non-saturating logistic loss
(StarGAN-v2's, whose discriminator FaceDancer uses) + 10 L_gp. L1 norms are taken as means per element.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["block_cosines", "ifsr_loss", "masked_l1", "cycle_loss", "d_logistic", "g_logistic"]


def block_cosines(feats_a: Sequence[Tensor], feats_b: Sequence[Tensor]) -> Tensor:
    """Cosine similarity of each block's flattened feature maps: lists of (B, C_i, H_i, W_i) -> (B, n_blocks)."""
    assert len(feats_a) == len(feats_b) > 0, f"{len(feats_a)} vs {len(feats_b)} blocks"
    cols = []
    for a, b in zip(feats_a, feats_b):
        assert a.shape == b.shape, f"{tuple(a.shape)} vs {tuple(b.shape)}"
        cols.append(F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1, eps=1e-8))
    return torch.stack(cols, dim=1)


def ifsr_loss(feats_out: Sequence[Tensor], feats_tgt: Sequence[Tensor], margins: Tensor | Sequence[float]) -> Tensor:
    """IFSR: sum over the identity encoder's blocks i of E_b[max(0, m_i - cos(I_i(X_c), I_i(X_t)))].

    A block's features of the output may drift from the target's only as far as a swap typically does
    (margin m_i, a similarity); past that the hinge pulls them back. feats: lists of (B, C_i, H_i, W_i)."""
    cos = block_cosines(feats_out, feats_tgt)  # (B, n)
    m = torch.as_tensor(margins, dtype=cos.dtype, device=cos.device)
    assert m.shape == (cos.shape[1],), f"{cos.shape[1]} blocks, {tuple(m.shape)} margins"
    return F.relu(m - cos).mean(dim=0).sum()


def masked_l1(out: Tensor, target: Tensor, same: Tensor) -> Tensor:
    """L_r: mean over the pairs with X_s = X_t of the per-pair mean |X_c - X_t|; 0 (graph intact) if none.
    out, target (B, C, H, W); same (B,) bool."""
    assert out.shape == target.shape, f"{tuple(out.shape)} vs {tuple(target.shape)}"
    per_pair = (out - target).abs().flatten(1).mean(dim=1)  # (B,)
    assert same.shape == per_pair.shape, f"same {tuple(same.shape)}, batch {per_pair.shape[0]}"
    same = same.to(device=per_pair.device, dtype=torch.bool)
    picked = torch.where(same, per_pair, torch.zeros_like(per_pair))
    return picked.sum() / same.sum().clamp_min(1).to(per_pair.dtype)


def cycle_loss(cycled: Tensor, target: Tensor) -> Tensor:
    """L_c = mean |G(X_t -> X_c) - X_t|: swapping the target's identity back onto the output returns the target."""
    assert cycled.shape == target.shape, f"{tuple(cycled.shape)} vs {tuple(target.shape)}"
    return (cycled - target).abs().mean()


def d_logistic(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator's non-saturating logistic loss E[softplus(-D(real))] + E[softplus(D(fake))]."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_logistic(fake_logits: Tensor) -> Tensor:
    """Generator's non-saturating adversarial loss L_adv = E[softplus(-D(fake))]."""
    return F.softplus(-fake_logits).mean()
