"""Artifacts: the names, the one format and the loaders of every network the training stages save.

One format for every saved network. A folder holds, per network `<name>`:
    <name>.safetensors   its state dict (EMA weights where training kept an average)
    <name>.json          {"format": 1, "config": <its typed config as a dict>, "meta": {provenance},
                          ...artifact-specific keys}
Folders (dvc.yaml outs):
    models/aux    regressor.*   train_aux's face-attribute regressor; extra key "crop_size" (the aligned
                                crop side it was trained on)
    models/mae    mae.*         pretrain_mae's FaceMAE; train_swap takes its encoder and its size
    models/shape  dshape.*      train_shape's Dshape, frozen inside train_swap's flow loss
    models/swap/<architecture>   generator.*   the swap-model bundle of one architecture
                                (faceswap_models/architectures.py): its SwapModel; extra keys "architecture"
                                (which one, so any bundle loads without a per-architecture branch), "align"
                                ({"size", "template_scale"}: how the training crops were aligned) and
                                "detect" (the detector that found them), so inference finds and aligns
                                new photos exactly as training did

Stages import this module, never each other. Every reader checks the format and names the file
in a `WeightsError`; nothing falls back to a default when a key is missing.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from faceswap.core.config import DetectConfig, from_dict
from faceswap.core.io import atomic_write_text
from faceswap.core.weights import WeightsError, load_into, read_state_dict, save_safetensors_atomic
from faceswap_models.architectures import ARCHITECTURES, Architecture
from faceswap_models.auxiliary.regressor import FaceAttributeRegressor, RegressorConfig, load_regressor
from faceswap_models.config import MAEConfig, ShapeConfig
from faceswap_models.generator import SwapModel
from faceswap_models.shape import ShapeDiscriminator

FORMAT = 1
REGRESSOR = "regressor"
MAE = "mae"
DSHAPE = "dshape"
GENERATOR = "generator"


def weights_file(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder) / f"{name}.safetensors"


def config_file(folder: str | os.PathLike, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def write_config(folder: str | os.PathLike, name: str, config: Any, meta: Mapping[str, Any] | None = None,
                 **extra: Any) -> Path:
    """`<name>.json`: format, the typed config (a dataclass), provenance, extra keys."""
    doc = {"format": FORMAT, "config": dataclasses.asdict(config), "meta": dict(meta or {}), **extra}
    path = config_file(folder, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return path


def save_network(folder: str | os.PathLike, name: str, module: nn.Module, config: Any,
                 meta: Mapping[str, Any] | None = None, **extra: Any) -> Path:
    """Weights first, then the JSON (each atomic), so a folder with the JSON is complete."""
    save_safetensors_atomic(module.state_dict(), weights_file(folder, name))
    return write_config(folder, name, config, meta, **extra)


def read_config(folder: str | os.PathLike, name: str, *required: str) -> dict[str, Any]:
    """The parsed `<name>.json` (WeightsError naming the file when absent, unreadable, of another
    format, or without "config" or one of `required`)."""
    path = config_file(folder, name)
    if not path.is_file():
        raise WeightsError(f"{Path(folder)}: no {path.name} (not a {name} artifact)")
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise WeightsError(f"{path}: artifact format {doc.get('format') if isinstance(doc, dict) else doc!r}, "
                           f"expected {FORMAT}")
    missing = [k for k in ("config", *required) if k not in doc]
    if missing:
        raise WeightsError(f"{path}: missing key(s) {missing}")
    return doc


# --------------------------------------------------------------------------- the auxiliary regressor
def load_aux_regressor(folder: str | os.PathLike, crop_size: int) -> FaceAttributeRegressor:
    """The frozen regressor of a train_aux output folder, to score crops of side `crop_size` (the aligned
    table's): its landmark / camera outputs are in the pixels of the crops it was trained on, so a
    regressor trained on another crop size is refused (ValueError: re-run train_aux)."""
    doc = read_config(folder, REGRESSOR, "crop_size")
    if int(doc["crop_size"]) != int(crop_size):
        raise ValueError(f"{config_file(folder, REGRESSOR)}: the regressor was trained on {doc['crop_size']} px crops, "
                         f"the aligned table holds {crop_size} px crops: re-run train_aux")
    return load_regressor(weights_file(folder, REGRESSOR), RegressorConfig(**doc["config"]))


# --------------------------------------------------------------------------- MAE and Dshape
def mae_config(folder: str | os.PathLike) -> MAEConfig:
    return MAEConfig.from_dict(read_config(folder, MAE)["config"])


def mae_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    return read_state_dict(weights_file(folder, MAE))


def load_dshape(folder: str | os.PathLike) -> ShapeDiscriminator:
    """The frozen, eval-mode Dshape from a train_shape output folder."""
    net = ShapeDiscriminator(ShapeConfig.from_dict(read_config(folder, DSHAPE)["config"]))
    load_into(net, weights_file(folder, DSHAPE), strict=True)
    return net.eval().requires_grad_(False)


# --------------------------------------------------------------------------- the swap-model bundle
@dataclass
class SwapBundle:
    """A loaded swap model (any architecture) plus what inference needs to prepare its inputs."""

    generator: SwapModel
    architecture: Architecture
    align_size: int
    template_scale: float
    detect: DetectConfig
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.generator.cfg

    @property
    def img_size(self) -> int:
        return self.generator.img_size


def save_bundle(out_dir: str | os.PathLike, generator: SwapModel, *, align_size: int,
                template_scale: float, detect: DetectConfig, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `generator` (its architecture, config, weights) and the detection + alignment it was trained on."""
    save_network(out_dir, GENERATOR, generator, generator.cfg, meta, architecture=generator.architecture,
                 align={"size": int(align_size), "template_scale": float(template_scale)},
                 detect=dataclasses.asdict(detect))
    return Path(out_dir)


def is_bundle(folder: str | os.PathLike) -> bool:
    return config_file(folder, GENERATOR).is_file()


def bundle_architecture(folder: str | os.PathLike, doc: Mapping[str, Any] | None = None) -> Architecture:
    """The architecture a bundle folder holds (WeightsError naming the file when unknown); `doc`: its
    generator.json when already read."""
    name = (doc if doc is not None else read_config(folder, GENERATOR, "architecture"))["architecture"]
    if name not in ARCHITECTURES:
        raise WeightsError(f"{config_file(folder, GENERATOR)}: unknown architecture {name!r}; this version knows "
                           f"{sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def bundle_config(folder: str | os.PathLike) -> Any:
    """The generator config of a bundle folder (its architecture's config type)."""
    return bundle_architecture(folder).config.from_dict(read_config(folder, GENERATOR)["config"])


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> SwapBundle:
    """Load a bundle directory; the generator comes back in eval mode. Errors name the file."""
    doc = read_config(path, GENERATOR, "architecture", "align", "detect")
    arch = bundle_architecture(path, doc)
    align = doc["align"]
    if not isinstance(align, dict) or not {"size", "template_scale"} <= set(align):
        raise WeightsError(f"{config_file(path, GENERATOR)}: align must hold size and template_scale, got {align!r}")
    try:
        detect = from_dict(DetectConfig, doc["detect"], "detect")
        cfg = arch.config.from_dict(doc["config"])
    except ValueError as e:
        raise WeightsError(f"{config_file(path, GENERATOR)}: {e}") from e
    gen = arch.generator(cfg)
    load_into(gen, weights_file(path, GENERATOR), strict=True)
    gen.to(device).eval()
    return SwapBundle(generator=gen, architecture=arch, align_size=int(align["size"]),
                      template_scale=float(align["template_scale"]), detect=detect, meta=doc["meta"])
