"""Quick validation of a swap generator during training: the evaluation's referee on a few val pairs.

`SwapValidator(...)` (or `.from_records(val, train, ...)`) fixes, once, a seeded set of (source, target) pairs of *val*
identities and an identity gallery (every val crop + a few crops of each train identity as
distractors). `validator(generator)` swaps those pairs and scores the outputs the way the evaluate
stage does (mediapipe face mesh first, a miss counts as wrong; dlib identity from the output's own
detected points; pose from the mesh's 3DMM fit):

    val/detection_rate  share of outputs in which a face is found
    val/id_top1         share whose nearest gallery identity (centres) is the source's
    val/id_margin       mean cos(out, source) - cos(out, target) over detected outputs
    val/pose_error_deg  mean |pose(out) - pose(target)| over detected outputs
    val/expression_error  mean ||expression(out) - expression(target)|| (3DMM coefficients), when the
                        target expressions are given (from_records does)
    val/expression_geometry_error  mean RMS of the face-mesh expression measures (mouth, eyes, brows;
                        `mesh_expression`), output vs target, each over its std on the val crops
    val/expression_deviation_error  the same as deviations from each person's mean over the val crops
                        (the output as the source's person), over the within-person std (the gate's error)
    val/id_top1_self    id_top1 of the reconstructions G(source, source): how much identity the
                        generator can draw at all, the ceiling of val/id_top1
    val/expression_error_self  expression error of G(source, source) against the source: what the
                        generator's fidelity alone costs the expression reading (the floor of val/expression_error)

Set-up ≈ 25 s (the gallery's detection and embedding), then ≈ 6–8 s for 32 pairs (swaps and reconstructions) on 2 CPU cores;
the loop runs it every `train_swap.val_every` steps and at the end.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch

from faceswap.core.images import read_rgb
from faceswap.data.records import FaceDataset, FaceRecords, PairDataset
from faceswap.evaluation import metrics as E
from faceswap.evaluation.features import EXPRESSION_MEASURES, DlibRecogniser, FaceAttributes, to_tensor, to_uint8
from faceswap.evaluation.gates import check_gates
from faceswap.faces.threedmm import LinearFaceModel
from faceswap.training.steps import regressed_contour
from faceswap_models.losses import landmark_mse


class SwapValidator:
    """Seeded val pairs + gallery, scored with the evaluation's detector and recogniser."""

    def __init__(self, crop_paths: Sequence[str], identities: Sequence[str], poses: np.ndarray,
                 threedmm_model: str, image_size: int, *, distractor_paths: Sequence[str] = (),
                 distractor_identities: Sequence[str] = (), pairs: int = 32, seed: int = 0,
                 expressions: np.ndarray | None = None) -> None:
        """crop_paths / identities / poses (N, 3) / expressions (N, E): the val crops, their
        labels and 3DMM poses and expressions (the threedmm stage's); distractor_*: extra gallery crops
        of other identities."""
        if len(set(identities)) < 2:
            raise ValueError(f"validation needs >= 2 val identities, got {len(set(identities))}")
        self.image_size = image_size
        self.attr = FaceAttributes(LinearFaceModel.load(threedmm_model))
        self.rec = DlibRecogniser()
        crops = [read_rgb(p) for p in crop_paths]  # (S, S, 3) uint8
        extra = [read_rgb(p) for p in distractor_paths]
        labels = [str(i) for i in identities] + [f"distractor:{i}" for i in distractor_identities]
        self.crop_size = crops[0].shape[0]
        readings = [self.attr.read(c, fit=False) for c in crops + extra]
        keep = [i for i, r in enumerate(readings) if r is not None]
        gallery = np.full((len(readings), self.rec.dim), np.nan, np.float32)
        if keep:
            gallery[keep] = self.rec.embed([(crops + extra)[i] for i in keep], [readings[i].landmarks5 for i in keep])
        val_ok = [i for i in keep if i < len(crops)]
        self.gallery_labels = np.array([labels[i] for i in keep])
        self.gallery = gallery[keep]  # (G, D)
        ids = np.array(labels[: len(crops)])[val_ok]
        src, tgt = E.make_pairs(ids, pairs, seed)  # indices into val_ok
        self.src, self.tgt = np.array(val_ok)[src], np.array(val_ok)[tgt]  # indices into the val rows
        self.src_gal, self.tgt_gal = src, tgt  # val rows come first in the gallery, in val_ok order
        self.src_label = ids[src]
        self.pose = np.asarray(poses, np.float64)  # (N, 3) of every val row
        self.geometry = np.stack([r.expression if r is not None else np.full(len(EXPRESSION_MEASURES), np.nan)
                                  for r in readings[: len(crops)]])  # (N, 7) mesh_expression of every val row
        self.geometry_scale = np.nanstd(self.geometry[val_ok], axis=0)  # (7,)
        self.geometry_mean, self.geometry_within = E.identity_deviations(  # (N, 7) per-person means, (7,)
            self.geometry, np.array(labels[: len(crops)]))
        self.expression = None if expressions is None else np.asarray(expressions, np.float64)  # (N, E)
        small = [cv2.resize(c, (image_size,) * 2, interpolation=cv2.INTER_AREA) for c in crops]
        self.source_t = to_tensor([small[i] for i in self.src])  # (P, 3, s, s)
        self.target_t = to_tensor([small[i] for i in self.tgt])
        self.chance_top1 = E.chance_top_k(len(np.unique(self.gallery_labels)), 1)
        self._baselines: dict[str, dict[str, float]] | None = None

    @classmethod
    def from_records(cls, val: FaceRecords, train: FaceRecords | None, threedmm_model: str, image_size: int, *,
                     pairs: int = 32, distractors_per_identity: int = 2, seed: int = 0) -> SwapValidator:
        """Val split records + `distractors_per_identity` crops of every train identity."""
        d_paths: list[str] = []
        d_ids: list[str] = []
        if train is not None:
            for k, name in enumerate(train.identities):
                for i in train.rows_of(k)[:distractors_per_identity]:
                    d_paths.append(train.crop_paths[i])
                    d_ids.append(name)
        return cls(val.crop_paths, [val.identities[i] for i in val.identity_index], val.pose, threedmm_model,
                   image_size, distractor_paths=d_paths, distractor_identities=d_ids, pairs=pairs, seed=seed,
                   expressions=val.expression)

    @torch.no_grad()
    def outputs(self, generator: torch.nn.Module, batch_size: int = 16, self_pairs: bool = False) -> np.ndarray:
        """(P, S, S, 3) uint8 generator outputs, upsampled to the crop size as the evaluation does;
        self_pairs: G(source, source) instead of G(source, target)."""
        device = next(generator.parameters()).device
        was_training = generator.training
        generator.eval()
        out = []
        for i in range(0, len(self.src), batch_size):
            src = self.source_t[i:i + batch_size].to(device)
            o = generator(src, src if self_pairs else self.target_t[i:i + batch_size].to(device))
            out.extend(self._to_crop_size(o))
        generator.train(was_training)
        return np.stack(out)

    def __call__(self, generator: torch.nn.Module) -> dict[str, float]:
        res = self._score(self.outputs(generator), fit=True)
        own = self._score(self.outputs(generator, self_pairs=True), fit=True, self_pairs=True)  # G(s, s)
        return {**res, "val/id_top1_self": own["val/id_top1"],
                "val/expression_geometry_error_self": own["val/expression_geometry_error"],
                "val/expression_deviation_error_self": own["val/expression_deviation_error"],
                **({"val/expression_error_self": own["val/expression_error"]} if "val/expression_error" in own else {})}

    def _to_crop_size(self, images: torch.Tensor) -> list[np.ndarray]:
        """(B, 3, s, s) in [-1, 1] -> B (S, S, 3) uint8 at the crop size, upsampled as the evaluation does."""
        return [cv2.resize(x, (self.crop_size,) * 2, interpolation=cv2.INTER_CUBIC) for x in to_uint8(images)]

    def baselines(self) -> dict[str, dict[str, float]]:
        """Scores of the evaluation's two sanity baselines on the val pairs, computed once: copy_target
        (the target) and paste_source (the source), both through the model's size as its outputs are."""
        if self._baselines is None:
            self._baselines = {name: {k.removeprefix("val/"): v
                                      for k, v in self._score(np.stack(self._to_crop_size(t)), fit=True).items()}
                               for name, t in (("copy_target", self.target_t), ("paste_source", self.source_t))}
        return self._baselines

    def eval_doc(self, vals: Mapping[str, float]) -> dict[str, Any]:
        """`vals` (what a call returned) shaped like the evaluate stage's eval.json — model, baselines,
        gallery — so the registry's gates (faceswap.evaluation.gates) apply to val as they do to test."""
        return {"model": {k.removeprefix("val/"): v for k, v in vals.items() if k.startswith("val/")},
                "baselines": self.baselines(), "gallery": {"chance_top1": self.chance_top1}}

    def _score(self, made: np.ndarray, fit: bool, self_pairs: bool = False) -> dict[str, float]:
        """Scores of outputs for the pairs; self_pairs: they are G(s, s), so pose and expression are
        compared with the source's."""
        readings = [self.attr.read(c, fit=fit) for c in made]
        det = np.array([r is not None for r in readings], bool)
        n = len(made)
        rank = np.full(n, -1)
        margin = np.full(n, np.nan)
        pose_err = np.full(n, np.nan)
        exp_err = np.full(n, np.nan)
        geo_err = np.full(n, np.nan)
        dev_err = np.full(n, np.nan)
        if det.any():
            idx = np.flatnonzero(det)
            emb = self.rec.embed([made[i] for i in idx], [readings[i].landmarks5 for i in idx])
            exclude = np.stack([self.src_gal[idx], self.tgt_gal[idx]], 1)
            rank[idx] = E.retrieve_centres(emb, self.src_label[idx], self.gallery, self.gallery_labels,
                                           exclude=exclude).rank
            margin[idx] = E.id_margin(emb, self.gallery[self.src_gal[idx]], self.gallery[self.tgt_gal[idx]])
            ref = self.src if self_pairs else self.tgt
            out_geo = np.array([readings[i].expression for i in idx])  # (D, 7)
            geo_err[idx] = E.expression_geometry_error(out_geo, self.geometry[ref[idx]], self.geometry_scale)
            dev_err[idx] = E.expression_deviation_error(out_geo, self.geometry_mean[self.src[idx]],
                                                        self.geometry[ref[idx]], self.geometry_mean[ref[idx]],
                                                        self.geometry_within)
            if fit:
                pose = np.array([readings[i].coeffs.pose for i in idx])
                pose_err[idx] = E.pose_error(pose, self.pose[ref[idx]])
                if self.expression is not None:
                    expr = np.array([readings[i].coeffs.expression for i in idx])
                    exp_err[idx] = E.coeff_error(expr, self.expression[ref[idx]])
        res: dict[str, Any] = {"val/detection_rate": float(det.mean()), "val/id_top1": E.top_k_rate(rank, 1),
                               "val/id_margin": E.nan_mean(margin), "val/pose_error_deg": E.nan_mean(pose_err),
                               "val/expression_geometry_error": E.nan_mean(geo_err),
                               "val/expression_deviation_error": E.nan_mean(dev_err)}
        if fit and self.expression is not None:
            res["val/expression_error"] = E.nan_mean(exp_err)
        return {k: float("nan") if v is None else float(v) for k, v in res.items()}

    def close(self) -> None:
        self.attr.close()


