"""Per-stage training objectives as pure functions, bundled into `TrainTask`s for the loop.

A training step is a list of `Phase`s run in order on the same micro-batches; each phase owns one
optimizer and returns named loss terms plus 'total' (weights from params via the loss dataclasses):
  * MAE pretraining: one phase, the masked-patch loss (`mae_terms`).
  * Dshape:  'd' (Dres hinge [+ R1]) then 'g' (Gres: adv + rec + ldmk, `shape_generator_terms`).
  * Fswa:    'g' (adv + rec + id + exp + ldmk + perc [+ flow]) then 'd' (Dswa hinge [+ R1]) on the
             g phase's detached output (one generator pass per step).
Dshape's d phase recomputes the fake under no_grad; a generator phase uses the
*unwrapped* discriminator (no DDP sync, its gradients are not requested: the loop back-propagates
into the phase's own parameters only). Batches are the dicts of faceswap.data.records:
PairDataset items {'source': face, 'target': face, 'same_identity', 'p12'} or FaceDataset faces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from faceswap.training.checkpoint import unwrap
from faceswap.training.contour import ContourProjector, projected_points
from faceswap_models.config import ShapeLossWeights, SwapLossWeights
from faceswap_models.layers import patchify, unpatchify
from faceswap_models.losses import (
    discriminator_loss, expression_loss, flow_loss, g_hinge_loss, identity_loss, landmark_loss, landmark_mse,
    perceptual_loss, r1_penalty, reconstruction_loss, shape_generator_loss, structural_loss, swap_generator_loss,
)
from faceswap_models.mae import FaceMAE
from faceswap_models.shape import ShapeDiscriminator
from faceswap_models.swap import SwapGenerator

Batch = Mapping[str, Any]
Terms = dict[str, Tensor]


@dataclass
class Phase:
    """One optimizer update inside a training step: `loss(micro_batch) -> terms incl. 'total'`."""

    name: str
    optimizer: str
    loss: Callable[[Batch], Terms]


class TrainTask:
    """What the loop trains. Subclasses fill `modules` (trainable, checkpointed; the loop may wrap
    them in DDP in place), `optimizers`, `ema` (names of modules that keep an EMA copy) and
    implement `phases(step)` and `samples(batch)`."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    ema: tuple[str, ...] = ()
    validate_module: str | None = None  # the module a validator scores (the loop's `validate`)

    def phases(self, step: int) -> list[Phase]:
        raise NotImplementedError

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        """Columns of a sample grid, each (n, 3, H, W) in [-1, 1]."""
        raise NotImplementedError

    def to(self, device: torch.device) -> TrainTask:
        for m in self.modules.values():
            m.to(device)
        return self

    def train(self) -> None:
        for m in self.modules.values():
            m.train()


