"""FaceShifter's training objectives (Li et al. 2019): AEI-Net (stage train_faceshifter) and HEAR-Net
(stage train_hearnet), as `TrainTask`s for the loop.

AEI-Net, per step: 'g' = L_adv + lambda_att L_att + lambda_id L_id + lambda_rec L_rec on
Y_hat_st = AEI-Net(z_id(X_s), X_t), then 'd' = the multi-scale discriminator's hinge on X_t vs the g
phase's detached output. HEAR-Net, per step: 'hear' = L'_id + L'_chg + L'_rec on
Y_st = HEAR-Net(Y_hat_st, X_t - AEI-Net(X_t, X_t)) with AEI-Net frozen and synthetic occluders pasted
on the targets. The identity network is frozen (gradients flow through it to the image only).
Batches: PairDataset items with same="image" (X_s = X_t on the reconstruction pairs).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from faceswap.data.occlusion import paste_occluders
from faceswap.training.checkpoint import unwrap
from faceswap.training.config import OcclusionConfig
from faceswap.training.steps import Batch, GeneratorFirstTask, Phase, Terms, TrainTask, adam
from faceswap_models.faceshifter.config import AEILossWeights, HEARLossWeights
from faceswap_models.faceshifter.losses import (
    attribute_loss, change_loss, half_l2_reconstruction, multiscale_d_hinge, multiscale_g_hinge,
)
from faceswap_models.faceshifter.networks import AEINet, HEARNet
from faceswap_models.losses import identity_loss, weighted_total


def weighted(terms: Terms, weights: Any) -> Terms:
    """terms + 'total' = sum of weight * term over the weight config's fields (faceswap_models.losses)."""
    return weighted_total(terms, weights, [f.name for f in dataclasses.fields(weights)])


def aei_generator_terms(aei: nn.Module, disc: nn.Module, identity: nn.Module, batch: Batch,
                        weights: AEILossWeights, keep: dict[str, Tensor] | None = None) -> Terms:
    """AEI-Net's generator loss on one micro-batch; `keep['out']` gets the detached output."""
    src, tgt = batch["source"]["image"], batch["target"]["image"]  # (B, 3, S, S)
    with torch.no_grad():
        z_src = identity(src)  # (B, id_dim)
    out, z_att_tgt = aei(z_src, tgt)
    if keep is not None:
        keep["out"] = out.detach()
    terms: Terms = {}
    if weights.adv:
        terms["adv"] = multiscale_g_hinge(disc(out))
    if weights.att:
        terms["att"] = attribute_loss(unwrap(aei).encoder(out), z_att_tgt)
    if weights.id:
        terms["id"] = identity_loss(identity(out).float(), z_src.float())
    if weights.rec:
        terms["rec"] = half_l2_reconstruction(out, tgt, batch["same_identity"].bool())
    return weighted(terms, weights)


class AEITask(GeneratorFirstTask):
    """AEI-Net against the multi-scale discriminator (stage train_faceshifter)."""

    generator = "aei"

    def __init__(self, aei: AEINet, disc: nn.Module, identity: nn.Module, weights: AEILossWeights, *,
                 lr: float, betas: tuple[float, float]) -> None:
        self.modules = {"aei": aei, "disc": disc}
        self.optimizers = {"aei": adam(aei.parameters(), lr, betas), "disc": adam(disc.parameters(), lr, betas)}
        self.ema = ("aei",)
        self.validate_module = "aei"
        self.identity, self.weights = identity, weights

    def to(self, device: torch.device) -> AEITask:
        super().to(device)
        self.identity.to(device)
        return self

    def generator_terms(self, b: Batch, keep: dict[str, Tensor]) -> Terms:
        return aei_generator_terms(self.modules["aei"], unwrap(self.modules["disc"]), self.identity, b,
                                   self.weights, keep)

    def generate(self, b: Batch) -> Tensor:
        return unwrap(self.modules["aei"])(self.identity(b["source"]["image"]), b["target"]["image"])[0]

    def discriminator_terms(self, b: Batch, fake: Tensor) -> Terms:
        disc = self.modules["disc"]
        loss = multiscale_d_hinge(disc(b["target"]["image"]), disc(fake))
        return {"hinge": loss.detach(), "total": loss}

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        src, tgt = batch["source"]["image"][:4], batch["target"]["image"][:4]
        out = unwrap(self.modules["aei"])(self.identity(src), tgt)[0]
        return [src, tgt, out]


