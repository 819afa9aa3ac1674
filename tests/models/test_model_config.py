"""Config dataclasses: paper/tiny, from_dict round trip and unknown-key rejection, registry."""
from __future__ import annotations

import dataclasses

import pytest

from faceswap_models.config import (
    VARIANTS, ConfigError, DecoderConfig, DiscriminatorConfig, FlowFaceConfig, FusionConfig, MAEConfig,
    ShapeConfig, ShapeLossWeights, SwapConfig, SwapLossWeights, get_variant,
)

ALL = [MAEConfig, FusionConfig, DecoderConfig, SwapConfig, DiscriminatorConfig, ShapeConfig,
       SwapLossWeights, ShapeLossWeights, FlowFaceConfig]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_paper_tiny_roundtrip(cls: type) -> None:
    for cfg in (cls.paper(), cls.tiny()):
        assert cls.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, dataclasses.fields(cfg)[0].name, None)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_unknown_key_rejected(cls: type) -> None:
    with pytest.raises(ConfigError, match="unknown key.*'bogus'"):
        cls.from_dict({"bogus": 1})


def test_nested_unknown_key_names_its_path() -> None:
    with pytest.raises(ConfigError, match=r"swap\.mae.*'dpeth'"):
        FlowFaceConfig.from_dict({"swap": {"mae": {"dpeth": 3}}})


def test_partial_dict_keeps_paper_defaults_and_checks_types() -> None:
    cfg = SwapLossWeights.from_dict({"flow": 0})
    assert cfg.flow == 0.0 and cfg.ldmk == 5000.0
    with pytest.raises(ConfigError, match="expected an integer"):
        MAEConfig.from_dict({"depth": "12"})
    assert DecoderConfig.from_dict({"channels": [512, 256, 128, 64, 32]}).channels == (512, 256, 128, 64, 32)


def test_inconsistent_sizes_rejected() -> None:
    with pytest.raises(ConfigError, match="must be equal"):
        SwapConfig(mae=MAEConfig.tiny())
    with pytest.raises(ConfigError):
        MAEConfig(img_size=250)


def test_paper_values() -> None:
    c = FlowFaceConfig.paper()
    assert c.swap.mae.img_size == 256 and c.swap.mae.num_patches == 256 and c.swap.mae.dim == 768
    assert c.swap.fusion.num_blocks == 2 and c.swap.freeze_encoder
    assert c.shape.num_landmarks == 17 and c.shape.num_classes == 7


def test_registry() -> None:
    assert set(VARIANTS) >= {"paper", "tiny"}
    assert get_variant("tiny") == FlowFaceConfig.tiny()
    with pytest.raises(ConfigError, match="known"):
        get_variant("huge")
