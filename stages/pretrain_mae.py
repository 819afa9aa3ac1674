"""pretrain_mae: face masked autoencoder (MAE recipe) on the aligned training faces.

Outputs (`--out-dir`, default models/mae/): `mae.safetensors` (FaceMAE state dict, EMA weights) and
`mae.json` (MAEConfig + provenance, faceswap.artifacts format); train_swap loads the encoder from it.
Runs under Ray Train (params `train`) and resumes from `<train.checkpoint_root>/pretrain_mae/...`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from faceswap import artifacts, params
from faceswap.core.cli import parser
from faceswap.data.records import FaceDataset
from faceswap.training.config import MAEStageConfig, TrainConfig
from faceswap.training.ray_runner import WorkerContext
from faceswap.training.runs import (
    DataPaths, add_data_args, averaged, data_paths, loop_summary, run_key, run_stage, train_validated,
)
from faceswap.training.steps import MAETask
from faceswap.training.validation import MAEValidator
from faceswap_models.mae import FaceMAE

STAGE = "pretrain_mae"


def build_task(cfg: MAEStageConfig, seed: int) -> MAETask:
    torch.manual_seed(seed)  # identical initial weights on every rank
    return MAETask(FaceMAE(cfg.mae_config()), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    """Per-worker entry (Ray or in-process): train, then rank 0 writes the weights."""
    cfg: MAEStageConfig = spec["cfg"]
    tcfg: TrainConfig = spec["train"]
    data: DataPaths = spec["data"]
    dataset = FaceDataset(data.records("train"), cfg.image_size, augment=cfg.augment, seed=tcfg.seed)
    task = build_task(cfg, tcfg.seed)
    result = train_validated(spec, ctx, task, dataset, STAGE, cfg.val_every,  # the val reconstruction curve
                             lambda: MAEValidator.from_records(data.records("val"), cfg.image_size))
    if ctx.rank != 0:
        return None
    mae = averaged(task.modules["mae"], result, "mae").cpu()
    artifacts.save_network(spec["out_dir"], artifacts.MAE, mae, mae.cfg, {"stage": STAGE, "steps": result.steps})
    return loop_summary(result)


def run(data: DataPaths, out_dir: str | Path, params_path: str | Path = "params.yaml", *,
        metrics: str | None = None, plots: str | None = None, checkpoint_root: str | None = None) -> dict:
    _, tcfg, cfg = params.training(params_path, STAGE, checkpoint_root)
    key = run_key(cfg, tcfg, data)
    return run_stage(STAGE, entry=worker,
                     spec={"cfg": cfg, "data": data, "key": key}, train_cfg=tcfg, key=key,
                     out_dir=out_dir, metrics_path=metrics, plots_path=plots)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--out-dir", default="models/mae")
    p.add_argument("--plots", default=None, help="per-step CSV for dvc plots")
    a = p.parse_args(argv)
    m = run(data_paths(a), a.out_dir, a.params, metrics=a.metrics, plots=a.plots, checkpoint_root=a.checkpoint_root)
    print(f"{STAGE}: {m['steps']} steps (resumed from {m['resumed_from']}), {m['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `worker` by reference
    from stages import pretrain_mae

    sys.exit(pretrain_mae.main())
