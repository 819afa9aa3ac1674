"""train_faceshifter: FaceShifter's AEI-Net (Li et al. 2019) against a multi-scale discriminator.

AEI-Net = the frozen identity network (ArcFace with user weights; offline default FaceNet) + a
multi-level attributes encoder (U-Net) + the AAD generator; losses adv + att + id + rec
(faceswap/training/faceshifter.py). HEAR-Net is trained after it by train_hearnet (`faceswap train
faceshifter` runs both).

Output (`--out-dir`): a FaceShifter swap-model bundle (faceswap.artifacts; the EMA AEI-Net, HEAR-Net off),
already usable on its own.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

from faceswap import artifacts, params
from faceswap.core.cli import parser
from faceswap.data.records import PairDataset, alignment
from faceswap.training.config import FaceShifterStageConfig, TrainConfig
from faceswap.training.faceshifter import AEITask
from faceswap.training.ray_runner import WorkerContext
from faceswap.training.runs import (
    DataPaths, add_data_args, add_swap_stage_args, data_paths, exported_module, loop_summary, run_swap_stage,
    train_swap_model,
)
from faceswap.training.validation import PartValidator, SwapValidator
from faceswap_models.auxiliary import build_identity_encoder
from faceswap_models.faceshifter.config import FaceShifterConfig, HEARNetConfig
from faceswap_models.faceshifter.generator import FaceShifter
from faceswap_models.faceshifter.networks import MultiScaleDiscriminator

STAGE = "train_faceshifter"


def faceshifter_config(cfg: FaceShifterStageConfig, hear: HEARNetConfig) -> FaceShifterConfig:
    """The model's config: AEI-Net from this stage, HEAR-Net's sizes from train_hearnet (at this size)."""
    return FaceShifterConfig.from_dict({"aei": cfg.aei_config().to_dict(),
                                        "hear": {**hear.to_dict(), "img_size": cfg.image_size},
                                        "identity_encoder": cfg.identity_encoder})


def build_model(cfg: FaceShifterStageConfig, hear: HEARNetConfig, seed: int,
                init_bundle: str | Path | None = None) -> FaceShifter:
    """FaceShifter with the trained identity network, seeded AEI-Net (or the init bundle's)."""
    identity = build_identity_encoder(cfg.identity_encoder, cfg.identity_weights, cfg.aux_cache_dir)
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = FaceShifter(faceshifter_config(cfg, hear), identity)
    if init_bundle is not None:  # fine-tune: start from a previous FaceShifter's AEI-Net
        init = artifacts.load_bundle(init_bundle)
        if init.config.aei != model.cfg.aei:
            raise ValueError(f"init bundle {init_bundle}: its AEI-Net config differs from train_faceshifter's")
        model.aei.load_state_dict(init.generator.aei.state_dict())
    return model


def part_validator(validator: Any, model: FaceShifter) -> PartValidator:
    """The val scorer of this stage's part: a copy of the whole model (identity network and, for HEAR-Net, the
    trained AEI-Net) into which each validated snapshot of the part is put."""
    return PartValidator(validator, copy.deepcopy(model), attach_aei)


def attach_aei(model: FaceShifter, aei: torch.nn.Module) -> None:
    model.aei = aei


def worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    cfg: FaceShifterStageConfig = spec["cfg"]
    tcfg: TrainConfig = spec["train"]
    data: DataPaths = spec["data"]
    dataset = PairDataset(data.records("train"), cfg.image_size, same_identity_ratio=cfg.same_identity_ratio,
                          same="image", seed=tcfg.seed, augment=cfg.augment)
    align_size, template_scale = alignment(data.aligned)
    model = build_model(cfg, spec["hear"], tcfg.seed, spec.get("init_bundle"))
    task = AEITask(model.aei, MultiScaleDiscriminator(cfg.disc), model.identity, cfg.weights, lr=cfg.lr,
                   betas=cfg.betas)
    def validator() -> PartValidator:
        v = SwapValidator.from_records(data.records("val"), data.records("train"), data.threedmm_model,
                                       cfg.image_size, pairs=cfg.val_pairs, seed=tcfg.seed)
        return part_validator(v, model)

    result = train_swap_model(spec, ctx, task, dataset, STAGE, validator)
    if ctx.rank != 0:
        return None
    model.aei, selected = exported_module(task, result, "aei", cfg.export)
    artifacts.save_bundle(spec["out_dir"], model.cpu(), align_size=align_size, template_scale=template_scale,
                          detect=spec["detect"],
                          meta={"stage": STAGE, "steps": result.steps, "selected_step": selected, "export": cfg.export,
                                "image_size": cfg.image_size, "ema": True, "hear": False,
                                "data_fingerprint": spec["key"]["data"]})
    return {**loop_summary(result), "selected_step": selected}


def run(data: DataPaths, *, out_dir: str | Path, params_path: str | Path = "params.yaml", metrics: str | None = None,
        plots: str | None = None, checkpoint_root: str | None = None,
        init_bundle: str | Path | None = None) -> dict:
    """Train AEI-Net; with `init_bundle` (a FaceShifter bundle) start from its AEI-Net."""
    p, tcfg, cfg = params.training(params_path, STAGE, checkpoint_root)
    # HEAR-Net's sizes only shape the (unused, off) HEAR-Net of the bundle: not in the run key
    return run_swap_stage(STAGE, entry=worker, cfg=cfg, train_cfg=tcfg, data=data, register=p.register,
                          out_dir=out_dir, metrics_path=metrics, plots_path=plots, init_bundle=init_bundle,
                          spec={"detect": p.detect, "hear": p.train_hearnet.model})


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    add_swap_stage_args(p, out_dir="models/swap/faceshifter/train_faceshifter", what="AEI-Net (FaceShifter)")
    a = p.parse_args(argv)
    m = run(data_paths(a), out_dir=a.out_dir, params_path=a.params, metrics=a.metrics, plots=a.plots,
            checkpoint_root=a.checkpoint_root, init_bundle=a.init_bundle)
    print(f"{STAGE}: {m['steps']} steps (resumed from {m['resumed_from']}), {m['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `worker` by reference
    from stages import train_faceshifter

    sys.exit(train_faceshifter.main())
