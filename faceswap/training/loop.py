"""The per-worker training loop shared by pretrain_mae, train_shape and train_swap.

`train(task, dataset, cfg, ckpt_dir=...)` runs steps [start, cfg.steps) where `start` is the step of
the latest checkpoint in `ckpt_dir` (0 when none), so re-running after a crash or kill -9 resumes.
Each step: `grad_accum` micro-batches from the endless, deterministic loader (resumed exactly with
`skip_batches`); for each of the task's phases: zero grads, forward under autocast, backward into
that phase's parameters only (DDP `no_sync` except on the last micro-batch), an all-reduced
finiteness check, optimizer step (GradScaler for fp16); EMA update; JSONL metrics; checkpoint every
`checkpoint_every` steps (rank 0 writes, all ranks wait); sample grid every `sample_every` steps.

Exactness: the torch, numpy and Python RNGs are re-seeded from (seed, rank, step) at every step and the
data stream is a pure function of (seed, epoch, index), so K steps + resume + K steps == 2K straight
steps, on every rank, also when Ray restarts the worker group after a worker died (the checkpoint holds
rank 0's RNG states only; per-step seeding makes every rank's independent of what came before).
The loader's worker processes are shut down before `train` returns or raises (`close_loader_iterator`).
Distributed: when torch.distributed is initialised (Ray's TorchTrainer does it) modules are wrapped
in DDP; otherwise it is a plain single-process loop. Only rank 0 logs, samples and checkpoints.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from faceswap.core.io import atomic_path
from faceswap.data.records import close_loader_iterator, make_loader
from faceswap.training.checkpoint import (
    EMA, latest_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint, unwrap,
)
from faceswap.training.config import LoopConfig, Precision
from faceswap.training.steps import TrainTask, sample_grid

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best_val.pt"  # {"step", "key", "state_dict"}: the validated snapshot with the largest `select` key


class NonFiniteLossError(RuntimeError):
    """More than `max_nonfinite` steps had a non-finite loss."""


@dataclass
class LoopResult:
    start_step: int  # 0, or the checkpoint step the run resumed from
    steps: int  # final step
    nonfinite: int
    seconds: float
    samples_per_s: float  # over the steps run in this call, all workers
    last: dict[str, float]  # last logged losses
    ema: dict[str, EMA] = field(default_factory=dict)  # averaged weights of task.ema modules
    best: dict[str, Any] | None = None  # with `select`: {"step", "key", "path"} of the best val snapshot


class MetricsSink:
    """Where rank 0 sends metrics and sample images (MLflow in tracking.py; this one drops them)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_image(self, image: Any, name: str) -> None:
        pass


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of one step on one rank (a pure function, so resume is exact)."""
    return (int(seed) * 1_000_003 + int(rank) * 7_919 + int(step) * 104_729) % (2**63 - 1)


def seed_rngs(seed: int, rank: int, step: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global RNGs for one step on one rank, so whatever a
    step draws depends on (seed, rank, step) only, not on what ran before in the process."""
    s = step_seed(seed, rank, step)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_finite(flag: bool, device: torch.device, world_size: int) -> bool:
    if world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def _trim_jsonl(path: Path, max_step: int) -> None:
    """Drop metric lines past `max_step` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text("utf-8").splitlines() if ln.strip() and json.loads(ln)["step"] <= max_step]
    path.write_text("".join(ln + "\n" for ln in keep), "utf-8")


def train(task: TrainTask, dataset: torch.utils.data.Dataset, cfg: LoopConfig, *, ckpt_dir: str | os.PathLike,
          device: torch.device | str = "cpu", config: Mapping[str, Any] | None = None,
          sink: MetricsSink | None = None, progress: bool = True, desc: str = "train",
          stop_after: int | None = None, on_checkpoint: Callable[[int], None] | None = None,
          validate: Callable[[nn.Module], Mapping[str, float]] | None = None, val_every: int = 0,
          select: Callable[[Mapping[str, float]], tuple[float, ...]] | None = None) -> LoopResult:
    """Train `task` on `dataset` up to `cfg.steps`, resuming from the latest checkpoint in `ckpt_dir`.

    Args:
        config: the resolved config stored in every checkpoint (JSON-able).
        sink: rank-0 metrics / image sink (None: JSONL file only).
        stop_after: stop (without error) once this step is reached, e.g. to test resume.
        on_checkpoint: called with the step after each checkpoint is written (rank 0).
        validate: rank 0, every `val_every` steps and at the end: called with a copy of the task's
            `validate_module` holding its EMA weights (what would be exported); the metrics it returns
            ('val/...') go to the JSONL and the sink at that step.
        select: ranks validations (a key per call, larger is better; e.g. validation.GateSelector): the
            validated module's state dict with the largest key so far is kept in `ckpt_dir/best_val.pt`
            (a tie keeps the earlier one); it survives resume. 'val/best_step' logs where it is.
    """
    device = torch.device(device)
    rank, world = _distributed()
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    task.to(device)
    task.train()
    emas = {name: EMA(task.modules[name], decay=cfg.ema_decay) for name in task.ema}
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    start, nonfinite = _resume(task, cfg, ckpt_dir, scaler, emas, desc, rank)
    if world > 1:  # wrap after restoring (state dicts are the unwrapped modules')
        _wrap_ddp(task, device)

    loader = make_loader(dataset, cfg.batch_size, num_workers=cfg.loader_workers, seed=cfg.seed, rank=rank,
                         world_size=world, epochs=None, skip_batches=start * cfg.grad_accum)
    batches = iter(loader)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    samples_per_step = cfg.batch_size * cfg.grad_accum * world
    report = (_Reporter(task, emas, cfg, ckpt_dir, sink or MetricsSink(), desc, start, samples_per_step,
                        validate, val_every, select, progress) if rank == 0 else None)
    t_start = time.perf_counter()
    step = start
    try:
        while step < end:
            micro = [_to(next(batches), device) for _ in range(cfg.grad_accum)]
            seed_rngs(cfg.seed, rank, step)
            logs, skipped = run_step(task, micro, step, cfg, scaler, device, world)
            if skipped:
                nonfinite += 1
                if rank == 0:
                    log.warning("%s: non-finite loss at step %d (%d so far), step skipped", desc, step, nonfinite)
                if nonfinite > cfg.max_nonfinite:
                    raise NonFiniteLossError(f"{desc}: {nonfinite} non-finite steps (max_nonfinite="
                                             f"{cfg.max_nonfinite}); last terms {logs}")
            else:
                for name, ema in emas.items():
                    ema.update(unwrap(task.modules[name]))
            step += 1
            if report is not None:
                report.after_step(step, end, logs, micro, nonfinite)
            if step % cfg.checkpoint_every == 0 or step == end:
                if rank == 0:
                    save_checkpoint(ckpt_dir / f"step_{step:08d}.pt", step=step,
                                    modules={k: unwrap(m) for k, m in task.modules.items()},
                                    optimizers=task.optimizers, scaler=scaler, ema=emas,
                                    config=dict(config or {}), extra={"nonfinite": nonfinite},
                                    keep=cfg.keep_checkpoints)
                    if on_checkpoint is not None:
                        on_checkpoint(step)
                if world > 1:
                    dist.barrier()
    finally:
        if report is not None:
            report.bar.close()
        close_loader_iterator(batches)
    for name, m in list(task.modules.items()):
        task.modules[name] = unwrap(m)
    seconds = time.perf_counter() - t_start
    return LoopResult(start_step=start, steps=step, nonfinite=nonfinite, seconds=seconds,
                      samples_per_s=(step - start) * samples_per_step / max(seconds, 1e-9),
                      last=report.last if report is not None else {}, ema=emas,
                      best=report.best if report is not None else None)


def _resume(task: TrainTask, cfg: LoopConfig, ckpt_dir: Path, scaler: torch.amp.GradScaler,
            emas: dict[str, EMA], desc: str, rank: int) -> tuple[int, int]:
    """Restore the latest checkpoint at most `cfg.steps` into task / optimizers / scaler / EMAs;
    returns (its step, its non-finite count), or (0, 0) with none.

    At most cfg.steps: lowering `steps` below a finished run's (same run key) resumes from an earlier
    checkpoint, or starts again, instead of exporting the longer run; its later checkpoints stay."""
    latest = latest_checkpoint(ckpt_dir, max_step=cfg.steps)
    if rank == 0 and latest != latest_checkpoint(ckpt_dir):
        log.info("%s: checkpoints beyond steps=%d in %s left aside", desc, cfg.steps, ckpt_dir)
    if latest is None:
        return 0, 0
    ckpt = load_checkpoint(latest)
    start = restore_checkpoint(ckpt, task.modules, task.optimizers, scaler, emas)
    if rank == 0:
        log.info("%s: resumed from %s (step %d)", desc, latest, start)
    return start, int((ckpt.get("extra") or {}).get("nonfinite", 0))


def _wrap_ddp(task: TrainTask, device: torch.device) -> None:
    """Wrap every module with trainable parameters in DistributedDataParallel."""
    ids = [device.index] if device.type == "cuda" else None
    for name, m in list(task.modules.items()):
        if any(p.requires_grad for p in m.parameters()):
            task.modules[name] = DDP(m, device_ids=ids, forward_sync_buffers=False)


class _Reporter:
    """Rank 0's work after each step: the progress bar, metrics rows (JSONL + sink) every log_every
    steps, validation of the exported (EMA) module and the best snapshot, sample grids."""

    def __init__(self, task: TrainTask, emas: dict[str, EMA], cfg: LoopConfig, ckpt_dir: Path, sink: MetricsSink,
                 desc: str, start: int, samples_per_step: int,
                 validate: Callable[[nn.Module], Mapping[str, float]] | None, val_every: int,
                 select: Callable[[Mapping[str, float]], tuple[float, ...]] | None, progress: bool) -> None:
        self.task, self.emas, self.cfg, self.ckpt_dir, self.sink, self.desc = task, emas, cfg, ckpt_dir, sink, desc
        self.samples_per_step, self.validate, self.val_every, self.select = samples_per_step, validate, val_every, select
        self.metrics_path = ckpt_dir / METRICS_FILE
        _trim_jsonl(self.metrics_path, start)
        self.best = _load_best(ckpt_dir / BEST_FILE, start) if select is not None else None
        self.bar = tqdm(total=cfg.steps, initial=start, desc=desc, dynamic_ncols=True, mininterval=1.0,
                        disable=not progress or os.environ.get("FACESWAP_NO_PROGRESS") == "1")
        self.t_log, self.steps_since_log = time.perf_counter(), 0
        self.last: dict[str, float] = {}

    def after_step(self, step: int, end: int, logs: Mapping[str, float], micro: list[Any], nonfinite: int) -> None:
        cfg = self.cfg
        self.steps_since_log += 1
        self.bar.update(1)
        row: dict[str, float] = {}
        if step % cfg.log_every == 0 or step == end:
            now = time.perf_counter()
            rate = self.steps_since_log * self.samples_per_step / max(now - self.t_log, 1e-9)
            self.t_log, self.steps_since_log = now, 0
            row = self.last = {**logs, "samples_per_s": rate, "nonfinite": float(nonfinite)}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in self.last.items()
                                  if k != "nonfinite" and "/w_" not in k and "/gn_" not in k}, refresh=False)
        if self.validate is not None and self.val_every > 0 and (step % self.val_every == 0 or step == end):
            vals = self.validated(step)
            self.t_log += vals["val/seconds"]  # validation time is not training time
            row, self.last = {**row, **vals}, {**self.last, **vals}
        if row:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")
            self.sink.log_metrics(row, step)
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == end):
            try:
                self.sink.log_image(sample_grid(self.task.samples(micro[0])).numpy(), f"samples/step_{step:08d}.png")
            except Exception as e:  # samples are diagnostics: never kill training for them
                log.warning("%s: sample grid failed at step %d: %s", self.desc, step, e)

    def validated(self, step: int) -> dict[str, float]:
        """Validate the exported module; with `select`, keep it as the best snapshot when it ranks highest."""
        t_val = time.perf_counter()
        module = _exported(self.task, self.emas)
        vals = {**self.validate(module), "val/seconds": time.perf_counter() - t_val}
        if self.select is not None:
            key = tuple(float(k) for k in self.select(vals))
            if self.best is None or key > tuple(self.best["key"]):
                self.best = _save_best(self.ckpt_dir / BEST_FILE, step, key, module)
            vals["val/best_step"] = float(self.best["step"])
        return vals


def _load_best(path: Path, start: int) -> dict[str, Any] | None:
    """The kept best snapshot's {"step", "key", "path"}, or None (none yet, or written after the
    checkpoint this run resumes from: those steps run again and are validated again)."""
    if not path.is_file():
        return None
    doc = torch.load(path, map_location="cpu", weights_only=True)
    if int(doc["step"]) > start:
        path.unlink()
        return None
    return {"step": int(doc["step"]), "key": [float(k) for k in doc["key"]], "path": str(path)}


def _save_best(path: Path, step: int, key: tuple[float, ...], module: nn.Module) -> dict[str, Any]:
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save({"step": int(step), "key": list(key), "state_dict": module.state_dict()}, tmp)
    return {"step": int(step), "key": list(key), "path": str(path)}


def load_best_state(best: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict kept in a LoopResult.best."""
    return torch.load(best["path"], map_location="cpu", weights_only=True)["state_dict"]