class GeneratorFirstTask(TrainTask):
    """A generator (module `generator`) and its discriminator (module 'disc'), updated g then d each step: the
    d phase scores the g phase's detached output of the same micro-batch (no second forward). Subclasses
    implement `generator_terms(batch, keep)` (storing the detached fake in keep['out']),
    `discriminator_terms(batch, fake)` and `generate(batch)` (the fake when the g phase did not run on it)."""

    generator: str = "net"

    def generator_terms(self, batch: Batch, keep: dict[str, Tensor]) -> Terms:
        raise NotImplementedError

    def discriminator_terms(self, batch: Batch, fake: Tensor) -> Terms:
        raise NotImplementedError

    def generate(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def _g(self, b: Batch) -> Terms:
        keep: dict[str, Tensor] = {}
        terms = self.generator_terms(b, keep)
        self._fakes[id(b)] = keep["out"]
        return terms

    def _d(self, b: Batch) -> Terms:
        fake = self._fakes.pop(id(b), None)
        if fake is None:
            with torch.no_grad():
                fake = self.generate(b)
        return self.discriminator_terms(b, fake)

    def phases(self, step: int) -> list[Phase]:
        self._fakes: dict[int, Tensor] = {}
        return [Phase("g", self.generator, self._g), Phase("d", "disc", self._d)]


def adam(params: Any, lr: float, betas: tuple[float, float], weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam (AdamW when weight_decay > 0) over the parameters that require grad."""
    ps = [p for p in params if p.requires_grad]
    if weight_decay > 0:
        return torch.optim.AdamW(ps, lr=lr, betas=betas, weight_decay=weight_decay)
    return torch.optim.Adam(ps, lr=lr, betas=betas)


# --------------------------------------------------------------------------- discriminator (shared)
def discriminator_terms(disc: nn.Module, real: Tensor, fake: Tensor, r1_weight: float,
                        adversarial: Callable[[Tensor, Tensor], Tensor] | None = None) -> Terms:
    """`adversarial` loss (default hinge) of `disc` on real vs (detached) fake images, plus r1_weight * R1 on the
    reals when r1_weight > 0: {'adv', 'r1'?, 'total'}."""
    real = real.detach().requires_grad_(r1_weight > 0)
    real_logits = disc(real)
    fake_logits = disc(fake.detach())
    r1 = r1_penalty(real_logits, real) if r1_weight > 0 else None
    return discriminator_loss(real_logits, fake_logits, r1, r1_weight, adversarial)


# --------------------------------------------------------------------------- MAE
def mae_terms(mae: nn.Module, images: Tensor) -> Terms:
    """MAE pretraining loss on (B, 3, S, S) images (random masks from the torch RNG)."""
    loss, _, _ = mae(images)
    return {"mae": loss, "total": loss}


class MAETask(TrainTask):
    """Face MAE pretraining (stage pretrain_mae). Batches: FaceDataset items."""

    def __init__(self, mae: FaceMAE, *, lr: float, betas: tuple[float, float], weight_decay: float) -> None:
        self.modules = {"mae": mae}
        self.optimizers = {"mae": adam(mae.parameters(), lr, betas, weight_decay)}
        self.ema = ("mae",)
        self.validate_module = "mae"

    def phases(self, step: int) -> list[Phase]:
        return [Phase("mae", "mae", lambda b: mae_terms(self.modules["mae"], b["image"]))]

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        mae = unwrap(self.modules["mae"])
        imgs = batch["image"][:4]
        _, pred, mask = mae(imgs)  # (n, N, p*p*3), (n, N)
        patches = patchify(imgs, mae.cfg.patch_size)  # (n, N, p*p*3)
        if mae.cfg.norm_pix_loss:  # predictions are per-patch normalised pixels: undo that
            mu, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mu
        m = mask[..., None]  # (n, N, 1), 1 = masked
        recon = unpatchify(patches * (1 - m) + pred * m, mae.cfg.patch_size)  # (n, 3, S, S)
        masked = unpatchify(patches * (1 - m), mae.cfg.patch_size)
        return [imgs, masked, recon.clamp(-1, 1)]


# --------------------------------------------------------------------------- Dshape
def regressed_contour(regressor: nn.Module, contour: ContourProjector, images: Tensor,
                      crop_size: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Contour landmarks (B, K, 2) of `images` (B, 3, S, S) from the regressor's 3DMM coefficients.

    The regressor returns tx, ty in input pixels but the camera scale in the units of the crops it
    was trained on (`crop_size`), so the scale is rescaled by S / crop_size here.
    """
    pred = regressor(images)
    return projected_points(contour, pred, images.shape[-1], crop_size), pred


@dataclass
class ShapeAux:
    """Frozen helpers for Dshape's landmark loss."""

    regressor: nn.Module  # FaceAttributeRegressor, frozen
    contour: ContourProjector
    crop_size: int  # size of the crops the regressor was trained on (align.size)


def shape_generator_terms(dshape: nn.Module, dres: nn.Module, aux: ShapeAux, batch: Batch,
                          weights: ShapeLossWeights) -> Terms:
    """Gres objective (eq. 19): warp I2 (the pair's target) towards P12 (source shape, target pose)."""
    tgt = batch["target"]
    i2, p12 = tgt["image"], batch["p12"]
    i2_res, _ = dshape(i2, p12, tgt["contour"], tgt["parsing"])  # (B, 3, S, S)
    lm, _ = regressed_contour(aux.regressor, aux.contour, i2_res, aux.crop_size)  # (B, K, 2)
    terms = {"adv": g_hinge_loss(dres(i2_res)), "rec": reconstruction_loss(i2_res, i2),
             "ldmk": landmark_mse(lm.to(p12.dtype), p12, i2.shape[-1])}
    return shape_generator_loss(terms, weights)


class ShapeTask(TrainTask):
    """Dshape = Gres + warp, trained against Dres (stage train_shape). Batches: PairDataset with p12."""

    def __init__(self, dshape: ShapeDiscriminator, dres: nn.Module, aux: ShapeAux, weights: ShapeLossWeights,
                 *, lr: float, betas: tuple[float, float]) -> None:
        self.modules = {"dshape": dshape, "dres": dres}
        self.optimizers = {"dshape": adam(dshape.parameters(), lr, betas), "dres": adam(dres.parameters(), lr, betas)}
        self.ema = ("dshape",)
        self.validate_module = "dshape"
        self.aux, self.weights = aux, weights

    def to(self, device: torch.device) -> ShapeTask:
        super().to(device)
        self.aux.regressor.to(device)
        self.aux.contour.to(device)
        return self

    def _d(self, b: Batch) -> Terms:
        tgt = b["target"]
        with torch.no_grad():
            fake, _ = unwrap(self.modules["dshape"])(tgt["image"], b["p12"], tgt["contour"], tgt["parsing"])
        return discriminator_terms(self.modules["dres"], tgt["image"], fake, self.weights.r1)

    def _g(self, b: Batch) -> Terms:
        return shape_generator_terms(self.modules["dshape"], unwrap(self.modules["dres"]), self.aux, b, self.weights)

    def phases(self, step: int) -> list[Phase]:
        return [Phase("d", "dres", self._d), Phase("g", "dshape", self._g)]

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        src, tgt = batch["source"], batch["target"]
        i2_res, v = unwrap(self.modules["dshape"])(tgt["image"][:4], batch["p12"][:4], tgt["contour"][:4],
                                                    tgt["parsing"][:4])
        return [src["image"][:4], tgt["image"][:4], i2_res, flow_to_rgb(v)]


# --------------------------------------------------------------------------- Fswa
@dataclass
class SwapAux:
    """Frozen networks inside Fswa's losses.

    identity: encoder (B, 3, S, S) -> (B, D) [, features]; perceptual: what the perceptual term
    compares with the target: "ssim" (L1 + 1 - SSIM on pixels, the offline default, no network),
    "shared" (the identity encoder's first `perceptual_layers` feature maps) or a feature network
    (e.g. VGG16 with user weights: its last two taps, relu3_3 and relu4_3; the paper uses "the final
    two convolutional layers"); regressor: FaceAttributeRegressor; dshape: frozen
    ShapeDiscriminator; contour: 3DMM contour.
    """

    identity: nn.Module
    perceptual: nn.Module | str | None
    regressor: nn.Module
    dshape: nn.Module
    contour: ContourProjector
    crop_size: int
    perceptual_layers: int = 4
    source_cache_size: int = 0  # faces whose source embedding is kept (0: embed every source every step)
    _source_cache: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.identity, self.perceptual, self.regressor, self.dshape, self.contour)
                if isinstance(m, nn.Module)]

    @property
    def pixel_perceptual(self) -> bool:
        """True when the perceptual term is the pixel SSIM + L1 term (no feature network)."""
        return isinstance(self.perceptual, str) and self.perceptual == "ssim"

    def identity_and_features(self, x: Tensor, features: bool = True) -> tuple[Tensor, list[Tensor]]:
        """Identity embedding (B, D) and, when `features` and the perceptual term uses features,
        the perceptual feature maps of x (else [])."""
        if not features or self.pixel_perceptual:
            return self.identity(x), []
        if self.perceptual is None or self.perceptual == "shared":
            emb, feats = self.identity(x, return_features=True)
            return emb, list(feats[: self.perceptual_layers])
        return self.identity(x), self.features(x)

    @torch.no_grad()
    def source_identity(self, images: Tensor, index: Tensor | None = None) -> Tensor:
        """Identity embeddings (B, D) of the source faces `images` (B, 3, S, S). With a cache and the
        faces' dataset rows `index` (B,), each face is embedded once (its first-seen augmented view;
        FaceNet prewhitens, so colour jitter barely moves it) and reused: a fixed target per face."""
        if self.source_cache_size <= 0 or index is None:
            return self.identity(images)
        keys = [int(i) for i in index]
        miss = [j for j, k in enumerate(keys) if k not in self._source_cache]
        if miss:
            emb = self.identity(images[miss])  # (M, D)
            for j, e in zip(miss, emb):
                if len(self._source_cache) < self.source_cache_size:
                    self._source_cache.setdefault(keys[j], e.detach().float().cpu())
        fresh = dict(zip(miss, emb.float())) if miss else {}
        return torch.stack([fresh[j] if j in fresh else self._source_cache[k].to(images.device)
                            for j, k in enumerate(keys)])  # (B, D) float32

    def features(self, x: Tensor) -> list[Tensor]:
        """Perceptual feature maps of x alone (no identity pass unless they are the identity encoder's)."""
        if self.perceptual is None or self.perceptual == "shared":
            return self.identity_and_features(x)[1]
        return list(self.perceptual(x))[-2:]  # a feature network (VGG16): its last two taps, as the paper


