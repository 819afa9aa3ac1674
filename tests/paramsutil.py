"""Configs for tests, built from the repository's params.yaml (the one place defaults live).

`section("filter", workers=1)` is params.yaml's `filter` section with `workers` replaced, validated
as a params file would be; `loop(steps=2, batch_size=4, ...)` the training loop settings the stages
build from the `train` section.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from faceswap import params
from faceswap.core.config import from_dict, load_params
from faceswap.data.records import AugmentConfig
from faceswap.training.loop import LoopConfig
from faceswap.training.regressor import RegressorAugment

REPO = Path(__file__).resolve().parents[1]
RAW = load_params(REPO / "params.yaml")
PARAMS = params.parse(RAW, "params.yaml")


def section(name: str, **overrides: Any) -> Any:
    """params.yaml's section `name`, with `overrides` (whole keys) replaced."""
    return from_dict(type(getattr(PARAMS, name)), {**RAW[name], **overrides}, name)


def loop(*, steps: int, batch_size: int, **overrides: Any) -> LoopConfig:
    """The loop settings of the `train` section for `steps` x `batch_size`, with `overrides`."""
    return dataclasses.replace(PARAMS.train.loop(steps=steps, batch_size=batch_size), **overrides)


def augment(**overrides: Any) -> AugmentConfig:
    """The training stages' photometric augmentation (pretrain_mae's), with `overrides`."""
    return from_dict(AugmentConfig, {**RAW["pretrain_mae"]["augment"], **overrides}, "augment")


def regressor_augment(**overrides: Any) -> RegressorAugment:
    """train_aux's augmentation, with `overrides`."""
    return from_dict(RegressorAugment, {**RAW["train_aux"]["augment"], **overrides}, "train_aux.augment")