def _exported(task: TrainTask, emas: Mapping[str, EMA]) -> nn.Module:
    """A copy of the task's `validate_module` with the weights training would export (EMA if kept)."""
    name = task.validate_module
    if name is None:
        raise ValueError(f"{type(task).__name__} has no validate_module")
    if name in emas:
        return emas[name].averaged_copy(task.modules[name])
    return copy.deepcopy(unwrap(task.modules[name])).eval()


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def run_step(task: TrainTask, micro: list[Any], step: int, cfg: LoopConfig, scaler: torch.amp.GradScaler,
              device: torch.device, world: int) -> tuple[dict[str, float], bool]:
    """All phases of one step. Returns (mean loss terms '<phase>/<term>', skipped?)."""
    logs: dict[str, float] = {}
    skipped = False
    n = len(micro)
    for phase in task.phases(step):
        t_phase = time.perf_counter()
        opt = task.optimizers[phase.optimizer]
        params = [p for g in opt.param_groups for p in g["params"]]
        module = task.modules[phase.optimizer]
        opt.zero_grad(set_to_none=True)
        finite = True
        sums: dict[str, float] = {}
        for i, mb in enumerate(micro):
            sync = i == n - 1 or not isinstance(module, DDP)
            with (contextlib.nullcontext() if sync else module.no_sync()):
                with autocast(device, cfg.precision):
                    terms = phase.loss(mb)
                total = terms["total"].float()
                scaler.scale(total / n).backward(inputs=params)
            vals = {k: float(v.detach()) for k, v in terms.items()}
            finite &= all(math.isfinite(v) for v in vals.values())
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v / n
        logs.update({f"{phase.name}/{k}": v for k, v in sums.items()})
        if _all_finite(finite, device, world):
            scaler.step(opt)
        else:
            opt.zero_grad(set_to_none=True)
            skipped = True
        logs[f"time/{phase.name}_s"] = time.perf_counter() - t_phase  # where a step's time goes
    scaler.update()
    return logs, skipped


def loop_config_dict(cfg: LoopConfig) -> dict[str, Any]:
    return asdict(cfg)


def module_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)