def swap_flow(aux: SwapAux, pred: Mapping[str, Tensor], source: Batch) -> Tensor:
    """V_so (B, 2, S, S): Dshape flow from the source contour P2 to P12 = contour of I_o's regressed
    shape with the source's expression, pose and camera (eq. 16); differentiable in pred['shape']."""
    p12 = aux.contour(pred["shape"], source["expression"], source["pose"], source["camera"])  # (B, K, 2)
    return aux.dshape.flow(p12.to(source["contour"].dtype), source["contour"], source["parsing"])


def term_stats(terms: Mapping[str, Tensor], weights: object, out: Tensor) -> Terms:
    """Balance diagnostics of a weighted objective: per term k, `w_k` = weight·term (its share of the
    total) and `gn_k` = ‖∂(weight·term)/∂out‖ at the generator output (how hard it pulls the pixels).
    One extra partial backward per term, stopping at `out` (the generator's weights are not touched)."""
    stats: Terms = {}
    for k, v in terms.items():
        w = float(getattr(weights, k))
        stats[f"w_{k}"] = (w * v).detach()
        g = None
        if w != 0.0 and v.requires_grad:
            (g,) = torch.autograd.grad(w * v, out, retain_graph=True, allow_unused=True)
        stats[f"gn_{k}"] = g.detach().float().norm() if g is not None else torch.zeros((), device=out.device)
    return stats


