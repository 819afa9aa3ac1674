"""Safe loading and atomic saving of weight files shared by every auxiliary-network loader.

Only two formats are read: safetensors (``.safetensors``) and PyTorch pickles loaded with
``torch.load(..., weights_only=True)`` (no arbitrary code runs). Every failure is raised as
:class:`WeightsError` whose message names the file and the problem.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["WeightsError", "read_state_dict", "load_state_dict_file", "save_safetensors_atomic"]

# Wrappers that training scripts commonly put around the real state dict / its keys.
_NESTED_KEYS = ("state_dict", "model", "backbone")
_KEY_PREFIXES = ("module.", "_orig_mod.")


class WeightsError(ValueError):
    """A weight file is missing, unreadable, or does not match the module it is loaded into."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from a safetensors or ``torch.save`` file (CPU).

    Unwraps ``{"state_dict": ...}``/``{"model": ...}`` containers and strips ``module.`` /
    ``_orig_mod.`` key prefixes left by DDP / ``torch.compile``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / truncated / not a weights file / unsafe pickle
        raise WeightsError(
            f"weights file {path} could not be read ({type(e).__name__}: {e}); "
            "it may be truncated, corrupt, or not a state_dict"
        ) from e

    for key in _NESTED_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state_dict of tensors "
                           f"(got {type(obj).__name__})")

    state: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        for prefix in _KEY_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    return state


def load_state_dict_file(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    ignore_prefixes: Iterable[str] = (),
) -> nn.Module:
    """Load the weights in ``path`` into ``module`` strictly; return ``module``.

    Args:
        module: target module; every one of its parameters/buffers must be in the file.
        path: ``.safetensors`` or ``torch.save`` file of a state_dict.
        ignore_prefixes: file keys starting with one of these are dropped before matching
            (e.g. ``("classifier.",)`` to load only VGG's conv trunk).

    Raises:
        WeightsError: unreadable file, missing/unexpected keys, or shape mismatches.
    """
    path = Path(path)
    ignore = tuple(ignore_prefixes)
    state = {k: v for k, v in read_state_dict(path).items() if not (ignore and k.startswith(ignore))}
    expected = module.state_dict()

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:3]})")
    if problems:
        raise WeightsError(
            f"weights file {path} does not fit {type(module).__name__}: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=True)
    return module


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
