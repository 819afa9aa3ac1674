"""load_state_dict_file: round trips and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from faceswap_models.auxiliary import WeightsError, load_state_dict_file, save_safetensors_atomic


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    src, dst = _tiny(), _tiny()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(src.state_dict(), path)
    else:
        save_safetensors_atomic(src.state_dict(), path)
    assert load_state_dict_file(dst, path) is dst
    _assert_same(src, dst)


def test_ddp_prefix_and_container_unwrapped(tmp_path: Path) -> None:
    src, dst = _tiny(), _tiny()
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    load_state_dict_file(dst, tmp_path / "w.pth")
    _assert_same(src, dst)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict_file(_tiny(), tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match="could not be read") as e:
        load_state_dict_file(_tiny(), path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    state = _tiny().state_dict()
    torch.save(state, path) if suffix == ".pth" else save_safetensors_atomic(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="could not be read") as e:
        load_state_dict_file(_tiny(), path)
    assert str(path) in str(e.value)


def test_wrong_shapes(tmp_path: Path) -> None:
    state = _tiny().state_dict()
    state["0.weight"] = torch.zeros(4, 3, 5, 5)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"shape mismatches.*0\.weight"):
        load_state_dict_file(_tiny(), tmp_path / "w.pth")


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = _tiny().state_dict()
    state.pop("2.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError, match=r"missing keys.*2\.bias.*unexpected keys.*extra\.weight"):
        load_state_dict_file(_tiny(), tmp_path / "w.pth")


def test_pickled_code_refused(tmp_path: Path) -> None:
    torch.save({"net": _tiny()}, tmp_path / "module.pth")  # a pickled module, not a state_dict
    with pytest.raises(WeightsError, match="could not be read"):
        load_state_dict_file(_tiny(), tmp_path / "module.pth")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state dict|state dict"):
        load_state_dict_file(_tiny(), tmp_path / "list.pth")
