"""faceswap.core.weights: safe state-dict reading and strict loading, every failure a WeightsError."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from faceswap.core.weights import WeightsError, load_into, read_state_dict


def _net(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    # keys: 0.weight/bias (conv), 1.* (BN incl. num_batches_tracked), 4.weight/bias (linear)
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, 2))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def pth(tmp_path: Path) -> Path:
    p = tmp_path / "net.pth"
    torch.save(_net(1).state_dict(), p)
    return p


def test_roundtrip_pth(pth: Path) -> None:
    dst = load_into(_net(2), pth)
    assert _same(dst, _net(1))


def test_roundtrip_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "net.safetensors"
    save_file(_net(1).state_dict(), str(p))
    assert _same(load_into(_net(2), p), _net(1))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_and_dataparallel_prefix(tmp_path: Path, wrapper: str) -> None:
    p = tmp_path / "ckpt.pth"
    sd = {f"module.{k}": v for k, v in _net(1).state_dict().items()}
    torch.save({wrapper: sd, "epoch": 3}, p)
    state = read_state_dict(p)
    assert all(not k.startswith("module.") for k in state)
    assert _same(load_into(_net(2), p), _net(1))


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth.*does not exist"):
        read_state_dict(p)


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.pth"
    p.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.pth.*empty"):
        read_state_dict(p)


@pytest.mark.parametrize("name", ["junk.pth", "junk.safetensors"])
def test_corrupt_bytes(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(os.urandom(64) + b"not a weights file" * 10)
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        read_state_dict(p)


def test_truncated_file(tmp_path: Path, pth: Path) -> None:
    p = tmp_path / "half.pth"
    data = pth.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="half.pth.*truncated"):
        read_state_dict(p)


def test_truncated_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "half.safetensors"
    save_file(_net(1).state_dict(), str(p))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="half.safetensors"):
        read_state_dict(p)


def test_non_dict_content(tmp_path: Path) -> None:
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], p)
    with pytest.raises(WeightsError, match="list.pth.*not a state dict"):
        read_state_dict(p)
    q = tmp_path / "mixed.pth"
    torch.save({"w": torch.zeros(2), "note": "hello"}, q)
    with pytest.raises(WeightsError, match="mixed.pth.*note"):
        read_state_dict(q)


class _Evil:
    """Unpickling this would create a directory (a stand-in for arbitrary code)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_refused(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    payload = {"weight": _Evil(str(marker))}
    if how == "torch.save":
        torch.save(payload, p)
    else:
        p.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(WeightsError, match="evil.pth.*(refused|could not be read)"):
        read_state_dict(p)
    assert not marker.exists()


def test_malicious_pickle_names_the_refusal(tmp_path: Path) -> None:
    p = tmp_path / "evil.pth"
    torch.save({"weight": _Evil(str(tmp_path / "pwned"))}, p)
    with pytest.raises(WeightsError, match=r"evil.pth: refused.*execute code"):
        read_state_dict(p)


def test_wrong_shape(tmp_path: Path) -> None:
    p = tmp_path / "wide.pth"
    torch.save(_net(1, width=8).state_dict(), p)
    with pytest.raises(WeightsError) as ei:
        load_into(_net(2, width=4), p)
    msg = str(ei.value)
    assert "wide.pth" in msg and "shape mismatch" in msg
    assert "0.weight: file (8, 3, 3, 3) vs module (4, 3, 3, 3)" in msg


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    sd = _net(1).state_dict()
    sd.pop("4.weight")
    sd["extra.bias"] = torch.zeros(1)
    p = tmp_path / "partial.pth"
    torch.save(sd, p)
    with pytest.raises(WeightsError) as ei:
        load_into(_net(2), p)
    msg = str(ei.value)
    assert "partial.pth" in msg and "missing keys" in msg and "4.weight" in msg
    assert "unexpected keys" in msg and "extra.bias" in msg
    # non-strict tolerates both, still loads what matches
    dst = load_into(_net(2), p, strict=False)
    assert torch.equal(dst.state_dict()["0.weight"], _net(1).state_dict()["0.weight"])


def test_missing_num_batches_tracked_is_fine(tmp_path: Path) -> None:
    """Checkpoints from old PyTorch versions have no BatchNorm num_batches_tracked."""
    sd = {k: v for k, v in _net(1).state_dict().items() if not k.endswith("num_batches_tracked")}
    p = tmp_path / "old.safetensors"
    save_file(sd, str(p))
    assert torch.equal(load_into(_net(2), p).state_dict()["1.running_var"], sd["1.running_var"])