def swap_generator_terms(gen: nn.Module, disc: nn.Module, aux: SwapAux, batch: Batch, weights: SwapLossWeights,
                         *, use_flow: bool, use_id: bool = True, stats: bool = False,
                         keep: dict[str, Tensor] | None = None) -> Terms:
    """Fswa objective (eq. 4); the flow term only when `use_flow` (paper: second half of training),
    the identity term only when `use_id` (off during a reconstruction warm-up). `keep` receives the
    detached output under 'out' (the d phase reuses it instead of running the generator again).
    With `stats`, also each weighted term and its gradient norm at the output (`term_stats`)."""
    src, tgt = batch["source"], batch["target"]
    out = gen(src["image"], tgt["image"])  # (B, 3, S, S)
    if keep is not None:
        keep["out"] = out.detach()
    size = out.shape[-1]
    w = weights
    feat_perc = w.perc != 0 and not aux.pixel_perceptual
    terms: Terms = {}  # a term whose weight is 0 is not computed (no network pass for it)
    if w.adv != 0:
        terms["adv"] = g_hinge_loss(disc(out))
    if w.rec != 0:
        terms["rec"] = reconstruction_loss(out, tgt["image"], batch["same_identity"].bool())
    feats_o: list[Tensor] = []
    if w.id != 0 and use_id:
        emb_o, feats_o = aux.identity_and_features(out, features=feat_perc)
        emb_s = aux.source_identity(src["image"], src.get("index"))
        terms["id"] = identity_loss(emb_o.float(), emb_s.float())
    elif feat_perc:
        feats_o = aux.features(out)
    if feat_perc:
        with torch.no_grad():
            feats_t = aux.features(tgt["image"])
        terms["perc"] = perceptual_loss([f.float() for f in feats_o], [f.float() for f in feats_t])
    elif w.perc != 0:
        # compared with what Fswa keeps of the target: all of it (paper); with target_face_lowpass,
        # on cross-identity pairs only the inner face's low frequencies, so the term does not pull
        # identity detail back to the target's (reconstruction pairs: all of it, the target is the answer)
        keep = unwrap(gen).target_input
        whole = batch["same_identity"].bool()[:, None, None, None]  # (B, 1, 1, 1)
        terms["perc"] = structural_loss(torch.where(whole, out, keep(out)), torch.where(whole, tgt["image"], keep(tgt["image"])))
    pred = aux.regressor(out) if (w.exp != 0 or w.ldmk != 0 or use_flow) else None
    if w.exp != 0:
        with torch.no_grad():
            exp_t = aux.regressor.expression_embedding(tgt["image"])  # (B, n_exp)
        terms["exp"] = expression_loss(pred["expression"].float(), exp_t.float())
    if w.ldmk != 0:
        terms["ldmk"] = landmark_loss(pred["landmarks"].float(), tgt["landmarks68"].float(), size)
    if use_flow:
        terms["flow"] = flow_loss(swap_flow(aux, pred, src).float())
    res = swap_generator_loss(terms, weights)
    if stats:
        res.update(term_stats(terms, weights, out))
    return res


