"""FaceShifter loss terms as pure functions (the identity term 1 - cos is `faceswap_models.losses.identity_loss`).

AEI-Net:  L_adv + 10 L_att + 5 L_id + 10 L_rec;  HEAR-Net: L'_id + L'_chg + L'_rec (weights in config.py).
The paper's squared L2 norms ||.||_2^2 are taken as means (per element, then over levels / pairs), so the
weights do not depend on the image or feature size. Whether z_att(X_t) or Y_hat_st is detached is the
caller's choice (HEAR-Net training: AEI-Net is fixed, pass its outputs detached).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attribute_loss", "half_l2_reconstruction", "change_loss", "multiscale_d_hinge", "multiscale_g_hinge"]


def attribute_loss(z_out: Sequence[Tensor], z_tgt: Sequence[Tensor]) -> Tensor:
    """L_att = 1/2 sum_k mean((z_att^k(Y_hat_st) - z_att^k(X_t))^2) over the n attribute levels."""
    assert len(z_out) == len(z_tgt) > 0, f"{len(z_out)} vs {len(z_tgt)} attribute levels"
    total = z_out[0].new_zeros(())
    for a, b in zip(z_out, z_tgt):
        assert a.shape == b.shape, f"{tuple(a.shape)} vs {tuple(b.shape)}"
        total = total + (a - b).pow(2).mean()
    return 0.5 * total


def half_l2_reconstruction(out: Tensor, target: Tensor, same: Tensor) -> Tensor:
    """L_rec = 1/2 mean over the pairs with X_s == X_t of the per-pair MSE; 0 (graph intact) if there are none.

    out, target (B, C, H, W); same (B,) bool."""
    assert out.shape == target.shape, f"{tuple(out.shape)} vs {tuple(target.shape)}"
    per_pair = (out - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    assert same.shape == per_pair.shape, f"same {tuple(same.shape)}, batch {per_pair.shape[0]}"
    same = same.to(device=per_pair.device, dtype=torch.bool)
    picked = torch.where(same, per_pair, torch.zeros_like(per_pair))  # no NaN leak from unused pairs
    return 0.5 * picked.sum() / same.sum().clamp_min(1).to(per_pair.dtype)


def change_loss(refined: Tensor, aei_out: Tensor) -> Tensor:
    """L'_chg = mean |Y_st - Y_hat_st| (L1, per element)."""
    assert refined.shape == aei_out.shape, f"{tuple(refined.shape)} vs {tuple(aei_out.shape)}"
    return (refined - aei_out).abs().mean()


def multiscale_d_hinge(real: Sequence[Tensor], fake: Sequence[Tensor]) -> Tensor:
    """Discriminator hinge, mean over scales of E[relu(1 - D(real))] + E[relu(1 + D(fake))]."""
    assert len(real) == len(fake) > 0, f"{len(real)} vs {len(fake)} scales"
    terms = [F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(terms).mean()


def multiscale_g_hinge(fake: Sequence[Tensor]) -> Tensor:
    """Generator hinge (L_adv), mean over scales of -E[D(fake)]."""
    assert len(fake) > 0
    return torch.stack([-f.mean() for f in fake]).mean()
