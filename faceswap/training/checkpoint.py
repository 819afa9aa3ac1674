"""Checkpoints that resume exactly: modules, optimizers, grad scaler, EMA, step, RNG, config.

Files are written atomically (temp file beside the target, fsync, rename), hold only what
``torch.load(weights_only=True)`` accepts (tensors, dicts, lists, tuples, numbers, strings, None),
and are named ``step_{step:08d}.pt`` in a checkpoint directory that keeps the newest `keep`::

    path = save_checkpoint(ckpt_dir, step=step, modules={"G": g, "D": d},
                           optimizers={"G": opt_g, "D": opt_d}, scaler=scaler, ema={"G": ema},
                           config=cfg_dict)
    if (last := latest_checkpoint(ckpt_dir)) is not None:
        step = restore_checkpoint(load_checkpoint(last), {"G": g, "D": d}, {"G": opt_g, "D": opt_d},
                                  scaler, {"G": ema})
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from faceswap.core.io import atomic_path

__all__ = [
    "EMA", "capture_rng", "restore_rng", "save_checkpoint", "load_checkpoint", "restore_checkpoint",
    "latest_checkpoint", "list_checkpoints", "checkpoint_name", "prune_checkpoints", "unwrap",
]

FORMAT = 1
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
_TEMP = re.compile(r"^\.step_\d{8,}\.pt\..+\.tmp$")  # faceswap.core.io.atomic_path temp names


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


# ----------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of a module's parameters and buffers (float32 shadow).

    ``shadow = d_t * shadow + (1 - d_t) * value`` for every floating-point entry of the
    state_dict after each `update`, with the warm-up ``d_t = min(decay, (1 + t) / (10 + t))`` (t =
    updates so far): without it the initial weights keep a share decay^t of the average (67 % after
    40 steps at 0.99); with it their share after T updates is 1 / C(T + 9, 9) (< 1e-9 at T = 40).
    Integer buffers (e.g. BatchNorm's num_batches_tracked) are copied. The shadow lives on the
    module's device. `copy_to` loads it into a module of the same architecture (e.g. the one used
    for sampling or the exported weights).
    """

    def __init__(self, module: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: (v.detach().float().clone() if v.is_floating_point() else v.detach().clone())
            for k, v in unwrap(module).state_dict().items()
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        state = unwrap(module).state_dict()
        if state.keys() != self.shadow.keys():
            raise KeyError("EMA.update: the module's state_dict keys differ from the shadow's")
        floats = [k for k, v in self.shadow.items() if v.is_floating_point()]
        if floats:
            torch._foreach_lerp_([self.shadow[k] for k in floats],
                                 [state[k].detach().float() for k in floats], 1.0 - self.current_decay)
        for k, v in self.shadow.items():
            if not v.is_floating_point():
                v.copy_(state[k])
        self.num_updates += 1

    @property
    def current_decay(self) -> float:
        """The decay the next `update` applies (warm-up: (1 + t) / (10 + t), capped at `decay`)."""
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            missing, extra = self.shadow.keys() - shadow.keys(), shadow.keys() - self.shadow.keys()
            raise KeyError(f"EMA.load_state_dict: keys differ (missing {sorted(missing)}, unexpected {sorted(extra)})")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into `module` (cast to its dtypes)."""
        target = unwrap(module).state_dict()
        unwrap(module).load_state_dict({k: v.to(target[k].dtype) for k, v in self.shadow.items()})

    def averaged_copy(self, module: nn.Module) -> nn.Module:
        """A copy of (unwrapped) `module` holding the averaged weights, in eval mode; `module` is untouched."""
        import copy

        out = copy.deepcopy(unwrap(module))
        self.copy_to(out)
        return out.eval()


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA when initialised) RNG states as weights_only-safe values."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), int(nps["pos"]),
                         int(nps["has_gauss"]), float(nps["gauss"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- save / load


def _plain(value: Any, where: str) -> Any:
    """Config/extra values -> what weights_only loading accepts (dataclasses, Paths, numpy converted)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (str, bool, int, float, type(None), torch.Tensor)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"save_checkpoint: {where} is a {type(value).__name__}, "
                    "which a weights_only checkpoint cannot hold")


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):08d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the `step_*.pt` files in `directory`, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike, max_step: int | None = None) -> Path | None:
    """The highest-step checkpoint in `directory` (at most `max_step` when given), or None."""
    found = [p for s, p in list_checkpoints(directory) if max_step is None or s <= max_step]
    return found[-1] if found else None


