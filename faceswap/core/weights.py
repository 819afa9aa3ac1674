"""Safe reading of pretrained weight files, shared by every pretrained backend.

Only two formats are read: safetensors (``.safetensors``) and PyTorch files loaded with
``torch.load(..., map_location="cpu", weights_only=True)``, so no code in a file ever runs.
Weights always come from a local path; nothing is downloaded. Every failure is a
:class:`WeightsError` whose message names the file and the problem.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["WeightsError", "read_state_dict", "load_into", "load_state_dict_file", "save_safetensors_atomic"]

# Containers that training scripts commonly wrap the real state dict in.
_NESTED_KEYS = ("state_dict", "model", "backbone")
# Key prefix left by nn.DataParallel / DistributedDataParallel.
_DP_PREFIX = "module."
# How many offending keys an error message lists.
_SHOW = 5


class WeightsError(ValueError):
    """A weight file is missing, unreadable, unsafe, or does not fit the module it is loaded into."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict (CPU tensors) from ``path``.

    ``.safetensors`` files go through ``safetensors.torch.load_file``; anything else through
    ``torch.load(weights_only=True)``. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper
    is unwrapped and a leading ``module.`` (DataParallel) prefix is stripped from every key.

    Raises:
        WeightsError: missing, empty, truncated or corrupt file; a pickle that would need
            code execution; content that is not a dict of tensors.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path}: does not exist")
    if not path.is_file():
        raise WeightsError(f"weights file {path}: is not a regular file")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path}: is empty (0 bytes)")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupt / not a weights file / unsafe pickle
        detail = _detail(e)
        if "GLOBAL" in detail:  # weights_only refused to import/call something
            raise WeightsError(
                f"weights file {path}: refused, loading it would execute code ({detail}); "
                "only plain tensors are allowed"
            ) from e
        raise WeightsError(
            f"weights file {path}: could not be read, it may be truncated, corrupt or not a "
            f"weights file ({type(e).__name__}: {detail})"
        ) from e

    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file {path}: holds a {type(obj).__name__}, not a state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"weights file {path}: not a state dict of tensors ({len(bad)} non-tensor entries, "
            f"e.g. {bad[:_SHOW]})"
        )
    if not obj:
        raise WeightsError(f"weights file {path}: holds an empty state dict")

    state: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        for prefix in (_DP_PREFIX, "_orig_mod."):  # DataParallel / torch.compile wrappers
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state


def load_into(module: nn.Module, path: str | os.PathLike, strict: bool = True,
              ignore_prefixes: tuple[str, ...] = ()) -> nn.Module:
    """Load the weights in ``path`` into ``module`` (in place) and return ``module``.

    Shape mismatches are always an error. With ``strict`` (the default), keys the module has
    but the file lacks, and keys the file has but the module lacks, are errors too. A missing
    BatchNorm ``num_batches_tracked`` counter (absent from checkpoints of old PyTorch versions)
    is never an error; it is left as is. File keys starting with one of ``ignore_prefixes``
    are dropped first (e.g. ``("classifier.",)`` to load only VGG's conv trunk).

    Raises:
        WeightsError: naming the file and listing a few of the offending keys and shapes.
    """
    path = Path(path)
    state = {k: v for k, v in read_state_dict(path).items() if not (ignore_prefixes and k.startswith(ignore_prefixes))}
    expected = module.state_dict()

    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs module {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems: list[str] = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches, e.g. {wrong_shape[:_SHOW]}")
    if strict and missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:_SHOW]}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:_SHOW]}")
    if problems:
        raise WeightsError(
            f"weights file {path}: does not fit {type(module).__name__}: " + "; ".join(problems)
        )
    usable = {k: v for k, v in state.items() if k in expected}
    try:
        module.load_state_dict(usable, strict=False)
    except Exception as e:  # e.g. dtype that cannot be copied
        raise WeightsError(f"weights file {path}: could not be loaded into "
                           f"{type(module).__name__} ({type(e).__name__}: {_detail(e)})") from e
    return module


def _detail(e: BaseException) -> str:
    """The informative part of a load error (torch's weights_only errors bury it in boilerplate)."""
    keep = []
    for line in str(e).splitlines():
        line = line.strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        if not line or line.startswith(("Weights only load failed", "Check the documentation")):
            continue
        keep.append(line)
    return " ".join(keep)[:300] or type(e).__name__

def load_state_dict_file(module: nn.Module, path: str | os.PathLike, *,
                         ignore_prefixes: Iterable[str] = ()) -> nn.Module:
    """Strictly load ``path`` into ``module`` (load_into); returns ``module``."""
    return load_into(module, path, strict=True, ignore_prefixes=tuple(ignore_prefixes))


def save_safetensors_atomic(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` to ``path`` as safetensors via a temp file in the same folder + rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp,
                  metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
