"""params.yaml is the one source of defaults: the params tree loads it whole (every section names
every field), and no section config has a default of its own that could silently win wherever a
config is built without params (a library call, a test)."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from faceswap import params
from faceswap.core.config import ConfigError, load_params
from faceswap.data.records import AugmentConfig
from faceswap.training.config import OcclusionConfig
from faceswap.training.loop import LoopConfig
from faceswap.training.regressor import RegressorAugment

REPO = Path(__file__).resolve().parents[1]
# Configs params.yaml rules besides the sections themselves (nested or built from a section).
ALSO_RULED = (AugmentConfig, RegressorAugment, LoopConfig, OcclusionConfig)


def section_classes() -> dict[str, type]:
    return typing.get_type_hints(params.Params)


def defaults_of(cls: type) -> list[str]:
    """The fields of dataclass `cls` that have a default (value or factory)."""
    return [f.name for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]


@pytest.mark.parametrize("name", sorted(f.name for f in dataclasses.fields(params.Params)
                                         if dataclasses.is_dataclass(section_classes()[f.name])))
def test_section_configs_have_no_defaults(name):
    cls = section_classes()[name]
    assert not defaults_of(cls), f"{cls.__name__} ({name}) has defaults {defaults_of(cls)}: params.yaml rules them"


@pytest.mark.parametrize("cls", ALSO_RULED, ids=lambda c: c.__name__)
def test_nested_configs_have_no_defaults(cls):
    assert not defaults_of(cls), f"{cls.__name__} has defaults {defaults_of(cls)}: params.yaml rules them"


def test_the_check_sees_a_default():
    @dataclasses.dataclass
    class Bad:
        a: int
        b: int = 3

    assert defaults_of(Bad) == ["b"]


def test_params_yaml_loads_whole_and_a_missing_key_fails(tmp_path):
    import yaml

    p = params.load(REPO / "params.yaml")
    assert p.align.size >= 32 and isinstance(p.train_swap.augment, AugmentConfig)
    raw = load_params(REPO / "params.yaml")
    del raw["filter"]["blur_min"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"filter: missing key 'blur_min'"):
        params.load(tmp_path / "p.yaml")


def test_loop_config_is_the_train_section():
    """The loop settings come from `train` (and the stage's steps / batch size), nowhere else."""
    p = params.load(REPO / "params.yaml")
    loop = p.train.loop(steps=7, batch_size=3)
    for f in dataclasses.fields(LoopConfig):
        if f.name not in ("steps", "batch_size"):
            assert getattr(loop, f.name) == getattr(p.train, f.name), f.name