class GateSelector:
    """Ranks the val evaluations of one run by the registry's gates applied to val: the key is (gates
    passed, primary metric signed so that larger is better); train_swap exports the snapshot with the
    largest key (`train_swap.export: best_val`). Val identities are disjoint from test's, so the test
    set that the registry judges stays unseen."""

    def __init__(self, validator: SwapValidator, gates: Mapping[str, Any], primary_metric: str,
                 higher_is_better: bool = True) -> None:
        self.validator, self.gates, self.primary = validator, dict(gates), primary_metric
        self.sign = 1.0 if higher_is_better else -1.0

    def __call__(self, vals: Mapping[str, float]) -> tuple[float, float]:
        results = check_gates(self.validator.eval_doc(vals), self.gates, self.primary)
        value = results[0]["value"]  # the primary metric's implicit `finite` gate comes first
        ranked = self.sign * value if results[0]["passed"] else -math.inf
        return float(sum(r["passed"] for r in results)), ranked


class MAEValidator:
    """Masked reconstruction loss of a FaceMAE on fixed val faces and fixed masks (`val/mae_loss`,
    the pretraining objective: normalised-pixel MSE on the masked patches), so its curve shows when
    pretraining plateaus. About 0.1 s for 64 faces at the demo size."""

    def __init__(self, images: torch.Tensor, seed: int = 0) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"MAEValidator needs (N, 3, S, S) images, got {tuple(images.shape)}")
        self.images, self.seed = images, seed  # (N, 3, S, S) in [-1, 1]

    @classmethod
    def from_records(cls, val: FaceRecords, image_size: int, max_images: int = 64, seed: int = 0) -> MAEValidator:
        ds = FaceDataset(val, image_size)
        n = min(max_images, len(ds))
        if n == 0:
            raise ValueError("MAEValidator: the val split has no faces")
        return cls(torch.stack([ds[i]["image"] for i in range(n)]), seed)

    @torch.no_grad()
    def __call__(self, mae: torch.nn.Module) -> dict[str, float]:
        was = mae.training
        mae.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # the same masks every call
            loss, _, _ = mae(self.images.to(next(mae.parameters()).device))
        mae.train(was)
        return {"val/mae_loss": float(loss)}


