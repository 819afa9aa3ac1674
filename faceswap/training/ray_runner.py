"""Run a training stage's worker function under Ray Train (TorchTrainer, DDP) or in-process.

`run_workers(entry, spec, train_cfg, name=...)` calls `entry(spec, WorkerContext)` on every worker:
  * `train.use_ray: true` (default): `ray.init` (local: small object store, no dashboard, quiet
    logs; or `train.ray_address` for an existing cluster started with `ray start --head`), then
    `TorchTrainer(ScalingConfig(num_workers, use_gpu, CPU=threads_per_worker),
    RunConfig(storage_path=<checkpoint_root>/ray, failure_config=FailureConfig(max_failures)))`.
    Ray sets up torch.distributed (gloo on CPU, nccl on GPU); the loop wraps modules in DDP.
    When a worker dies, Ray restarts the group (up to max_failures) and the loop resumes from
    the last checkpoint in the stage's checkpoint folder (which must be on storage every node
    sees for multi-node runs).
  * `train.use_ray: false`: the same entry once, in this process (rank 0 of 1).
Rank 0 writes `result.json` into the checkpoint folder; the driver returns it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from faceswap.core import ray_env
from faceswap.training.config import TrainConfig

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"

@dataclass(frozen=True)
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    threads: int


# A stage's per-worker function: (spec, context) -> rank 0's result (JSON-able) or None.
WorkerFn = Callable[[dict[str, Any], WorkerContext], "dict[str, Any] | None"]


def worker_main(config: dict[str, Any]) -> None:
    """Ray Train per-worker function: resolve rank/device, then run the stage's entry."""
    import torch.distributed as dist

    threads = int(config["threads"])
    torch.set_num_threads(threads)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if config.get("ray"):
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cuda" if config.get("use_gpu") and torch.cuda.is_available() else "cpu")
    ctx = WorkerContext(rank=rank, world_size=world, device=device, threads=threads)
    result = config["entry"](config["spec"], ctx)
    if rank == 0 and result is not None:
        from faceswap.core.io import atomic_write_text

        atomic_write_text(Path(config["result_path"]), json.dumps(result, indent=2, sort_keys=True, default=float))


def init_ray(cfg: TrainConfig) -> None:
    """Connect to `cfg.ray_address`, or start a small local Ray (no dashboard) if none is running."""
    ray_env.connect(cfg.ray_address, num_cpus=cfg.num_workers * cfg.threads_per_worker,
                    num_gpus=None if cfg.use_gpu else 0, object_store_mb=cfg.object_store_mb)


def run_workers(entry: WorkerFn, spec: dict[str, Any], cfg: TrainConfig, *, name: str,
                result_dir: str | os.PathLike) -> dict[str, Any]:
    """Run `entry` (a module-level function; Ray pickles it by reference) on cfg.num_workers Ray workers (or in-process); return rank 0's result."""
    result_path = Path(result_dir).resolve() / RESULT_FILE
    result_path.unlink(missing_ok=True)
    config = {"entry": entry, "spec": spec, "threads": cfg.threads_per_worker, "use_gpu": cfg.use_gpu,
              "result_path": str(result_path), "ray": cfg.use_ray}
    if not cfg.use_ray:
        worker_main(config)
    else:
        init_ray(cfg)
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        storage = Path(cfg.checkpoint_root).resolve() / "ray"
        storage.mkdir(parents=True, exist_ok=True)
        trainer = TorchTrainer(
            worker_main,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.threads_per_worker}),
            run_config=RunConfig(name=name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures)),
        )
        trainer.fit()
    if not result_path.is_file():
        raise RuntimeError(f"{name}: training finished without a result file {result_path}")
    return json.loads(result_path.read_text("utf-8"))


shutdown_ray = ray_env.shutdown
