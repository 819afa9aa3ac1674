"""faceswap.faces.bisenet: checkpoint layout, loading through weights.load_into, 19->7 label mapping."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from faceswap.faces.bisenet import (CELEBAMASK19, CELEBAMASK19_TO_LABELS, LABELS, BiSeNet,
                                     BiSeNetParser)
from faceswap.core.weights import WeightsError


@pytest.fixture(scope="module")
def bisenet_pth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 19-class BiSeNet state dict from a seeded random init (stand-in for 79999_iter.pth)."""
    torch.manual_seed(0)
    net = BiSeNet(n_classes=19)
    p = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(net.state_dict(), p)
    return p


def test_state_dict_layout_matches_face_parsing_checkpoint() -> None:
    sd = BiSeNet(19).state_dict()
    for key, shape in {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.bn1.running_mean": (64,),
        "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer2.0.downsample.1.weight": (128,),
        "cp.resnet.layer4.1.bn2.weight": (512,),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm16.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.running_var": (128,),
        "cp.conv_head32.conv.weight": (128, 128, 3, 3),
        "cp.conv_head16.bn.bias": (128,),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3),
        "conv_out.conv.bn.weight": (256,),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv_out.weight": (19, 64, 1, 1),
        "conv_out32.conv.conv.weight": (64, 128, 3, 3),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(("sp.", "cp.resnet.fc")) for k in sd)
    n_params = sum(p.numel() for p in BiSeNet(19).parameters())
    assert 13_000_000 < n_params < 13_500_000, n_params


def test_parser_loads_and_parses(bisenet_pth: Path) -> None:
    parser = BiSeNetParser(bisenet_pth)
    # the loaded weights are the saved ones
    saved = torch.load(bisenet_pth, weights_only=True)
    assert torch.equal(parser.net.state_dict()["conv_out.conv_out.weight"], saved["conv_out.conv_out.weight"])
    crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    out = parser(crops)
    assert out.shape == (2, 64, 64) and out.dtype == np.uint8
    assert out.max() < len(LABELS)


def test_parser_loads_safetensors_without_bn_counters(bisenet_pth: Path, tmp_path: Path) -> None:
    sd = {k: v for k, v in torch.load(bisenet_pth, weights_only=True).items()
          if not k.endswith("num_batches_tracked")}
    p = tmp_path / "bisenet.safetensors"
    save_file(sd, str(p))
    parser = BiSeNetParser(p)
    assert torch.equal(parser.net.state_dict()["cp.resnet.conv1.weight"], sd["cp.resnet.conv1.weight"])


def test_wrong_class_count_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "five_classes.pth"
    torch.save(BiSeNet(n_classes=5).state_dict(), p)
    with pytest.raises(WeightsError) as ei:
        BiSeNetParser(p)
    msg = str(ei.value)
    assert "five_classes.pth" in msg and "conv_out.conv_out.weight" in msg and "(5, 256, 1, 1)" in msg


def test_missing_file_is_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="absent.pth"):
        BiSeNetParser(tmp_path / "absent.pth")


def test_label_mapping_values() -> None:
    assert LABELS == ("background", "skin", "brows", "eyes", "nose", "mouth", "hair")
    lut = CELEBAMASK19_TO_LABELS
    assert lut.dtype == np.uint8 and lut.shape == (19,) and len(CELEBAMASK19) == 19
    expect = {
        "background": "background", "skin": "skin", "l_brow": "brows", "r_brow": "brows",
        "l_eye": "eyes", "r_eye": "eyes", "eye_g": "eyes", "l_ear": "background",
        "r_ear": "background", "ear_r": "background", "nose": "nose", "mouth": "mouth",
        "u_lip": "mouth", "l_lip": "mouth", "neck": "background", "neck_l": "background",
        "cloth": "background", "hair": "hair", "hat": "background",
    }
    for i, name in enumerate(CELEBAMASK19):
        assert LABELS[lut[i]] == expect[name], name


class _FixedLogits(nn.Module):
    """Stub net whose argmax is class (column index * 19 // W) — one band per CelebAMask class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cls = (torch.arange(w) * 19 // w).expand(b, h, w)
        return nn.functional.one_hot(cls, 19).permute(0, 3, 1, 2).float()


def test_parser_maps_classes_and_resizes_back(bisenet_pth: Path) -> None:
    parser = BiSeNetParser(bisenet_pth)
    parser.net = _FixedLogits()
    out = parser(np.zeros((3, 76, 76, 3), np.uint8))  # 76 = 4 px per class band
    assert out.shape == (3, 76, 76)
    centres = np.arange(19) * 4 + 2  # band centres: no ambiguity from nearest resampling
    assert (out[:, :, centres] == CELEBAMASK19_TO_LABELS[None, None, :]).all()
    assert set(np.unique(out)) == set(range(len(LABELS)))


def test_parser_rejects_bad_input(bisenet_pth: Path) -> None:
    parser = BiSeNetParser(bisenet_pth)
    with pytest.raises(ValueError, match="uint8"):
        parser(np.zeros((1, 32, 32, 3), np.float32))
