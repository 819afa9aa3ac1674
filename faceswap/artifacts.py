"""The swap-model bundle: the one on-disk format that training writes and evaluation, registration
and the swap CLI read.

A bundle is a directory:
    generator.safetensors   SwapGenerator state dict (EMA weights when training kept an EMA)
    bundle.json             {"format": 1, "swap": SwapConfig dict, "align": {"size", "template_scale"},
                             "meta": {...free-form provenance: step, run id, data fingerprint...}}

`align` records how training crops were made (stages/align.py, ArcFace template scaled to `size`
and zoomed out by `template_scale`), so inference aligns new photos exactly as training did.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from faceswap.core.io import atomic_write_text
from faceswap.core.weights import WeightsError, load_into
from faceswap.core.weights import save_safetensors_atomic
from faceswap_models.config import SwapConfig
from faceswap_models.swap import SwapGenerator

BUNDLE_FORMAT = 1
WEIGHTS_NAME = "generator.safetensors"
META_NAME = "bundle.json"


@dataclass
class SwapBundle:
    """A loaded swap model plus what inference needs to prepare its inputs."""

    generator: SwapGenerator
    swap: SwapConfig
    align_size: int
    template_scale: float
    meta: dict[str, Any] = field(default_factory=dict)


def save_bundle(out_dir: str | os.PathLike, generator: SwapGenerator, *, align_size: int,
                template_scale: float, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `generator` and its config into `out_dir` (weights first, then the json, each atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(generator.state_dict(), out / WEIGHTS_NAME)
    doc = {"format": BUNDLE_FORMAT, "swap": generator.cfg.to_dict(),
           "align": {"size": int(align_size), "template_scale": float(template_scale)},
           "meta": dict(meta or {})}
    atomic_write_text(out / META_NAME, json.dumps(doc, indent=2, sort_keys=True, default=str))
    return out


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> SwapBundle:
    """Load a bundle directory; the generator comes back in eval mode. Errors name the file."""
    path = Path(path)
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise WeightsError(f"{path}: not a swap-model bundle (no {META_NAME})")
    try:
        doc = json.loads(meta_path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{meta_path}: unreadable bundle description ({e})") from e
    if doc.get("format") != BUNDLE_FORMAT:
        raise WeightsError(f"{meta_path}: bundle format {doc.get('format')!r}, expected {BUNDLE_FORMAT}")
    cfg = SwapConfig.from_dict(doc["swap"])
    gen = SwapGenerator(cfg)
    load_into(gen, path / WEIGHTS_NAME, strict=True)
    gen.to(device).eval()
    align = doc.get("align", {})
    return SwapBundle(generator=gen, swap=cfg, align_size=int(align.get("size", cfg.mae.img_size)),
                      template_scale=float(align.get("template_scale", 1.0)), meta=doc.get("meta", {}))
