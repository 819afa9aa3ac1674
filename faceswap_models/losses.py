"""FlowFace++ loss terms as small functions, and weighted totals from the weight dataclasses.

Fswa (paper eq. 4): adv + 10 rec + 5 id + 10 exp + 5000 ldmk + 2 perc + 3 flow.
Dshape (eq. 19):    adv + 10 rec + 800 ldmk.
Norm choices where the paper writes a bare ||.||_2 (documented per function):
  * rec, perc: mean squared error (per pixel / feature element);
  * ldmk: mean squared error of coordinates normalised to [0, 1] by the image size (the
    weights 5000 / 800 only make sense on that scale: 1 px at 256 costs 5000 / 256^2 = 0.08);
  * exp, flow: Euclidean distance per embedding / per pixel vector, averaged.
Hinge losses follow Lim & Ye (2017) with real = target / I2 and fake = I_o / I2_res (the paper's
eq. 6 swaps the two signs by a typo; with eq. 5 only this reading is consistent).
"""
from __future__ import annotations

from typing import Callable, Literal, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from faceswap_models.config import ShapeLossWeights, SwapLossWeights

__all__ = [
    "SwapLossWeights", "ShapeLossWeights", "SWAP_TERMS", "SHAPE_TERMS", "INNER_LANDMARKS",
    "d_hinge_loss", "g_hinge_loss", "reconstruction_loss", "identity_loss", "expression_loss",
    "landmark_mse", "landmark_loss", "perceptual_loss", "flow_loss", "r1_penalty",
    "weighted_total", "swap_generator_loss", "shape_generator_loss", "discriminator_loss",
]

SWAP_TERMS: tuple[str, ...] = ("adv", "rec", "id", "exp", "ldmk", "perc", "flow")
SHAPE_TERMS: tuple[str, ...] = ("adv", "rec", "ldmk")
#: Indices of the 51 inner-face points (brows, nose, eyes, mouth) in the 68-point iBUG layout.
INNER_LANDMARKS = slice(17, 68)


