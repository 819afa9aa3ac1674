"""FaceDancer's training objective (Rosberg et al., WACV 2023) as a `TrainTask` (stage train_facedancer),
and the IFSR margins (stage ifsr_margins).

Per step: 'g' = L_adv + l_i L_i + l_r L_r + l_p L_p + l_c L_c + l_ifsr L_ifsr on X_c = G(z_id(X_s), X_t),
then 'd' = the discriminator's logistic loss on X_t vs the g phase's detached output + l_gp R1 on X_t.
L_r and L_p apply to the pairs with X_s = X_t; L_c swaps the target's identity back onto X_c. The identity
network is frozen (gradients flow through it to the image only); its intermediate block features give IFSR.

IFSR margins. The paper takes m_i as the mean, over swaps made by a pretrained swapper (FaceShifter), of the
cosine similarity between block i's features of the swap and of its target. This project trains its swappers
itself, so there is none to ask before FaceDancer trains (and the demo's are not good swaps). `ifsr_margins`
uses a swap that needs no training instead: the source's inner face blended into the target through a
feathered ellipse of the aligned crop, colour-matched to the target. It has the target's background, hair,
lighting and face outline and the source's identity in the inner face, as a swap does; its inner face also
keeps the source's expression and pose, which a good swap would not, so its similarities to the target are
lower than a good swap's: the margins are on the lenient side of the paper's.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from faceswap.training.checkpoint import unwrap
from faceswap.training.config import FaceDancerStageConfig
from faceswap.training.steps import Batch, GeneratorFirstTask, Terms, adam, discriminator_terms
from faceswap_models.facedancer.config import FaceDancerLossWeights
from faceswap_models.facedancer.losses import block_cosines, cycle_loss, d_logistic, g_logistic, ifsr_loss, masked_l1
from faceswap_models.facedancer.networks import FaceDancerNet
from faceswap_models.losses import identity_loss, perceptual_loss, structural_loss, weighted_total
from faceswap_models.swap import face_ellipse_mask

#: The margins document stage ifsr_margins writes (and train_facedancer copies into its bundle).
MARGINS_FILE = "ifsr_margins.json"
#: Generator terms, in the weight config's order (gp belongs to the discriminator).
G_TERMS = ("adv", "id", "rec", "perc", "cycle", "ifsr")


def identity_blocks(identity: nn.Module, x: Tensor, layers: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """(embedding (B, D), the feature maps of the identity network's blocks `layers`) of x (B, 3, S, S)."""
    emb, feats = identity(x, return_features=True)
    return emb, [feats[i] for i in layers]


def perceptual_term(name: str, weights: str | None, cache_dir: str | None) -> nn.Module | str:
    """What `perceptual_same` compares with: "ssim" as is, else the frozen feature network `name` (user weights)."""
    from faceswap_models.auxiliary import build_perceptual

    return name if name == "ssim" else build_perceptual(name, weights, cache_dir)


def perceptual_same(perceptual: nn.Module | str, out: Tensor, target: Tensor, same: Tensor, kind: str = "l1") -> Tensor:
    """L_p on the pairs with X_s = X_t: "ssim" = L1 + 1 - SSIM (the offline default, as FlowFace++'s), or a
    feature network (VGG16 with user weights): over its four stages, `kind` "l1" the sum of the mean
    |P_i(X_c) - P_i(X_t)| (FaceDancer), "lpips" LPIPS (HifiFace; faceswap_models.losses.perceptual_loss)."""
    idx = same.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return out.sum() * 0.0  # keeps the graph
    o, t = out[idx], target[idx]
    if isinstance(perceptual, str):
        assert perceptual == "ssim", perceptual
        return structural_loss(o, t)
    return perceptual_loss([f.float() for f in perceptual(o)], [f.float() for f in perceptual(t)], kind=kind)


def facedancer_generator_terms(net: nn.Module, disc: nn.Module, identity: nn.Module, perceptual: nn.Module | str,
                               batch: Batch, weights: FaceDancerLossWeights, margins: Tensor,
                               layers: Sequence[int], keep: dict[str, Tensor] | None = None) -> Terms:
    """FaceDancer's generator loss on one micro-batch; `keep['out']` gets the detached output."""
    src, tgt = batch["source"]["image"], batch["target"]["image"]  # (B, 3, S, S)
    same = batch["same_identity"].bool()
    with torch.no_grad():
        z_src = identity(src)  # (B, id_dim)
        z_tgt, feats_t = identity_blocks(identity, tgt, layers)
    out = net(z_src, tgt)
    if keep is not None:
        keep["out"] = out.detach()
    emb_o, feats_o = identity_blocks(identity, out, layers)
    terms: Terms = {}
    if weights.adv:
        terms["adv"] = g_logistic(disc(out))
    if weights.id:
        terms["id"] = identity_loss(emb_o.float(), z_src.float())
    if weights.rec:
        terms["rec"] = masked_l1(out, tgt, same)
    if weights.perc:
        terms["perc"] = perceptual_same(perceptual, out, tgt, same)
    if weights.cycle:
        terms["cycle"] = cycle_loss(net(z_tgt, out), tgt)
    if weights.ifsr:
        terms["ifsr"] = ifsr_loss(feats_o, feats_t, margins)
    return weighted_total(terms, weights, G_TERMS)


class FaceDancerTask(GeneratorFirstTask):
    """FaceDancer's generator against the StarGAN-v2-style discriminator (stage train_facedancer)."""

    def __init__(self, net: FaceDancerNet, disc: nn.Module, identity: nn.Module, perceptual: nn.Module | str,
                 weights: FaceDancerLossWeights, margins: Sequence[float], layers: Sequence[int], *,
                 lr: float, betas: tuple[float, float]) -> None:
        self.modules = {"net": net, "disc": disc}
        self.optimizers = {"net": adam(net.parameters(), lr, betas), "disc": adam(disc.parameters(), lr, betas)}
        self.ema = ("net",)
        self.validate_module = "net"
        self.identity, self.perceptual, self.weights = identity, perceptual, weights
        self.margins, self.layers = torch.tensor(list(margins), dtype=torch.float32), tuple(layers)
        assert len(self.margins) == len(self.layers), f"{len(self.margins)} margins for {len(self.layers)} blocks"

    def to(self, device: torch.device) -> FaceDancerTask:
        super().to(device)
        self.identity.to(device)
        self.margins = self.margins.to(device)
        if isinstance(self.perceptual, nn.Module):
            self.perceptual.to(device)
        return self

    def generator_terms(self, b: Batch, keep: dict[str, Tensor]) -> Terms:
        return facedancer_generator_terms(self.modules["net"], unwrap(self.modules["disc"]), self.identity,
                                          self.perceptual, b, self.weights, self.margins, self.layers, keep)

    def generate(self, b: Batch) -> Tensor:
        return unwrap(self.modules["net"])(self.identity(b["source"]["image"]), b["target"]["image"])

    def discriminator_terms(self, b: Batch, fake: Tensor) -> Terms:
        return discriminator_terms(self.modules["disc"], b["target"]["image"], fake, self.weights.gp, d_logistic)

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        src, tgt = batch["source"]["image"][:4], batch["target"]["image"][:4]
        return [src, tgt, unwrap(self.modules["net"])(self.identity(src), tgt)]


# --------------------------------------------------------------------------- IFSR margins
def blended_swap(source: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The source's masked face, shifted to the target's per-channel mean and spread inside the mask, blended
    onto the target: (B, 3, S, S) twice, mask (1, 1, S, S) -> (B, 3, S, S)."""
    w = mask / mask.sum()

    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mu = (x * w).sum(dim=(2, 3), keepdim=True)
        return mu, ((x - mu).pow(2) * w).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-3)

    (ms, ss), (mt, st) = stats(source), stats(target)
    matched = ((source - ms) / ss * st + mt).clamp(-1, 1)
    return mask * matched + (1 - mask) * target


@dataclasses.dataclass(frozen=True)
class MarginStats:
    """Per identity-encoder block: the cosine similarities of (blended swap, target) pairs."""

    layers: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    q10: tuple[float, ...]
    q90: tuple[float, ...]
    pairs: int

    @property
    def margins(self) -> tuple[float, ...]:
        """m_i = the mean similarity (the paper regularises towards the mean of the distribution)."""
        return self.mean


@torch.no_grad()
def ifsr_margin_stats(identity: nn.Module, pairs: Any, layers: Sequence[int], ellipse: Sequence[float],
                      feather: float, batch_size: int = 16, progress: bool = False) -> MarginStats:
    """The similarity distributions behind the IFSR margins (module docstring) over `pairs`: an iterable of
    PairDataset items (source / target faces of different identities)."""
    from tqdm import tqdm

    sims: list[Tensor] = []
    mask = None
    items = list(pairs)
    for start in tqdm(range(0, len(items), batch_size), desc="ifsr_margins", disable=not progress):
        chunk = items[start:start + batch_size]
        src = torch.stack([it["source"]["image"] for it in chunk])
        tgt = torch.stack([it["target"]["image"] for it in chunk])
        if mask is None:
            mask = face_ellipse_mask(tgt.shape[-1], tuple(ellipse), edge=feather)
        _, f_swap = identity_blocks(identity, blended_swap(src, tgt, mask), layers)
        _, f_tgt = identity_blocks(identity, tgt, layers)
        sims.append(block_cosines(f_swap, f_tgt))  # (b, n)
    if not sims:
        raise ValueError("ifsr_margins: no pairs to measure (is the train split empty?)")
    s = torch.cat(sims)  # (N, n)
    q = torch.quantile(s, torch.tensor([0.1, 0.9]), dim=0)

    def r(t: Tensor) -> tuple[float, ...]:
        return tuple(round(float(v), 6) for v in t)

    return MarginStats(layers=tuple(layers), mean=r(s.mean(0)), std=r(s.std(0, unbiased=False)), q10=r(q[0]),
                       q90=r(q[1]), pairs=int(s.shape[0]))


def load_margins(folder: str | Path, cfg: FaceDancerStageConfig) -> dict[str, Any]:
    """The margins document of an ifsr_margins output folder, checked against train_facedancer's config
    (ValueError naming what differs: margins of another identity network, size or blocks are meaningless)."""
    path = Path(folder) / MARGINS_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no IFSR margins (run stage ifsr_margins first: `faceswap train facedancer`)")
    doc = json.loads(path.read_text("utf-8"))
    want = {"identity_encoder": cfg.identity_encoder, "image_size": cfg.image_size, "layers": list(cfg.ifsr.layers)}
    differ = {k: (doc.get(k), v) for k, v in want.items() if doc.get(k) != v}
    if differ:
        raise ValueError(f"{path}: measured for another config, re-run ifsr_margins: "
                         + ", ".join(f"{k} {a!r} (params: {b!r})" for k, (a, b) in differ.items()))
    if len(doc.get("margins", [])) != len(cfg.ifsr.layers):
        raise ValueError(f"{path}: {len(doc.get('margins', []))} margins for {len(cfg.ifsr.layers)} blocks")
    return doc
