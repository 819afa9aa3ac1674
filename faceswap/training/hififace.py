"""HifiFace's training objective (Wang et al., IJCAI 2021) as a `TrainTask` (stage train_hififace).

Per step: 'g' = L_sid + L_real on I_r, I_low = G(v_sid(I_s, I_t), I_t), then 'd' = the StarGAN-v2
discriminator's logistic loss on I_t vs the g phase's detached I_r + gp * R1 on I_t.

    L_sid  = w_shape L_shape + w_id L_id
      L_shape: landmark L1 between the projected 3DMM points of c_fuse (source shape, target expression,
               pose, camera) and those of the coefficients the frozen regressor reads off I_r and I_low
               (up-sampled), in pixels of a 256 px face (the paper's resolution, so w_shape keeps its meaning)
      L_id:    (1 - cos(v_id(I_s), v_id(I_r))) + (1 - cos(v_id(I_s), v_id(I_low)))
    L_real = L_adv + w_seg L_seg + w_rec L_rec + w_cycle L_cyc + w_perc L_lpips
      L_seg:   M_low, M_r vs the target's dilated face parsing (stage segment), L1
      L_rec:   |I_r - I_t| + |I_low - R(I_t)| on the pairs with I_s = I_t
      L_cyc:   |I_t - G(I_t -> I_r)|: the target's identity swapped back onto I_r returns the target
      L_lpips: LPIPS on the I_s = I_t pairs (VGG16 with user weights), offline default L1 + 1 - SSIM

The identity network and the 3DMM regressor are frozen; gradients flow through them to the images only.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap.training.checkpoint import unwrap
from faceswap.training.contour import ContourProjector, projected_points
from faceswap.training.facedancer import perceptual_same
from faceswap.training.steps import Batch, GeneratorFirstTask, Terms, adam, discriminator_terms
from faceswap_models.facedancer.losses import cycle_loss, d_logistic, g_logistic, masked_l1
from faceswap_models.hififace.config import HifiFaceLossWeights
from faceswap_models.hififace.generator import HifiFace, shape_aware_identity
from faceswap_models.hififace.losses import dilated_face_mask, segmentation_loss, shape_loss
from faceswap_models.hififace.networks import SFFOutput
from faceswap_models.losses import identity_loss, weighted_total

#: Generator terms, in the weight config's order (gp belongs to the discriminator).
G_TERMS = ("shape", "id", "adv", "seg", "rec", "cycle", "perc")
#: L_shape's landmark unit: pixels of a face of this side (the paper trains at 256 px).
LANDMARK_SIDE = 256


def hififace_generator_terms(net: nn.Module, disc: nn.Module, identity: nn.Module, regressor: nn.Module,
                             points: ContourProjector, perceptual: nn.Module | str, batch: Batch,
                             weights: HifiFaceLossWeights, *, crop_size: int, mask_dilation: float,
                             keep: dict[str, Tensor] | None = None) -> Terms:
    """HifiFace's generator loss on one micro-batch (module docstring); `keep['out']` gets the detached I_r."""
    src, tgt = batch["source"]["image"], batch["target"]["image"]  # (B, 3, S, S)
    same = batch["same_identity"].bool()
    size = tgt.shape[-1]
    with torch.no_grad():
        v_src, pred_src, pred_tgt = identity(src), regressor(src), regressor(tgt)
    out = net(shape_aware_identity(v_src, pred_src["shape"], pred_tgt), tgt)
    if keep is not None:
        keep["out"] = out.image.detach()
    low_up = F.interpolate(out.low, size=(size, size), mode="bilinear", align_corners=False)
    terms: Terms = {}
    pred_r = regressor(out.image) if (weights.shape or weights.cycle) else None
    if weights.shape:
        with torch.no_grad():
            q_fuse = projected_points(points, pred_tgt, size, crop_size, shape=pred_src["shape"])
        q_r = projected_points(points, pred_r, size, crop_size)
        q_low = projected_points(points, regressor(low_up), size, crop_size)
        terms["shape"] = shape_loss(q_fuse, q_r, q_low) * (LANDMARK_SIDE / size)
    if weights.id:
        terms["id"] = (identity_loss(identity(out.image).float(), v_src.float())
                       + identity_loss(identity(low_up).float(), v_src.float()))
    if weights.adv:
        terms["adv"] = g_logistic(disc(out.image))
    if weights.seg:
        m_tar = dilated_face_mask(batch["target"]["parsing"], round(mask_dilation * size)).to(out.mask.dtype)
        terms["seg"] = segmentation_loss(out.low_mask, out.mask, m_tar)
    if weights.rec:
        tgt_low = F.interpolate(tgt, size=out.low.shape[-2:], mode="area")
        terms["rec"] = masked_l1(out.image, tgt, same) + masked_l1(out.low, tgt_low, same)
    if weights.cycle:
        with torch.no_grad():
            v_tgt = identity(tgt)
        back = net(shape_aware_identity(v_tgt, pred_tgt["shape"], pred_r), out.image)
        terms["cycle"] = cycle_loss(back.image, tgt)
    if weights.perc:
        terms["perc"] = perceptual_same(perceptual, out.image, tgt, same, kind="lpips")
    return weighted_total(terms, weights, G_TERMS)


