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

Set-up ≈ 25 s (the gallery's detection and embedding), then ≈ 3–4 s for 32 pairs on 2 CPU cores;
the loop runs it every `train_swap.val_every` steps and at the end.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch

from faceswap_common.images import read_rgb
from faceswap_common.threedmm import LinearFaceModel
from faceswap_models import evaluation as E
from faceswap_models.eval_features import DlibRecogniser, FaceAttributes, to_tensor, to_uint8
from faceswap_models.training.data import FaceRecords


class SwapValidator:
    """Seeded val pairs + gallery, scored with the evaluation's detector and recogniser."""

    def __init__(self, crop_paths: Sequence[str], identities: Sequence[str], target_pose: np.ndarray,
                 threedmm_model: str, image_size: int, *, distractor_paths: Sequence[str] = (),
                 distractor_identities: Sequence[str] = (), pairs: int = 32, seed: int = 0) -> None:
        """crop_paths / identities / target_pose (N, 3): the val crops, their labels and 3DMM poses
        (the threedmm stage's); distractor_*: extra gallery crops of other identities."""
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
        self.target_pose = np.asarray(target_pose, np.float64)[self.tgt]  # (P, 3)
        small = [cv2.resize(c, (image_size,) * 2, interpolation=cv2.INTER_AREA) for c in crops]
        self.source_t = to_tensor([small[i] for i in self.src])  # (P, 3, s, s)
        self.target_t = to_tensor([small[i] for i in self.tgt])
        self.chance_top1 = E.chance_top_k(len(np.unique(self.gallery_labels)), 1)

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
                   image_size, distractor_paths=d_paths, distractor_identities=d_ids, pairs=pairs, seed=seed)

    @torch.no_grad()
    def outputs(self, generator: torch.nn.Module, batch_size: int = 16) -> np.ndarray:
        """(P, S, S, 3) uint8 generator outputs, upsampled to the crop size as the evaluation does."""
        device = next(generator.parameters()).device
        was_training = generator.training
        generator.eval()
        out = []
        for i in range(0, len(self.src), batch_size):
            o = generator(self.source_t[i:i + batch_size].to(device), self.target_t[i:i + batch_size].to(device))
            out.extend(cv2.resize(x, (self.crop_size,) * 2, interpolation=cv2.INTER_CUBIC) for x in to_uint8(o))
        generator.train(was_training)
        return np.stack(out)

    def __call__(self, generator: torch.nn.Module) -> dict[str, float]:
        made = self.outputs(generator)
        readings = [self.attr.read(c, fit=True) for c in made]
        det = np.array([r is not None for r in readings], bool)
        n = len(made)
        rank = np.full(n, -1)
        margin = np.full(n, np.nan)
        pose_err = np.full(n, np.nan)
        if det.any():
            idx = np.flatnonzero(det)
            emb = self.rec.embed([made[i] for i in idx], [readings[i].landmarks5 for i in idx])
            exclude = np.stack([self.src_gal[idx], self.tgt_gal[idx]], 1)
            rank[idx] = E.retrieve_centres(emb, self.src_label[idx], self.gallery, self.gallery_labels,
                                           exclude=exclude).rank
            margin[idx] = E.id_margin(emb, self.gallery[self.src_gal[idx]], self.gallery[self.tgt_gal[idx]])
            pose = np.array([readings[i].coeffs.pose for i in idx])
            pose_err[idx] = E.pose_error(pose, self.target_pose[idx])
        res: dict[str, Any] = {"val/detection_rate": float(det.mean()), "val/id_top1": E.top_k_rate(rank, 1),
                               "val/id_margin": E.nan_mean(margin), "val/pose_error_deg": E.nan_mean(pose_err)}
        return {k: float("nan") if v is None else float(v) for k, v in res.items()}

    def close(self) -> None:
        self.attr.close()
