"""train_swap: the face swapping network Fswa against Dswa (FlowFace++ III-A), supervised by the
frozen Dshape (flow loss, on from `flow_start_step`).

Fswa = the pretrained MAE encoder (from pretrain_mae, frozen) + CAFM + conv decoder; losses
adv + rec (same-identity pairs) + id (identity encoder, offline default FaceNet) + exp + ldmk
(regressor from train_aux) + perc (the identity encoder's features by default) + flow.

Output (`--out-dir`, default models/swap/): the swap-model bundle (faceswap.artifacts:
generator.safetensors with the EMA weights + generator.json with SwapConfig, align size / template scale).
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
from faceswap.training.config import SwapStageConfig, TrainConfig
from faceswap.training.contour import ContourProjector
from faceswap.training.ray_runner import WorkerContext
from faceswap.training.runs import (
    DataPaths, add_data_args, data_paths, exported_module, gate_selection, loop_summary, run_key, run_stage,
    train_swap_model,
)
from faceswap.training.steps import SwapAux, SwapTask
from faceswap.training.validation import SwapValidator
from faceswap_models.auxiliary import build_identity_encoder, build_perceptual
from faceswap_models.config import MAEConfig, SwapConfig
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.swap import SwapGenerator

STAGE = "train_swap"


def swap_config(cfg: SwapStageConfig, mae: MAEConfig) -> SwapConfig:
    """SwapConfig from the pretrained MAE (its size is the swap model's) and the stage's fusion / decoder params."""
    return SwapConfig.from_dict({
        "mae": mae.to_dict(),
        "fusion": {**cfg.fusion.to_dict(), "dim": mae.dim},
        "decoder": {**cfg.decoder.to_dict(), "in_dim": mae.dim, "grid_size": mae.grid_size},
        "target_face_lowpass": cfg.target_face_lowpass,
        "target_face_spare": cfg.target_face_spare,
        "target_spare_lowpass": cfg.target_spare_lowpass,
    })


def init_mismatch(init_bundle: str | Path, mae_dir: str | Path, cfg: SwapStageConfig) -> str | None:
    """Why `init_bundle` cannot seed this run (its SwapConfig differs from the one train_swap would
    build from `cfg` and the pretrained MAE), or None when it can."""
    want = swap_config(cfg, artifacts.mae_config(mae_dir))
    try:
        have = artifacts.bundle_config(init_bundle)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{init_bundle}: unreadable ({e})"
    if have != want:
        diff = sorted(k for k, v in want.to_dict().items() if have.to_dict().get(k) != v)
        return f"its SwapConfig differs from train_swap's in {diff}"
    return None


def build_task(cfg: SwapStageConfig, *, mae_dir: str | Path, shape_dir: str | Path, aux_dir: str | Path,
               threedmm_model: str | Path, crop_size: int, seed: int, init_bundle: str | Path | None = None,
               stats_every: int = 0) -> SwapTask:
    """Fswa + Dswa + frozen auxiliaries; `crop_size`: the aligned crops' side (the regressor's must match);
    `stats_every` = the loop's log_every for the term balance."""
    scfg = swap_config(cfg, artifacts.mae_config(mae_dir))
    dshape = artifacts.load_dshape(shape_dir)
    if dshape.cfg.img_size != scfg.mae.img_size:
        raise ValueError(f"{shape_dir}: Dshape was trained at {dshape.cfg.img_size} px but the MAE in {mae_dir} (the "
                         f"swap model's size) at {scfg.mae.img_size} px: train_shape.image_size must equal "
                         "pretrain_mae.image_size")
    regressor = artifacts.load_aux_regressor(aux_dir, crop_size)
    identity = build_identity_encoder(cfg.identity_encoder, cfg.identity_weights, cfg.aux_cache_dir)
    perceptual = (cfg.perceptual if cfg.perceptual in ("ssim", "shared")
                  else build_perceptual(cfg.perceptual, cfg.perceptual_weights, cfg.aux_cache_dir))
    aux = SwapAux(identity=identity, perceptual=perceptual, regressor=regressor, dshape=dshape,
                  contour=ContourProjector.load(threedmm_model), crop_size=crop_size,
                  source_cache_size=cfg.source_embedding_cache)
    torch.manual_seed(seed)  # identical initial weights on every rank
    gen = SwapGenerator(scfg)
    gen.load_encoder_state(artifacts.mae_state(mae_dir))
    if init_bundle is not None:  # fine-tune: start from a previous swap model (e.g. the registry champion)
        init = artifacts.load_bundle(init_bundle)
        if init.config != scfg:
            raise ValueError(f"init bundle {init_bundle}: its SwapConfig differs from train_swap's; "
                             "fine-tuning needs the same architecture (or train from scratch)")
        gen.load_state_dict(init.generator.state_dict())
    return SwapTask(gen, PatchDiscriminator(cfg.disc_config(scfg.mae.img_size)), aux, cfg.weights, lr=cfg.lr,
                    betas=cfg.betas, flow_start_step=cfg.flow_start_step, stats_every=stats_every,
                    id_start_step=cfg.id_start_step, skip_start_step=cfg.skip_start_step,
                    pair_schedule=cfg.pair_schedule() if dataset_pairs(cfg) == "identity" else None)