class HifiFaceTask(GeneratorFirstTask):
    """HifiFace's generator against the StarGAN-v2-style discriminator (stage train_hififace)."""

    def __init__(self, model: HifiFace, disc: nn.Module, points: ContourProjector, perceptual: nn.Module | str,
                 weights: HifiFaceLossWeights, *, crop_size: int, mask_dilation: float, lr: float,
                 betas: tuple[float, float]) -> None:
        self.model = model  # its frozen extractor makes v_sid; its net is modules["net"]
        self.modules = {"net": model.net, "disc": disc}
        self.optimizers = {"net": adam(model.net.parameters(), lr, betas), "disc": adam(disc.parameters(), lr, betas)}
        self.ema = ("net",)
        self.validate_module = "net"
        self.points, self.perceptual, self.weights = points, perceptual, weights
        self.options: dict[str, Any] = {"crop_size": crop_size, "mask_dilation": mask_dilation}

    def to(self, device: torch.device) -> HifiFaceTask:
        super().to(device)
        for m in (self.model, self.points, self.perceptual):  # the model: its frozen extractor (net: moved above)
            if isinstance(m, nn.Module):
                m.to(device)
        return self

    def generator_terms(self, b: Batch, keep: dict[str, Tensor]) -> Terms:
        return hififace_generator_terms(self.modules["net"], unwrap(self.modules["disc"]), self.model.identity,
                                        self.model.regressor, self.points, self.perceptual, b, self.weights,
                                        keep=keep, **self.options)

    def _outputs(self, b: Batch) -> SFFOutput:
        src, tgt = b["source"]["image"], b["target"]["image"]
        return unwrap(self.modules["net"])(self.model.v_sid(self.model.encode_source(src), tgt), tgt)

    def generate(self, b: Batch) -> Tensor:
        return self._outputs(b).image

    def discriminator_terms(self, b: Batch, fake: Tensor) -> Terms:
        return discriminator_terms(self.modules["disc"], b["target"]["image"], fake, self.weights.gp, d_logistic)

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        """Source, target, I_r, M_r (grey, in [-1, 1]), I_low up-sampled."""
        b = {"source": {"image": batch["source"]["image"][:4]}, "target": {"image": batch["target"]["image"][:4]}}
        out = self._outputs(b)
        size = out.image.shape[-2:]
        return [b["source"]["image"], b["target"]["image"], out.image, out.mask.expand(-1, 3, -1, -1) * 2 - 1,
                F.interpolate(out.low, size=size, mode="bilinear", align_corners=False)]