def occlude_targets(batch: Batch, occlusion: OcclusionConfig) -> Batch:
    """The batch with synthetic occluders pasted on the targets (seeded from the torch RNG, which the
    loop seeds per step); a reconstruction pair's source is its occluded target (X_s = X_t)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
    tgt = batch["target"]["image"]
    occluded, _ = paste_occluders(tgt.cpu(), gen, p=occlusion.p, max_area=occlusion.max_area)
    occluded = occluded.to(tgt.device, tgt.dtype)
    same = batch["same_identity"].bool().view(-1, 1, 1, 1)
    source = torch.where(same, occluded, batch["source"]["image"])
    return {**batch, "source": {**batch["source"], "image": source}, "target": {**batch["target"], "image": occluded}}


def hear_terms(hear: nn.Module, aei: nn.Module, identity: nn.Module, batch: Batch, weights: HEARLossWeights) -> Terms:
    """HEAR-Net's loss on one (occluded) micro-batch, AEI-Net and the identity network frozen."""
    src, tgt = batch["source"]["image"], batch["target"]["image"]
    with torch.no_grad():
        z_src, z_tgt = identity(src), identity(tgt)
        y_hat = aei(z_src, tgt)[0]  # Y_hat_st
        delta = tgt - aei(z_tgt, tgt)[0]  # Delta_Y_t, the heuristic error
    y = hear(y_hat, delta)
    terms: Terms = {}
    if weights.id:
        terms["id"] = identity_loss(identity(y).float(), z_src.float())
    if weights.chg:
        terms["chg"] = change_loss(y, y_hat)
    if weights.rec:
        terms["rec"] = half_l2_reconstruction(y, tgt, batch["same_identity"].bool())
    return weighted(terms, weights)


class HEARTask(TrainTask):
    """HEAR-Net on a frozen AEI-Net (stage train_hearnet). One phase: HEAR-Net has no adversarial term."""

    def __init__(self, hear: HEARNet, aei: AEINet, identity: nn.Module, weights: HEARLossWeights,
                 occlusion: OcclusionConfig, *, lr: float, betas: tuple[float, float]) -> None:
        self.modules = {"hear": hear}
        self.optimizers = {"hear": adam(hear.parameters(), lr, betas)}
        self.ema = ("hear",)
        self.validate_module = "hear"
        self.aei = aei.requires_grad_(False).eval()
        self.identity, self.weights, self.occlusion = identity, weights, occlusion

    def to(self, device: torch.device) -> HEARTask:
        super().to(device)
        self.aei.to(device)
        self.identity.to(device)
        return self

    def phases(self, step: int) -> list[Phase]:
        return [Phase("hear", "hear", lambda b: hear_terms(self.modules["hear"], self.aei, self.identity,
                                                           occlude_targets(b, self.occlusion), self.weights))]

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        b = occlude_targets({k: ({kk: vv[:4] for kk, vv in v.items()} if isinstance(v, dict) else v[:4])
                             for k, v in batch.items()}, self.occlusion)
        src, tgt = b["source"]["image"], b["target"]["image"]
        y_hat = self.aei(self.identity(src), tgt)[0]
        delta = tgt - self.aei(self.identity(tgt), tgt)[0]
        return [src, tgt, y_hat, unwrap(self.modules["hear"])(y_hat, delta)]