def same_image_pairs(batch: Batch) -> Batch:
    """The batch with each reconstruction pair's source replaced by its target (I_s = I_t: the same
    tensors, augmentation included, for every key the two share); cross-identity pairs unchanged."""
    same = batch["same_identity"].bool()  # (B,)
    src, tgt = batch["source"], batch["target"]
    source = {k: torch.where(same.view(-1, *([1] * (v.dim() - 1))), tgt[k], v) if k in tgt else v
              for k, v in src.items()}
    return {**batch, "source": source}


class SwapTask(TrainTask):
    """Fswa against Dswa (stage train_swap). Batches: PairDataset items (no p12 needed)."""

    def __init__(self, gen: SwapGenerator, disc: nn.Module, aux: SwapAux, weights: SwapLossWeights, *,
                 lr: float, betas: tuple[float, float], flow_start_step: int, stats_every: int = 0,
                 id_start_step: int = 0, skip_start_step: int = 0,
                 pair_schedule: tuple[str, str] | None = None) -> None:
        """stats_every: compute the term balance (`term_stats`) on the steps the loop logs (its
        log_every; 0 = never). id_start_step: the identity term is on from this step (before it,
        a reconstruction warm-up that needs no identity-network pass). skip_start_step: the
        generator's decoder.skip branches open at this step (`skip_open`). pair_schedule: (kind
        before skip_start_step, from it on) of the reconstruction pairs, for batches whose
        reconstruction pairs are same-identity ones (PairDataset same="identity"): in a same_image
        phase their source is replaced by the target itself (I_s = I_t, as same="image" would give)."""
        self.modules = {"gen": gen, "disc": disc}
        self.optimizers = {"gen": adam(gen.parameters(), lr, betas), "disc": adam(disc.parameters(), lr, betas)}
        self.ema = ("gen",)
        self.validate_module = "gen"
        self.aux, self.weights, self.flow_start_step = aux, weights, flow_start_step
        self.stats_every = int(stats_every)
        self.id_start_step = int(id_start_step)
        self.skip_start_step = int(skip_start_step)
        self.pair_schedule = pair_schedule
        self._fakes: dict[int, Tensor] = {}  # id(micro-batch) -> detached g-phase output, for the d phase

    def to(self, device: torch.device) -> SwapTask:
        super().to(device)
        for m in self.aux.modules():
            m.to(device)
        return self

    def _g(self, b: Batch, use_flow: bool, use_id: bool, stats: bool, same_image: bool) -> Terms:
        keep: dict[str, Tensor] = {}
        pairs = same_image_pairs(b) if same_image else b
        terms = swap_generator_terms(self.modules["gen"], unwrap(self.modules["disc"]), self.aux, pairs, self.weights,
                                     use_flow=use_flow, use_id=use_id, stats=stats, keep=keep)
        self._fakes[id(b)] = keep["out"]
        return terms

    def _d(self, b: Batch) -> Terms:
        fake = self._fakes.pop(id(b), None)  # the g phase's output for this micro-batch (detached)
        if fake is None:
            with torch.no_grad():
                fake = unwrap(self.modules["gen"])(b["source"]["image"], b["target"]["image"])
        return discriminator_terms(self.modules["disc"], b["target"]["image"], fake, self.weights.r1)

    def phases(self, step: int) -> list[Phase]:
        """g then d: Dswa learns from the fakes the g phase just made (one generator pass per step)."""
        use_flow = self.weights.flow > 0 and step >= self.flow_start_step
        use_id = step >= self.id_start_step
        stats = self.stats_every > 0 and (step + 1) % self.stats_every == 0  # the loop logs after step + 1
        skip_open = step >= self.skip_start_step
        gen = unwrap(self.modules["gen"])
        if hasattr(gen, "skip_open"):
            gen.skip_open.fill_(skip_open)
        same_image = (self.pair_schedule is not None
                      and self.pair_schedule[1 if skip_open else 0] == "same_image")
        self._fakes.clear()
        return [Phase("g", "gen", lambda b: self._g(b, use_flow, use_id, stats, same_image)), Phase("d", "disc", self._d)]

    @torch.no_grad()
    def samples(self, batch: Batch) -> list[Tensor]:
        src = {k: v[:4] for k, v in batch["source"].items()}
        tgt_img = batch["target"]["image"][:4]
        out = unwrap(self.modules["gen"])(src["image"], tgt_img)
        v = swap_flow(self.aux, self.aux.regressor(out), src)
        return [src["image"], tgt_img, out, flow_to_rgb(v)]