def prune_checkpoints(directory: str | os.PathLike, keep: int, max_step: int | None = None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (among those at most `max_step`: later ones
    belong to a longer run of the same key and are left alone), and temp files of saves that were
    killed (kill -9 skips the temp-file cleanup); returns the deleted paths. Call it only from the
    one process that writes checkpoints, after its save has finished."""
    if keep < 1:
        raise ValueError(f"prune_checkpoints: keep must be >= 1, got {keep}")
    old = [p for s, p in list_checkpoints(directory) if max_step is None or s <= max_step][:-keep]
    old += [p for p in Path(directory).iterdir() if _TEMP.match(p.name) and p.is_file()]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def save_checkpoint(
    path: str | os.PathLike,
    *,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    ema: Mapping[str, EMA],
    config: Mapping[str, Any] | Any,
    extra: Mapping[str, Any] | None = None,
    keep: int | None = 2,
) -> Path:
    """Write everything needed to resume, atomically; returns the file written.

    `path` is a file, or a directory (existing, or without a suffix) in which the file is named
    ``step_{step:08d}.pt``. After writing, older ``step_*.pt`` files beside it are pruned to the
    newest `keep` (None keeps all). Modules are saved unwrapped (no DDP ``module.`` prefix).
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / checkpoint_name(step)
    state = {
        "format": FORMAT,
        "step": int(step),
        "modules": {k: unwrap(m).state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": {k: e.state_dict() for k, e in ema.items()},
        "rng": capture_rng(),
        "config": _plain(config, "config"),
        "extra": _plain(extra or {}, "extra"),
    }
    with atomic_path(path, suffix=".tmp") as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    if keep is not None:
        prune_checkpoints(path.parent, keep, max_step=step)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (no code is unpickled)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "step" not in ckpt or "modules" not in ckpt:
        raise ValueError(f"{path}: not a training checkpoint (no step/modules)")
    if ckpt.get("format", FORMAT) > FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt['format']} is newer than this code ({FORMAT})")
    return ckpt


def restore_checkpoint(
    ckpt: Mapping[str, Any],
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    scaler: torch.amp.GradScaler | None,
    ema: Mapping[str, EMA],
    *,
    rng: bool = True,
) -> int:
    """Load modules, optimizers, scaler, EMA (and RNG unless rng=False) back; returns the step.

    Every name passed must be in the checkpoint (KeyError naming it otherwise); module loading is
    strict.
    """
    for kind, wanted in (("modules", modules), ("optimizers", optimizers), ("ema", ema)):
        missing = sorted(set(wanted) - set(ckpt[kind]))
        if missing:
            raise KeyError(f"restore_checkpoint: no {kind} {missing} in the checkpoint (it has {sorted(ckpt[kind])})")
    for k, m in modules.items():
        unwrap(m).load_state_dict(ckpt["modules"][k])
    for k, o in optimizers.items():
        o.load_state_dict(ckpt["optimizers"][k])
    if scaler is not None:
        if ckpt["scaler"] is None:
            raise KeyError("restore_checkpoint: a grad scaler was given but the checkpoint has none")
        scaler.load_state_dict(ckpt["scaler"])
    for k, e in ema.items():
        e.load_state_dict(ckpt["ema"][k])
    if rng:
        restore_rng(ckpt["rng"])
    return int(ckpt["step"])