def dataset_pairs(cfg: SwapStageConfig) -> str:
    """PairDataset's `same` for the stage: "identity" when any phase reconstructs from another face of
    the identity (a same_image phase then takes the target as source, SwapTask.pair_schedule), else "image"."""
    return "identity" if "same_identity" in cfg.pair_schedule() else "image"


def worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    cfg: SwapStageConfig = spec["cfg"]
    tcfg: TrainConfig = spec["train"]
    data: DataPaths = spec["data"]
    image_size = artifacts.mae_config(spec["mae_dir"]).img_size  # the swap model's size is the MAE's
    dataset = PairDataset(data.records("train"), image_size, same_identity_ratio=cfg.same_identity_ratio,
                          same=dataset_pairs(cfg),
                          seed=tcfg.seed, augment=cfg.augment)
    align_size, template_scale = alignment(data.aligned)  # how the training crops were made
    task = build_task(cfg, mae_dir=spec["mae_dir"], shape_dir=spec["shape_dir"], aux_dir=spec["aux_dir"],
                      threedmm_model=data.threedmm_model, crop_size=align_size, seed=tcfg.seed,
                      init_bundle=spec.get("init_bundle"), stats_every=tcfg.log_every)
    # the in-training val evaluation; a val split with fewer than 2 identities: said once, no validation
    # export: best_val keeps the snapshot that passes most of the registry's gates on val
    result = train_swap_model(spec, ctx, task, dataset, STAGE,
                              lambda: SwapValidator.from_records(data.records("val"), data.records("train"),
                                                                 data.threedmm_model, image_size,
                                                                 pairs=cfg.val_pairs, seed=tcfg.seed))
    if ctx.rank != 0:
        return None
    gen, selected = exported_module(task, result, "gen", cfg.export)
    artifacts.save_bundle(spec["out_dir"], gen, align_size=align_size, template_scale=template_scale,
                          detect=spec["detect"],
                meta={"stage": STAGE, "steps": result.steps, "selected_step": selected, "export": cfg.export,
                      "image_size": image_size, "ema": True, "data_fingerprint": spec["key"]["data"]})
    return {**loop_summary(result), "selected_step": selected}


def run(data: DataPaths, *, mae_dir: str | Path, shape_dir: str | Path, aux_dir: str | Path, out_dir: str | Path,
        params_path: str | Path = "params.yaml", metrics: str | None = None, plots: str | None = None,
        checkpoint_root: str | None = None, init_bundle: str | Path | None = None) -> dict:
    """Train Fswa; with `init_bundle` (a swap-model bundle dir) start from its generator weights."""
    p, tcfg, cfg = params.training(params_path, STAGE, checkpoint_root)  # read once: training and the registry's gates
    dirs = {"mae_dir": str(Path(mae_dir).resolve()), "shape_dir": str(Path(shape_dir).resolve()),
            "aux_dir": str(Path(aux_dir).resolve())}
    # export: best_val ranks val snapshots by the registry's gates (a params file without them: by ID top-1);
    # they name the run too, so a finished run is not resumed with a snapshot chosen under other gates
    select = gate_selection(p.register)
    key = run_key(cfg, tcfg, data, mae=sha256_file(artifacts.weights_file(mae_dir, artifacts.MAE)),
                  shape=sha256_file(artifacts.weights_file(shape_dir, artifacts.DSHAPE)),
                  aux=sha256_file(artifacts.weights_file(aux_dir, artifacts.REGRESSOR)),
                  **({"init": sha256_file(artifacts.weights_file(init_bundle, artifacts.GENERATOR))}
                     if init_bundle else {}),
                  **({"select": select} if cfg.export == "best_val" else {}))
    if init_bundle is not None:
        why = init_mismatch(init_bundle, mae_dir, cfg)
        if why:  # fail here, before any worker starts
            raise ValueError(f"init bundle {init_bundle}: {why}; fine-tuning needs the same architecture "
                             "(or train from scratch)")
        dirs["init_bundle"] = str(Path(init_bundle).resolve())
    return run_stage(STAGE, entry=worker,
                     spec={"cfg": cfg, "data": data, "key": key, "select": select, "detect": p.detect, **dirs},
                     train_cfg=tcfg, key=key,
                     out_dir=out_dir, metrics_path=metrics, plots_path=plots)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--mae-dir", default="models/mae", help="pretrain_mae output")
    p.add_argument("--shape-dir", default="models/shape", help="train_shape output")
    p.add_argument("--aux-dir", default="models/aux", help="train_aux output (regressor)")
    p.add_argument("--out-dir", default="models/swap", help="swap-model bundle folder")
    p.add_argument("--plots", default=None, help="per-step CSV for dvc plots")
    p.add_argument("--init-bundle", default=None, help="fine-tune from this swap-model bundle dir")
    a = p.parse_args(argv)
    m = run(data_paths(a), mae_dir=a.mae_dir, shape_dir=a.shape_dir, aux_dir=a.aux_dir, out_dir=a.out_dir,
            params_path=a.params, metrics=a.metrics, plots=a.plots, checkpoint_root=a.checkpoint_root,
            init_bundle=a.init_bundle)
    print(f"{STAGE}: {m['steps']} steps (resumed from {m['resumed_from']}), {m['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `worker` by reference
    from stages import train_swap

    sys.exit(train_swap.main())