# --------------------------------------------------------------------------- visualisation
def flow_to_rgb(flow: Tensor, max_px: float | None = None) -> Tensor:
    """(B, 2, H, W) pixel flow -> (B, 3, H, W) in [-1, 1]: hue = direction, brightness = magnitude."""
    dx, dy = flow.float().unbind(1)
    mag = torch.sqrt(dx**2 + dy**2)  # (B, H, W)
    scale = max_px if max_px is not None else float(mag.max().clamp_min(1e-6))
    ang = torch.atan2(dy, dx)  # (B, H, W) in [-pi, pi]
    v = (mag / scale).clamp(0, 1)
    rgb = torch.stack([(ang + k * 2 * math.pi / 3).cos() * 0.5 + 0.5 for k in range(3)], 1)  # (B, 3, H, W)
    return (rgb * v[:, None]) * 2 - 1


def sample_grid(columns: list[Tensor]) -> Tensor:
    """Columns of (n, 3, H, W) images in [-1, 1] -> one (H*n, W*len(columns), 3) uint8 image (rows = examples)."""
    cols = [c.detach().float().cpu().clamp(-1, 1) for c in columns]
    n = min(c.shape[0] for c in cols)
    rows = [torch.cat([c[i] for c in cols], dim=2) for i in range(n)]  # each (3, H, W*C)
    img = torch.cat(rows, dim=1)  # (3, H*n, W*C)
    return ((img + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
