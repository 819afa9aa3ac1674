"""params.yaml is the one source of defaults: every typed config section names every field, and no
dataclass default disagrees with it (a default that differs would silently win wherever a config
is built without params, e.g. in a library call)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from faceswap.core import config as C
from faceswap.core.config import load_params

REPO = Path(__file__).resolve().parents[1]
SCALAR = (bool, int, float, str, type(None))


def _sections() -> dict[str, type]:
    from faceswap.training.config import STAGE_CONFIGS, TrainConfig
    from flows.retrain import RetrainConfig
    from stages.evaluate import EvaluateConfig
    from faceswap.serving.registry import RegisterConfig

    return {"ingest": C.IngestConfig, "detect": C.DetectConfig, "filter": C.FilterConfig, "align": C.AlignConfig,
            "segment": C.SegmentConfig, "threedmm": C.ThreeDMMConfig, "split": C.SplitConfig,
            "evaluate": EvaluateConfig, "train": TrainConfig, **STAGE_CONFIGS, "register": RegisterConfig,
            "retrain": RetrainConfig}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


@pytest.mark.parametrize("section", sorted(_sections()))
def test_dataclass_defaults_agree_with_params_yaml(section):
    params = load_params(REPO / "params.yaml")[section]
    cls = _sections()[section]
    missing, differ = [], []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in params:
            missing.append(f.name)
            continue
        d = _default(f)
        if d is dataclasses.MISSING or not isinstance(d, SCALAR + (list, tuple)):
            continue  # no default, or a nested mapping checked by its own section's loader
        got = params[f.name]
        if isinstance(d, (list, tuple)):
            d, got = list(d), list(got) if isinstance(got, (list, tuple)) else got
        if isinstance(d, float) or isinstance(got, float):
            same = d is not None and got is not None and float(d) == float(got)
        else:
            same = d == got
        if not same:
            differ.append(f"{f.name}: dataclass {d!r} vs params.yaml {got!r}")
    assert not missing, f"{section}: params.yaml lacks {missing}"
    assert not differ, f"{section}: " + "; ".join(differ)


def test_loop_defaults_follow_the_train_section():
    """LoopConfig is built from `train` by the stages; its own defaults (used by tests and library
    callers) must be the same numbers."""
    from faceswap.training.loop import LoopConfig

    train = load_params(REPO / "params.yaml")["train"]
    for f in dataclasses.fields(LoopConfig):
        if f.name in train and f.default is not dataclasses.MISSING:
            assert f.default == train[f.name], f"LoopConfig.{f.name}: {f.default!r} vs train.{f.name} {train[f.name]!r}"
