"""Training data: the prepared tables joined into records, face and pair datasets, a sharded loader.

Everything an item holds is a pure function of (seed, epoch, index): pair choice and augmentation
draw from ``np.random.default_rng([seed, epoch, index, role])``, never from a worker's global RNG.
So the loader is identical for any ``num_workers``, and resuming mid-epoch is exact: skip the
batches already consumed (``make_loader(..., skip_batches=k)``, see `resume_position`).

Coordinates are pixels at the item size S with pixel centres on integers (the convention of the
align stage): a stored crop coordinate x becomes ``(x + 0.5) * S / crop_size - 0.5``. The camera
(s, tx, ty) is rescaled the same way, so ``LinearFaceModel.contour2d`` on an item's coefficients
gives points at size S.

Typical use (one worker pool for the whole run, resumed after `batches_done` batches)::

    records = FaceRecords.load(aligned, aligned_dir, segments, parsing_dir, threedmm, splits)
    pairs = PairDataset(records, size=128, same_identity_ratio=0.25, seed=0,
                        augment=params.train_swap.augment, threedmm_model="data/threedmm_model.npz")
    loader = make_loader(pairs, 8, num_workers=2, seed=0, rank=rank, world_size=ws,
                         epochs=None, skip_batches=batches_done)
    for batch in loader:  # batch["source"]["image"]: (B, 3, S, S), batch["p12"]: (B, K, 2)
        ...
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from faceswap.core import schemas
from faceswap.data.config import AugmentConfig
from faceswap.faces.bisenet import LABELS
from faceswap.faces.threedmm import Coefficients, LinearFaceModel

log = logging.getLogger(__name__)

__all__ = [
    "AugmentConfig", "FaceRecords", "FaceDataset", "PairDataset", "EpochBatchSampler", "make_loader",
    "batches_per_epoch", "resume_position", "decode_only_rate", "loader_rate", "IBUG68_MIRROR",
]

# iBUG 68-point index of each point's mirror image (jaw, brows, nose, eyes, mouth).
IBUG68_MIRROR: np.ndarray = np.array(
    list(range(16, -1, -1))  # jaw 0..16
    + list(range(26, 21, -1)) + list(range(21, 16, -1))  # brows 17..26
    + [27, 28, 29, 30] + [35, 34, 33, 32, 31]  # nose bridge, nostrils
    + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]  # eyes 36..47
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips 48..59
    + [64, 63, 62, 61, 60, 67, 66, 65],  # inner lips 60..67
    dtype=np.int64,
)

# RGB -> YIQ (NTSC); a hue shift is a rotation of the (I, Q) chroma plane.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)
_GREY = np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------- augmentation


def _draw_augment(cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """A fixed number of draws -> (brightness, contrast, saturation, hue) factors and the flip."""
    u = rng.random(5)
    b = 1.0 + cfg.brightness * (2 * u[0] - 1)
    c = 1.0 + cfg.contrast * (2 * u[1] - 1)
    s = 1.0 + cfg.saturation * (2 * u[2] - 1)
    h = cfg.hue * (2 * u[3] - 1)
    return np.array([b, c, s, h]), bool(cfg.hflip and u[4] < 0.5)


def color_jitter(img: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """img (H, W, 3) float32 in [0, 1] -> jittered copy: brightness, contrast, saturation, hue."""
    b, c, s, h = (float(v) for v in factors)
    out = np.clip(img * b, 0.0, 1.0)
    if c != 1.0:
        mean = float((out @ _GREY).mean())
        out = np.clip((out - mean) * c + mean, 0.0, 1.0)
    if s != 1.0:
        grey = (out @ _GREY)[..., None]  # (H, W, 1)
        out = np.clip((out - grey) * s + grey, 0.0, 1.0)
    if h != 0.0:
        a = 2.0 * math.pi * h
        rot = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
        m = (_YIQ2RGB @ rot @ _RGB2YIQ).astype(np.float32)  # (3, 3)
        out = np.clip(out @ m.T, 0.0, 1.0)
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- records


def _list_column(table: pa.Table, name: str, where: str) -> np.ndarray:
    """A fixed-width list<float32> column -> (N, width) float32; ValueError if widths differ."""
    col = table.column(name).combine_chunks()
    if col.null_count:
        raise ValueError(f"{where}: column {name!r} has {col.null_count} null(s)")
    lengths = col.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise ValueError(f"{where}: column {name!r} has rows of different lengths {sorted(set(lengths.tolist()))}")
    width = int(lengths[0]) if len(lengths) else 0
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), width)


@dataclass(eq=False)
class FaceRecords:
    """One row per usable face: aligned crop + parsing + 3DMM (+ split), joined by sha256.

    Rows are sorted by (identity, sha256), so the order does not depend on table row order.
    Coordinates/camera are in stored crop pixels (`crop_size` per row). `dropped` counts the
    aligned rows left out and why (no_segment, no_threedmm, no_split, split_<name>, missing_file,
    duplicate); rows of the other tables with no aligned row are counted as orphan_<table>.
    """

    sha256: list[str]
    identities: list[str]  # sorted unique identity labels
    identity_index: np.ndarray  # (N,) int64 into `identities`
    crop_paths: list[str]  # absolute-or-cwd-relative paths of the aligned crops
    parsing_paths: list[str]
    crop_size: np.ndarray  # (N,) int32 stored crop side
    landmarks68: np.ndarray  # (N, 68, 2) float32 crop px
    shape: np.ndarray  # (N, n_shape) float32
    expression: np.ndarray  # (N, n_exp) float32
    pose: np.ndarray  # (N, 3) float32 yaw, pitch, roll degrees
    camera: np.ndarray  # (N, 3) float32 s, tx, ty crop px
    contour: np.ndarray  # (N, K, 2) float32 crop px
    split: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.sha256)

    @property
    def n_identities(self) -> int:
        return len(self.identities)

    def rows_of(self, identity: int) -> np.ndarray:
        """Row indices of identity number `identity`, (m,) int64."""
        return np.flatnonzero(self.identity_index == identity)

    def coefficients(self, i: int) -> Coefficients:
        """The 3DMM fit of row i (crop pixels) for `faceswap.faces.threedmm`."""
        return Coefficients(
            shape=self.shape[i].astype(np.float64), expression=self.expression[i].astype(np.float64),
            pose=self.pose[i].astype(np.float64), camera=self.camera[i].astype(np.float64),
        )

    @classmethod
    def load(
        cls,
        aligned_parquet: str | os.PathLike,
        aligned_dir: str | os.PathLike,
        segments_parquet: str | os.PathLike,
        parsing_dir: str | os.PathLike,
        threedmm_parquet: str | os.PathLike,
        splits_parquet: str | os.PathLike | None,
        split: str | None = "train",
    ) -> "FaceRecords":
        """Inner-join the stage tables (schema-checked) on sha256; keep rows of `split` (None = all)."""
        aligned = schemas.read_table(aligned_parquet, schemas.ALIGNED)
        segments = schemas.read_table(segments_parquet, schemas.SEGMENTS)
        tdmm = schemas.read_table(threedmm_parquet, schemas.THREEDMM)
        if split is not None and splits_parquet is None:
            raise ValueError(f"FaceRecords.load: split={split!r} needs a splits table")
        splits = schemas.read_table(splits_parquet, schemas.SPLITS) if splits_parquet is not None else None
        seg_at, tdmm_at = _first_row_of(segments), _first_row_of(tdmm)
        keep, dropped = _join(aligned, seg_at, tdmm_at, splits, split)
        rows, crops, parsings = _with_files(keep, aligned, segments, seg_at, Path(aligned_dir), Path(parsing_dir),
                                            dropped)
        if not rows:
            raise ValueError(
                f"FaceRecords.load: no usable rows for split={split!r} in {aligned_parquet} (dropped: {dropped})"
            )
        unexpected = {k: v for k, v in dropped.items() if not k.startswith("split_")}
        if unexpected:
            log.warning("FaceRecords: %d rows kept; left out %s", len(rows), dropped)

        a_rows = pa.array([j for _, _, j in rows], pa.int64())
        t_rows = pa.array([tdmm_at[sha] for _, sha, _ in rows], pa.int64())
        a_sel, t_sel = aligned.take(a_rows), tdmm.take(t_rows)
        where_a, where_t = str(aligned_parquet), str(threedmm_parquet)
        lm = _list_column(a_sel, "landmarks68", where_a)
        contour = _list_column(t_sel, "contour2d", where_t)
        if lm.shape[1] != 136:
            raise ValueError(f"{where_a}: landmarks68 must hold 136 values, got {lm.shape[1]}")
        if contour.shape[1] % 2:
            raise ValueError(f"{where_t}: contour2d must hold 2K values, got {contour.shape[1]}")
        pose, camera = _list_column(t_sel, "pose", where_t), _list_column(t_sel, "camera", where_t)
        if pose.shape[1] != 3 or camera.shape[1] != 3:
            raise ValueError(f"{where_t}: pose and camera must hold 3 values each")
        identities = sorted({ident for ident, _, _ in rows})
        id_num = {ident: k for k, ident in enumerate(identities)}
        return cls(
            sha256=[sha for _, sha, _ in rows],
            identities=identities,
            identity_index=np.array([id_num[ident] for ident, _, _ in rows], np.int64),
            crop_paths=crops,
            parsing_paths=parsings,
            crop_size=a_sel.column("size").to_numpy().astype(np.int32),
            landmarks68=lm.reshape(-1, 68, 2),
            shape=_list_column(t_sel, "shape", where_t),
            expression=_list_column(t_sel, "expression", where_t),
            pose=pose,
            camera=camera,
            contour=contour.reshape(len(rows), -1, 2),
            split=split,
            dropped=dropped,
        )


def _first_row_of(table: pa.Table) -> dict[str, int]:
    """sha256 -> the index of its first row in `table`."""
    out: dict[str, int] = {}
    for j, sha in enumerate(table.column("sha256").to_pylist()):
        out.setdefault(sha, j)
    return out


def _join(aligned: pa.Table, seg_at: dict[str, int], tdmm_at: dict[str, int], splits: pa.Table | None,
          split: str | None) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """The aligned rows with a segment, a 3DMM fit and (given splits) the wanted split, sorted by
    (identity, sha256), as (identity, sha256, aligned row); and the count left out per reason."""
    split_of = dict(zip(splits.column("sha256").to_pylist(), splits.column("split").to_pylist())) if splits else {}
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    a_id = aligned.column("identity").to_pylist()
    keep: list[tuple[str, str, int]] = []  # (identity, sha, aligned row)
    seen: set[str] = set()
    for j, sha in enumerate(aligned.column("sha256").to_pylist()):
        if sha is None or sha in seen:
            drop("duplicate")
            continue
        seen.add(sha)
        if sha not in seg_at:
            drop("no_segment")
        elif sha not in tdmm_at:
            drop("no_threedmm")
        elif splits is not None and sha not in split_of:
            drop("no_split")
        elif split is not None and split_of[sha] != split:
            drop(f"split_{split_of[sha]}")
        else:
            keep.append((a_id[j], sha, j))
    for name, at in (("segments", seg_at), ("threedmm", tdmm_at)):
        orphans = len(set(at) - seen)
        if orphans:
            dropped[f"orphan_{name}"] = orphans
    keep.sort()
    return keep, dropped


def _with_files(keep: list[tuple[str, str, int]], aligned: pa.Table, segments: pa.Table, seg_at: dict[str, int],
                aligned_dir: Path, parsing_dir: Path, dropped: dict[str, int]
                ) -> tuple[list[tuple[str, str, int]], list[str], list[str]]:
    """The kept rows whose crop and parsing files exist, with those paths (a missing one counts in `dropped`)."""
    a_crop = aligned.column("crop").to_pylist()
    seg_paths = segments.column("parsing").to_pylist()
    rows, crops, parsings = [], [], []
    for ident, sha, j in keep:
        crop, parsing = aligned_dir / a_crop[j], parsing_dir / seg_paths[seg_at[sha]]
        if not (crop.is_file() and parsing.is_file()):
            dropped["missing_file"] = dropped.get("missing_file", 0) + 1
            continue
        rows.append((ident, sha, j))
        crops.append(str(crop))
        parsings.append(str(parsing))
    return rows, crops, parsings


# ----------------------------------------------------------------------------- datasets


def _key(key: int | tuple[int, int], epoch: int) -> tuple[int, int]:
    """Dataset keys are an index (at the dataset's epoch) or an (epoch, index) pair from the sampler."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return epoch, int(key)


def _scale_xy(xy: np.ndarray, f: float) -> np.ndarray:
    """Pixel-centre coordinates at crop size -> at size S = f * crop size."""
    return ((xy + 0.5) * f - 0.5).astype(np.float32)


def _mirror_xy(xy: np.ndarray, size: int) -> np.ndarray:
    out = xy.copy()
    out[..., 0] = (size - 1) - out[..., 0]
    return out


class FaceDataset(Dataset):
    """One face per item, resized to S and optionally colour-jittered.

    preload=True decodes and resizes every crop and parsing map once, in the constructing
    process, into two uint8 arrays (N*S*S*4 bytes; forked loader workers share them
    copy-on-write), so items no longer decode PNGs - for sets that fit in memory (the demo).

    ``ds[i]`` -> dict:
        image (3, S, S) float32 in [-1, 1]; parsing (S, S) int64 in 0..6 (bisenet.LABELS);
        landmarks68 (68, 2) and contour (K, 2) float32 px at size S; shape (n_shape,),
        expression (n_exp,), pose (3,) degrees, camera (3,) (s, tx, ty at size S) float32;
        identity int64 (into records.identities); index int64 (records row).
    """

    def __init__(self, records: FaceRecords, size: int, augment: AugmentConfig | None = None, seed: int = 0,
                 preload: bool = False):
        if size < 8:
            raise ValueError(f"FaceDataset: size must be >= 8, got {size}")
        if augment is not None:
            augment.validate()
        self.records = records
        self.size = int(size)
        self.augment = None if augment is None or augment.is_identity else augment
        self.seed = int(seed)
        self.epoch = 0
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        if preload:
            self._cache = self._preload()

    def _preload(self) -> tuple[np.ndarray, np.ndarray]:
        n, s = self.records.n, self.size
        images, labels = np.empty((n, s, s, 3), np.uint8), np.empty((n, s, s), np.uint8)
        for i in tqdm(range(n), desc=f"preload {s}px faces", leave=False,
                      disable=os.environ.get("FACESWAP_NO_PROGRESS") == "1"):
            images[i], labels[i] = self._decode(i)
        return images, labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.records.n

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = _key(key, self.epoch)
        return self.item(i, np.random.default_rng([self.seed, epoch, i, 0]))

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row i's crop (S, S, 3) uint8 RGB and parsing (S, S) uint8, resized to S."""
        if self._cache is not None:
            return self._cache[0][i], self._cache[1][i]
        return self._decode(i)

    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.records
        bgr = cv2.imread(r.crop_paths[i], cv2.IMREAD_COLOR)
        labels = cv2.imread(r.parsing_paths[i], cv2.IMREAD_UNCHANGED)
        if bgr is None or labels is None:
            bad = r.crop_paths[i] if bgr is None else r.parsing_paths[i]
            raise OSError(f"FaceDataset: could not read {bad} (row {i}, sha256 {r.sha256[i]})")
        if labels.ndim == 3:
            labels = labels[..., 0]
        s = self.size
        if bgr.shape[:2] != (s, s):
            interp = cv2.INTER_AREA if bgr.shape[0] > s else cv2.INTER_LINEAR
            bgr = cv2.resize(bgr, (s, s), interpolation=interp)
        if labels.shape != (s, s):
            labels = cv2.resize(labels, (s, s), interpolation=cv2.INTER_NEAREST)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), labels

    def item(self, i: int, rng: np.random.Generator, p12: np.ndarray | None = None) -> dict[str, Any]:
        """Row i with augmentation drawn from `rng`. `p12` (K, 2) crop px is transformed with it."""
        r, s = self.records, self.size
        rgb, labels = self.read(i)
        f = s / float(r.crop_size[i])
        lm = _scale_xy(r.landmarks68[i], f)  # (68, 2)
        contour = _scale_xy(r.contour[i], f)  # (K, 2)
        cam = r.camera[i].astype(np.float32) * np.float32(f)
        cam[1:] += 0.5 * (f - 1.0)  # same pixel-centre convention as _scale_xy
        pose = r.pose[i].astype(np.float32).copy()
        img = rgb.astype(np.float32) * (1.0 / 255.0)  # (S, S, 3)
        out_p12 = None if p12 is None else _scale_xy(p12, f)
        if self.augment is not None:
            factors, flip = _draw_augment(self.augment, rng)
            img = color_jitter(img, factors)
            if flip:
                img, labels = img[:, ::-1], labels[:, ::-1]
                lm = _mirror_xy(lm, s)[IBUG68_MIRROR]
                contour = _mirror_xy(contour, s)[::-1]
                if out_p12 is not None:
                    out_p12 = _mirror_xy(out_p12, s)[::-1]
                pose[0], pose[2] = -pose[0], -pose[2]  # yaw, roll change sign; pitch stays
                cam[1] = (s - 1) - cam[1]
        if labels.max(initial=0) >= len(LABELS):
            raise ValueError(f"FaceDataset: {r.parsing_paths[i]} has label {labels.max()} >= {len(LABELS)}")
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)) * 2.0 - 1.0),  # (3, S, S)
            "parsing": torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64)),  # (S, S)
            "landmarks68": torch.from_numpy(np.ascontiguousarray(lm)),
            "contour": torch.from_numpy(np.ascontiguousarray(contour)),
            "shape": torch.from_numpy(r.shape[i].copy()),
            "expression": torch.from_numpy(r.expression[i].copy()),
            "pose": torch.from_numpy(pose),
            "camera": torch.from_numpy(cam),
            "identity": torch.tensor(int(r.identity_index[i]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if out_p12 is not None:
            item["p12"] = torch.from_numpy(np.ascontiguousarray(out_p12, dtype=np.float32))
        return item


class PairDataset(Dataset):
    """(source, target) face pairs for the swap and shape stages.

    Pair i at epoch e: the target walks a per-epoch permutation of the records (every face is a
    target once per `records.n` items); with probability `same_identity_ratio` the pair is a
    reconstruction pair: `same="image"` (the paper's I_s = I_t) makes the source the very target
    item (same image, same augmentation), `same="identity"` another face of the target's identity
    (the same face if it has only one); else the source is a face drawn uniformly from the other
    identities. ``pairs[i]`` -> {"source": FaceDataset item,
    "target": FaceDataset item, "same_identity": bool tensor, "p12": (K, 2) float32 px at S}
    where p12 (only with `threedmm_model`) is FlowFace++ Eq. 16: the contour of the source's
    identity (shape) with the target's expression, pose and camera. preload: see FaceDataset.
    """

    def __init__(
        self,
        records: FaceRecords,
        size: int,
        same_identity_ratio: float = 0.25,
        seed: int = 0,
        augment: AugmentConfig | None = None,
        threedmm_model: str | os.PathLike | None = None,
        length: int | None = None,
        preload: bool = False,
        same: str = "image",
    ):
        if not 0.0 <= same_identity_ratio <= 1.0:
            raise ValueError(f"PairDataset: same_identity_ratio must be in [0, 1], got {same_identity_ratio}")
        if same not in ("image", "identity"):
            raise ValueError(f"PairDataset: same must be 'image' or 'identity', got {same!r}")
        self.same = same
        self.faces = FaceDataset(records, size, augment=augment, seed=seed, preload=preload)
        self.records = records
        self.size = int(size)
        self.same_identity_ratio = float(same_identity_ratio)
        self.seed = int(seed)
        self.length = int(length) if length is not None else records.n
        self.epoch = 0
        self.model: LinearFaceModel | None = None
        if threedmm_model is not None:
            self.model = LinearFaceModel.load(threedmm_model)
            k = len(self.model.contour_idx)
            if k != records.contour.shape[1]:
                raise ValueError(
                    f"PairDataset: {threedmm_model} has {k} contour points, the threedmm table "
                    f"{records.contour.shape[1]}; was the table made with this model?"
                )
            if (self.model.n_shape, self.model.n_exp) != (records.shape.shape[1], records.expression.shape[1]):
                raise ValueError(f"PairDataset: {threedmm_model} coefficient sizes do not match the threedmm table")
        self._rows = [records.rows_of(k) for k in range(records.n_identities)]  # per identity
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _perm(self, epoch: int, cycle: int) -> np.ndarray:
        key = (epoch, cycle)
        if key not in self._perms:
            self._perms[key] = np.random.default_rng([self.seed, epoch, cycle, 7]).permutation(self.records.n)
            while len(self._perms) > 4:
                self._perms.popitem(last=False)
        return self._perms[key]

    def choose(self, epoch: int, i: int) -> tuple[int, int, bool]:
        """(source row, target row, same identity) of pair i at `epoch` - a pure function."""
        r = self.records
        n = r.n
        target = int(self._perm(epoch, i // n)[i % n])
        rng = np.random.default_rng([self.seed, epoch, i, 1])
        ident = int(r.identity_index[target])
        same = bool(rng.random() < self.same_identity_ratio) or r.n_identities == 1
        if same:
            if self.same == "image":
                return target, target, True
            rows = self._rows[ident]
            if len(rows) > 1:
                rows = rows[rows != target]
            return int(rows[rng.integers(len(rows))]), target, True
        for _ in range(1000):  # rejection: uniform over the faces of the other identities
            j = int(rng.integers(n))
            if r.identity_index[j] != ident:
                return j, target, False
        others = np.flatnonzero(r.identity_index != ident)
        return int(others[rng.integers(len(others))]), target, False

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = _key(key, self.epoch)
        if not 0 <= i < self.length:
            raise IndexError(f"PairDataset: index {i} out of range [0, {self.length})")
        src, tgt, same = self.choose(epoch, i)
        p12 = None
        if self.model is not None:
            p12 = self.model.build_p12(self.records.coefficients(src), self.records.coefficients(tgt))  # (K, 2)
        target = self.faces.item(tgt, np.random.default_rng([self.seed, epoch, i, 3]), p12=p12)
        if same and self.same == "image":  # I_s = I_t: the very same tensors (augmentation included)
            source = {k: v for k, v in target.items() if k != "p12"}
        else:
            source = self.faces.item(src, np.random.default_rng([self.seed, epoch, i, 2]))
        out = {"source": source, "target": target, "same_identity": torch.tensor(same)}
        if p12 is not None:
            out["p12"] = target.pop("p12")
        return out


# ----------------------------------------------------------------------------- sampling + loader


def shard(n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's indices of epoch `epoch`: a seeded permutation padded (by wrapping, as
    DistributedSampler) to a multiple of world_size, then every world_size-th element."""
    if not 0 <= rank < world_size:
        raise ValueError(f"shard: rank {rank} not in [0, {world_size})")
    perm = np.random.default_rng([seed, epoch, 11]).permutation(n)
    total = math.ceil(n / world_size) * world_size
    if total > n:
        perm = np.concatenate([perm, perm[: total - n]])
    return perm[rank::world_size]


def batches_per_epoch(n: int, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    """Batches each rank gets per epoch (the same on every rank)."""
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def resume_position(batches_done: int, per_epoch: int) -> tuple[int, int]:
    """(epoch, batches to skip in it) after `batches_done` batches from the start of epoch 0."""
    if per_epoch < 1:
        raise ValueError("resume_position: an epoch must hold at least one batch (dataset smaller than a batch?)")
    return divmod(int(batches_done), per_epoch)


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys for this rank, epoch after epoch.

    Each epoch is `shard(...)`, cut into batches (the incomplete tail dropped when drop_last), so
    batches never straddle epochs. `skip_batches` (may exceed an epoch) is where a resumed run
    starts; `epochs=None` runs forever (one DataLoader and one worker pool for a whole run).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch: int = 0, epochs: int | None = 1, skip_batches: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError("EpochBatchSampler: batch_size must be >= 1")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.per_epoch = batches_per_epoch(n, batch_size, world_size, drop_last)
        if self.per_epoch < 1:
            raise ValueError(
                f"EpochBatchSampler: {n} items over {world_size} rank(s) make no full batch of {batch_size}"
            )
        extra, self.skip = resume_position(skip_batches, self.per_epoch)
        self.epoch = epoch + extra
        self.epochs = None if epochs is None else epochs - extra

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("EpochBatchSampler: endless (epochs=None) has no length")
        return max(0, self.epochs * self.per_epoch - self.skip)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        e, skip = self.epoch, self.skip
        while self.epochs is None or e < self.epoch + self.epochs:
            idx = shard(self.n, seed=self.seed, epoch=e, rank=self.rank, world_size=self.world_size)
            for b in range(skip, self.per_epoch):
                yield [(e, int(i)) for i in idx[b * self.batch_size : (b + 1) * self.batch_size]]
            e, skip = e + 1, 0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    drop_last: bool = True,
    epochs: int | None = 1,
    skip_batches: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: str | None = "spawn",
) -> DataLoader:
    """DataLoader over this rank's deterministic shard (DistributedSampler-equivalent).

    Yields default-collated dicts (nested dicts collate per key). Items depend only on
    (seed, epoch, index), so the stream is the same for any num_workers. To resume exactly after
    `k` batches of this rank, pass ``epoch=0, skip_batches=k`` (or ``epoch, skip =
    resume_position(k, batches_per_epoch(len(ds), B, world_size))``). `epochs=None` gives an
    endless loader; otherwise it covers `epochs` epochs starting at `epoch`.
    Loader workers are spawned by default: forking a parent that already runs threads (torch,
    Ray, Prefect, a worker pool) can deadlock the child (seen in the test suite).
    """
    sampler = EpochBatchSampler(
        len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size, epoch=epoch,
        epochs=epochs, skip_batches=skip_batches, drop_last=drop_last,
    )
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw.update(worker_init_fn=_worker_init, persistent_workers=False,
                  multiprocessing_context=multiprocessing_context)
        if prefetch_factor is not None:
            kw["prefetch_factor"] = prefetch_factor
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(rank))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=generator, **kw)


# ----------------------------------------------------------------------------- bench helpers


def decode_only_rate(records: FaceRecords, n: int) -> float:
    """Faces/s for reading crop + parsing PNGs alone (no resize/augment/collate): the ceiling."""
    n = max(1, int(n))
    t = time.perf_counter()
    for k in range(n):
        i = k % records.n
        if cv2.imread(records.crop_paths[i], cv2.IMREAD_COLOR) is None:
            raise OSError(f"decode_only_rate: could not read {records.crop_paths[i]}")
        cv2.imread(records.parsing_paths[i], cv2.IMREAD_UNCHANGED)
    return n / (time.perf_counter() - t)


def close_loader_iterator(batches: Iterator) -> None:
    """Stop and join the loader's worker processes now. Dropping the iterator is not enough: an exception
    raised inside `next(batches)` keeps it alive in its traceback (Ray keeps a failed worker's), and an
    iterator collected at interpreter exit skips the shutdown, leaving the workers to die with their parent."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator; none with 0 workers
    if shutdown is not None:
        shutdown()


def loader_rate(dataset: Dataset, batch_size: int, num_workers: int, n_batches: int, **loader_kw: Any) -> float:
    """Items/s delivered by `make_loader` in steady state (the first batch, which pays for worker
    start-up, is not timed)."""
    loader = make_loader(dataset, batch_size, num_workers=num_workers, epochs=None, **loader_kw)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    dt = time.perf_counter() - t
    close_loader_iterator(it)
    return n_batches * batch_size / dt


def alignment(aligned_table: str | os.PathLike) -> tuple[int, float]:
    """(crop side, template scale) every crop of an aligned table was made with: the one route by which
    `align.size` / `align.template_scale` reach a trained model. Raises ValueError when the table mixes
    settings or lacks them (an aligned.parquet from before they were recorded: re-run `align`)."""
    table = schemas.read_table(aligned_table, schemas.ALIGNED)
    sizes = set(table.column("size").to_pylist())
    scales = set(table.column("template_scale").to_pylist())
    if len(sizes) != 1 or len(scales) != 1 or None in sizes | scales:
        raise ValueError(f"{aligned_table}: expected one crop size and template scale, got sizes {sorted(sizes, key=str)} "
                         f"and template scales {sorted(scales, key=str)} (re-run the align stage)")
    return int(sizes.pop()), float(scales.pop())