# --------------------------------------------------------------------------- adversarial
def d_hinge_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss E[max(0, 1 - D(real))] + E[max(0, 1 + D(fake))] (eqs. 6, 21)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge_loss(fake_logits: Tensor) -> Tensor:
    """Generator hinge loss -E[D(fake)] (eqs. 5, 20)."""
    return -fake_logits.mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1 gradient penalty 0.5 * E_b ||d sum D(x) / dx_b||^2 (Mescheder et al.; StarGAN-v2 form).

    `real_images` must have requires_grad=True *before* the discriminator call. Not in the paper.
    """
    assert real_images.requires_grad, "call real_images.requires_grad_(True) before D(real_images)"
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(dim=1).mean()


# --------------------------------------------------------------------------- image / feature
def reconstruction_loss(output: Tensor, target: Tensor, same_identity: Optional[Tensor] = None) -> Tensor:
    """Pixel MSE ||I_o - I_t||^2 averaged over the same-identity pairs only (eq. 7).

    Args:
        output, target: (B, C, H, W).
        same_identity: (B,) bool, True where I_s == I_t; None = every pair (Dshape's rec, I2_res vs I2).
    Returns:
        scalar; mean over selected pairs (FaceShifter convention), 0 (with graph) if none selected.
    """
    assert output.shape == target.shape, f"{tuple(output.shape)} vs {tuple(target.shape)}"
    per_pair = (output - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    if same_identity is None:
        return per_pair.mean()
    assert same_identity.shape == per_pair.shape, f"mask {tuple(same_identity.shape)}, batch {per_pair.shape[0]}"
    m = same_identity.to(per_pair.dtype)
    return (per_pair * m).sum() / m.sum().clamp_min(1.0)


def perceptual_loss(feats_out: Sequence[Tensor], feats_ref: Sequence[Tensor],
                    kind: Literal["l2", "l1", "lpips"] = "l2") -> Tensor:
    """Sum over layers of the mean squared ('l2', eq. 9) or absolute ('l1') feature difference, or ('lpips')
    LPIPS with uniform channel weights (Zhang et al. 2018's "baseline" form): per layer, each pixel's
    feature vector scaled to unit length, the squared difference summed over channels, averaged over space.

    Args: lists of feature maps (e.g. VGG's last two conv layers) of I_o and I_t, same shapes.
    """
    assert len(feats_out) == len(feats_ref) and len(feats_out) > 0, "need matching, non-empty feature lists"
    total = feats_out[0].new_zeros(())
    for a, b in zip(feats_out, feats_ref):
        assert a.shape == b.shape, f"{tuple(a.shape)} vs {tuple(b.shape)}"
        if kind == "lpips":
            d = F.normalize(a, dim=1, eps=1e-10) - F.normalize(b, dim=1, eps=1e-10)
            total = total + d.pow(2).sum(dim=1).mean()
        else:
            total = total + (F.mse_loss if kind == "l2" else F.l1_loss)(a, b)
    return total


def structural_loss(output: Tensor, reference: Tensor) -> Tensor:
    """L1 + (1 - SSIM) between (B, 3, H, W) images in [-1, 1] (SSIM: pytorch-msssim, 11x11 Gaussian
    window; H, W >= 11). The offline default of the perceptual term: it keeps the target's structure
    and colour without a feature network that could also carry identity."""
    from pytorch_msssim import ssim

    assert output.shape == reference.shape, f"{tuple(output.shape)} vs {tuple(reference.shape)}"
    s = ssim((output.float() + 1) * 0.5, (reference.float() + 1) * 0.5, data_range=1.0, size_average=True)
    return F.l1_loss(output, reference) + (1.0 - s)


# --------------------------------------------------------------------------- embeddings
def identity_loss(emb_out: Tensor, emb_src: Tensor) -> Tensor:
    """1 - cos(Eid(I_o), Eid(I_s)) averaged over the batch (eq. 11). Embeddings (B, D)."""
    assert emb_out.shape == emb_src.shape and emb_out.dim() == 2
    return (1.0 - F.cosine_similarity(emb_out, emb_src, dim=1)).mean()


def expression_loss(exp_out: Tensor, exp_tgt: Tensor) -> Tensor:
    """Euclidean distance ||Eexp(I_o) - Eexp(I_t)||_2 averaged over the batch (eq. 10). (B, D).

    (torch's vector_norm has a zero subgradient at 0, so identical inputs give finite grads.)
    """
    assert exp_out.shape == exp_tgt.shape and exp_out.dim() == 2
    return torch.linalg.vector_norm(exp_out - exp_tgt, dim=1).mean()


# --------------------------------------------------------------------------- geometry
def landmark_mse(pred: Tensor, target: Tensor, image_size: int) -> Tensor:
    """MSE of (B, K, 2) pixel landmarks after dividing by image_size (coords in [0, 1])."""
    assert pred.shape == target.shape and pred.dim() == 3 and pred.shape[-1] == 2, \
        f"{tuple(pred.shape)} vs {tuple(target.shape)}"
    return F.mse_loss(pred / image_size, target / image_size)


def landmark_loss(pred: Tensor, target: Tensor, image_size: int) -> Tensor:
    """Posture loss on the 51 inner landmarks (eq. 8); accepts (B, 68, 2) or already-inner (B, 51, 2)."""
    def inner(p: Tensor) -> Tensor:
        if p.shape[1] == 68:
            return p[:, INNER_LANDMARKS]
        assert p.shape[1] == 51, f"expected 68 or 51 landmarks, got {p.shape[1]}"
        return p
    return landmark_mse(inner(pred), inner(target), image_size)


def flow_loss(flow: Tensor) -> Tensor:
    """Facial shape loss: per-pixel Euclidean norm of V_so (B, 2, H, W), mean over B, H, W (eq. 13)."""
    assert flow.dim() == 4 and flow.shape[1] == 2, f"flow must be (B, 2, H, W), got {tuple(flow.shape)}"
    return torch.linalg.vector_norm(flow, dim=1).mean()


# --------------------------------------------------------------------------- totals
def weighted_total(terms: Mapping[str, Tensor], weights: object, allowed: Sequence[str]) -> dict[str, Tensor]:
    """Return the named terms plus 'total' = sum(weight[name] * term); absent terms are skipped."""
    unknown = sorted(set(terms) - set(allowed))
    if unknown:
        raise ValueError(f"unknown loss term(s) {unknown}; allowed: {list(allowed)}")
    if not terms:
        raise ValueError("no loss terms given")
    out = dict(terms)
    out["total"] = sum(getattr(weights, k) * v for k, v in terms.items())  # type: ignore[assignment]
    return out


def swap_generator_loss(terms: Mapping[str, Tensor],
                        weights: SwapLossWeights = SwapLossWeights()) -> dict[str, Tensor]:
    """Fswa objective (eq. 4) over any subset of SWAP_TERMS (e.g. no 'flow' in the first half)."""
    return weighted_total(terms, weights, SWAP_TERMS)


def shape_generator_loss(terms: Mapping[str, Tensor],
                         weights: ShapeLossWeights = ShapeLossWeights()) -> dict[str, Tensor]:
    """Dshape / Gres objective (eq. 19) over any subset of SHAPE_TERMS."""
    return weighted_total(terms, weights, SHAPE_TERMS)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, r1: Optional[Tensor] = None,
                       r1_weight: float = 1.0, adversarial: Callable[[Tensor, Tensor], Tensor] | None = None
                       ) -> dict[str, Tensor]:
    """A discriminator's objective: `adversarial(real_logits, fake_logits)` (default hinge: Dswa, Dres, AEI-Net's;
    FaceDancer and HifiFace pass the non-saturating logistic loss) + r1_weight * R1. Returns {'adv', 'r1'?, 'total'}."""
    adv = (adversarial or d_hinge_loss)(real_logits, fake_logits)
    out = {"adv": adv, "total": adv}
    if r1 is not None:
        out["r1"] = r1
        out["total"] = adv + r1_weight * r1
    return out
