"""Typed stage configuration loaded from params.yaml (the only place defaults live).

Each stage has a frozen dataclass; `load_section(cls, name, params_path)` reads its section,
rejects unknown keys and checks types, so a typo in params.yaml fails loudly before any work.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """params.yaml has an unknown key, a missing key, or a value of the wrong type."""


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    return parse_params(Path(path).read_text(encoding="utf-8"), str(path))


def parse_params(text: str, where: str) -> dict[str, Any]:
    """params YAML text -> its top-level mapping (`where` names the text in errors)."""
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    return data


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"a.b.c": leaf} (params and metrics for MLflow, report tables)."""
    if not isinstance(d, typing.Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _check_type(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(name, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{name}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_check_type(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], section: str = "", base: Any = None) -> T:
    """Build dataclass `cls` from a (nested) mapping: the project's one config builder.

    Unknown keys and wrong types raise ConfigError naming `section.key`. A key missing from `data`
    takes `base`'s value when a base is given (the network configs pass their frozen `paper()`),
    else the field's default; a field with neither is a missing key. Fields typed as dataclasses
    are built recursively (their base: `base`'s value, else their `paper()` when they have one).
    `validate()` runs on the result when the class has it."""
    where = section or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{section}.{name}" if section else name
        tp = hints[name]
        if name in data:
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                sub = getattr(base, name) if base is not None else (tp.paper() if hasattr(tp, "paper") else None)
                kwargs[name] = from_dict(tp, data[name], key, sub)
            else:
                kwargs[name] = _check_type(key, data[name], tp)
        elif base is not None:
            kwargs[name] = getattr(base, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def load_section(cls: type[T], name: str, params_path: str | Path = "params.yaml") -> T:
    params = load_params(params_path)
    if name not in params:
        raise ConfigError(f"{params_path}: no section {name!r}")
    return from_dict(cls, params[name], name)


@dataclass(frozen=True)
class IngestConfig:
    """ingest: enumerate a source into manifest.parquet."""

    source: typing.Literal["demo", "folder"]
    root: str  # folder source root; for `demo` the generated corpus is written here
    layout: typing.Literal["auto", "identity_folders", "flat"]
    extensions: list[str]
    demo_identities: int
    demo_images_per_identity: int
    demo_size: int
    seed: int

    def validate(self) -> None:
        if self.demo_identities < 1 or self.demo_images_per_identity < 1:
            raise ConfigError("ingest: demo_identities and demo_images_per_identity must be >= 1")


@dataclass(frozen=True)
class DetectConfig:
    """detect: the face detector shared by filter (face rules) and align (landmarks)."""

    backend: typing.Literal["dlib", "retinaface"]
    retinaface_weights: str | None  # local .pth/.safetensors of a RetinaFace-R50
    retinaface_threshold: float
    max_side: int  # images are downscaled to this for detection
    upsample: int  # dlib HOG pyramid upsampling (finds smaller faces, slower)
    device: str


@dataclass(frozen=True)
class PrepConfig:
    """prep: where the per-image work of filter / align / segment / threedmm runs, and how often a
    stage saves its progress (faceswap/core/executor.py, docs/cluster.md)."""

    executor: typing.Literal["local", "ray"]  # local: this machine's process pool; ray: Ray Data actor pools
    ray_address: str | None  # ray: null starts a local Ray; "auto" / "ray://head:10001" joins a cluster
    use_gpu: bool  # ray: RetinaFace (filter) and BiSeNet (segment) actors take one GPU each
    gpu_actors: int  # ray + use_gpu: how many GPU actors (one per GPU you want used)
    batch_size: int  # ray: items per actor call
    object_store_mb: int  # ray: object store of a local Ray started for data prep
    checkpoint_items: int  # save a stage's progress after this many new items ...
    checkpoint_seconds: float  # ... or this many seconds, whichever comes first

    def validate(self) -> None:
        if self.gpu_actors < 1 or self.batch_size < 1 or self.object_store_mb < 64:
            raise ConfigError("prep: gpu_actors and batch_size must be >= 1, object_store_mb >= 64")
        if self.checkpoint_items < 1 or self.checkpoint_seconds <= 0:
            raise ConfigError("prep: checkpoint_items must be >= 1 and checkpoint_seconds > 0")


@dataclass(frozen=True)
class FilterConfig:
    """filter: reason-coded quality rejects."""

    max_pixels: int  # larger images are refused before decoding (decompression bombs)
    min_side: int
    blur_min: float  # variance of Laplacian on the grey face crop resized to 128px
    min_score: float  # detector confidence floor
    dominance_ratio: float  # largest face area / next largest area needed to keep a multi-face image
    min_face_px: int  # face box side in source pixels
    max_yaw: float  # degrees, estimated from the 5 landmarks
    phash_max_distance: int  # Hamming distance at or below which faces are near-duplicates; -1 = off
    workers: int

    def validate(self) -> None:
        if not -1 <= self.phash_max_distance <= 16:
            raise ConfigError("filter.phash_max_distance must be in [-1, 16] (-1 turns it off)")
        if self.workers < 1:
            raise ConfigError("filter.workers must be >= 1")


@dataclass(frozen=True)
class AlignConfig:
    """align: similarity transform to the ArcFace 5-point template, crops + landmarks."""

    size: int
    template_scale: float  # >1 zooms out around the template centre (keeps chin + jaw contour)
    image_format: typing.Literal["png", "jpg"]
    jpeg_quality: int
    workers: int

    def validate(self) -> None:
        if self.size < 32:
            raise ConfigError("align.size must be >= 32")


@dataclass(frozen=True)
class SegmentConfig:
    """segment: face parsing maps."""

    backend: typing.Literal["landmarks", "bisenet"]
    bisenet_weights: str | None
    workers: int


@dataclass(frozen=True)
class ThreeDMMConfig:
    """threedmm: 3DMM coefficients per aligned face."""

    backend: typing.Literal["learned", "file"]
    model_file: str | None  # user-supplied linear 3DMM (.npz: mean, id_basis, exp_basis)
    n_shape: int
    n_exp: int
    learn_max_faces: int  # learned backend: a deterministic sample this size bounds time and memory
    workers: int


@dataclass(frozen=True)
class SplitConfig:
    """split: identity-disjoint train/val/test."""

    val_frac: float
    test_frac: float
    seed: int
    expression_px_size: int  # the expression report's px figures are at this image side (the training size)
    expression_before: str  # a crop-measure dump (bench.expression_ceiling --dump-measures) reported beside; "": none

    def validate(self) -> None:
        if self.expression_px_size < 1:
            raise ConfigError("split.expression_px_size must be >= 1")
        if not (0 <= self.val_frac < 1 and 0 <= self.test_frac < 1 and self.val_frac + self.test_frac < 1):
            raise ConfigError("split: fractions must be in [0,1) and sum below 1")