class ShapeValidator:
    """Dshape's landmark objective on fixed val pairs: `val/ldmk` = MSE (crop-side units²) between
    the regressed contour of Gres(I2) and P12 (source shape, target pose), next to `val/ldmk_unwarped`,
    the same for I2 itself (what doing nothing scores). A Dshape that learned to warp falls below it."""

    def __init__(self, batch: dict, aux: Any) -> None:
        self.batch, self.aux = batch, aux  # a collated PairDataset batch with p12; steps.ShapeAux
        self.unwarped = self._ldmk(batch["target"]["image"])

    @classmethod
    def from_records(cls, val: FaceRecords, image_size: int, threedmm_model: str, aux: Any, pairs: int = 32,
                     seed: int = 0) -> ShapeValidator:
        ds = PairDataset(val, image_size, same_identity_ratio=0.0, seed=seed, threedmm_model=threedmm_model)
        n = min(pairs, len(ds))
        if n == 0:
            raise ValueError("ShapeValidator: the val split has no pairs")
        return cls(torch.utils.data.default_collate([ds[i] for i in range(n)]), aux)

    @torch.no_grad()
    def _ldmk(self, images: torch.Tensor) -> float:
        lm, _ = regressed_contour(self.aux.regressor, self.aux.contour, images, self.aux.crop_size)  # (B, K, 2)
        p12 = self.batch["p12"]
        return float(landmark_mse(lm.to(p12.dtype), p12, images.shape[-1]))

    @torch.no_grad()
    def __call__(self, dshape: torch.nn.Module) -> dict[str, float]:
        was = dshape.training
        dshape.eval()
        tgt = self.batch["target"]
        i2_res, _ = dshape(tgt["image"], self.batch["p12"], tgt["contour"], tgt["parsing"])  # (B, 3, S, S)
        dshape.train(was)
        return {"val/ldmk": self._ldmk(i2_res), "val/ldmk_unwarped": self.unwarped}


class PartValidator:
    """A `SwapValidator` scoring one trained part of a swap model (FaceShifter's AEI-Net or HEAR-Net,
    FaceDancer's generator): each call puts the part (the loop's exported EMA copy) into `model` with
    `attach` and scores the whole model."""

    def __init__(self, validator: Any, model: Any, attach: Callable[[Any, Any], None]) -> None:
        self.validator, self.model, self.attach = validator, model, attach

    def __call__(self, part: Any) -> dict[str, float]:
        self.attach(self.model, part)
        return self.validator(self.model.to(next(part.parameters()).device))

    def __getattr__(self, name: str) -> Any:  # eval_doc, baselines, close ...
        return getattr(self.validator, name)
