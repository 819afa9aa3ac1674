"""train_shape: the facial shape discriminator Dshape (Gres + warp) against Dres (FlowFace++ III-B).

Pairs (I1, I2) of training faces; P12 = I1's 3DMM shape with I2's expression, pose and camera
(eq. 16, built by the data loader), P2 / S2 = I2's contour and parsing. Gres warps I2 towards P12:
adv (Dres hinge) + rec (I2_res vs I2) + ldmk (contour of the regressed 3DMM of I2_res vs P12; the
regressor comes from train_aux). ShapeConfig.num_landmarks = K of the 3DMM model file.

Outputs (`--out-dir`, default models/shape/): `dshape.safetensors` (EMA weights) + `dshape.json`
(ShapeConfig + provenance, faceswap.artifacts format); train_swap loads it frozen for the flow loss.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from faceswap import artifacts, params
from faceswap.core.cli import parser
from faceswap.core.io import sha256_file
from faceswap.data.records import PairDataset, alignment
from faceswap.training.config import ShapeStageConfig, TrainConfig
from faceswap.training.contour import ContourProjector
from faceswap.training.ray_runner import WorkerContext
from faceswap.training.runs import (
    DataPaths, add_data_args, averaged, data_paths, loop_summary, run_key, run_stage, train_validated,
)
from faceswap.training.steps import ShapeAux, ShapeTask
from faceswap.training.validation import ShapeValidator
from faceswap_models.discriminator import Dres
from faceswap_models.shape import ShapeDiscriminator

STAGE = "train_shape"


def build_task(cfg: ShapeStageConfig, contour: ContourProjector, aux_dir: str | Path, crop_size: int,
               seed: int) -> ShapeTask:
    """Dshape + Dres + the frozen regressor; `crop_size`: the aligned crops' side (the regressor's must match)."""
    regressor = artifacts.load_aux_regressor(aux_dir, crop_size)
    torch.manual_seed(seed)  # identical initial weights on every rank
    dshape = ShapeDiscriminator(cfg.shape_config(contour.num_points))
    return ShapeTask(dshape, Dres(cfg.disc_config()), ShapeAux(regressor, contour, crop_size), cfg.weights,
                     lr=cfg.lr, betas=cfg.betas)


def worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    cfg: ShapeStageConfig = spec["cfg"]
    tcfg: TrainConfig = spec["train"]
    data: DataPaths = spec["data"]
    dataset = PairDataset(data.records("train"), cfg.image_size, same_identity_ratio=cfg.same_identity_ratio,
                          seed=tcfg.seed, augment=cfg.augment, threedmm_model=data.threedmm_model)
    task = build_task(cfg, ContourProjector.load(data.threedmm_model), spec["aux_dir"], alignment(data.aligned)[0],
                      tcfg.seed)
    result = train_validated(spec, ctx, task, dataset, STAGE, cfg.val_every,  # Dshape's val landmark curve
                             lambda: ShapeValidator.from_records(data.records("val"), cfg.image_size,
                                                                 data.threedmm_model, task.aux, pairs=cfg.val_pairs))
    if ctx.rank != 0:
        return None
    net = averaged(task.modules["dshape"], result, "dshape").cpu()
    artifacts.save_network(spec["out_dir"], artifacts.DSHAPE, net, net.cfg, {"stage": STAGE, "steps": result.steps})
    return loop_summary(result)


def run(data: DataPaths, aux_dir: str | Path, out_dir: str | Path, params_path: str | Path = "params.yaml", *,
        metrics: str | None = None, plots: str | None = None, checkpoint_root: str | None = None) -> dict:
    _, tcfg, cfg = params.training(params_path, STAGE, checkpoint_root)
    aux_dir = str(Path(aux_dir).resolve())
    key = run_key(cfg, tcfg, data, aux=sha256_file(artifacts.weights_file(aux_dir, artifacts.REGRESSOR)))
    return run_stage(STAGE, entry=worker,
                     spec={"cfg": cfg, "data": data, "key": key, "aux_dir": aux_dir}, train_cfg=tcfg, key=key,
                     out_dir=out_dir, metrics_path=metrics, plots_path=plots)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--aux-dir", default="models/aux", help="train_aux output (regressor)")
    p.add_argument("--out-dir", default="models/shape")
    p.add_argument("--plots", default=None, help="per-step CSV for dvc plots")
    a = p.parse_args(argv)
    m = run(data_paths(a), a.aux_dir, a.out_dir, a.params, metrics=a.metrics, plots=a.plots,
            checkpoint_root=a.checkpoint_root)
    print(f"{STAGE}: {m['steps']} steps (resumed from {m['resumed_from']}), {m['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `worker` by reference
    from stages import train_shape

    sys.exit(train_shape.main())
