"""train_hearnet: FaceShifter's HEAR-Net on a frozen AEI-Net (train_faceshifter's bundle).

Input Y_hat_st and the heuristic error Delta_Y_t = X_t - AEI-Net(X_t, X_t); losses L'_id + L'_chg + L'_rec;
synthetic occluders pasted on the training targets (the paper's Figure 13; faceswap/data/occlusion.py).

Output (`--out-dir`): the FaceShifter bundle with HEAR-Net on (identity network + AEI-Net as trained, EMA
HEAR-Net).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

from faceswap import artifacts, params
from faceswap.core.cli import parser
from faceswap.core.io import sha256_file
from faceswap.data.records import PairDataset
from faceswap.training.config import HEARStageConfig, TrainConfig
from faceswap.training.faceshifter import HEARTask
from faceswap.training.ray_runner import WorkerContext
from faceswap.training.runs import (
    DataPaths, add_data_args, add_swap_stage_args, data_paths, exported_module, loop_summary, run_swap_stage,
    train_swap_model,
)
from faceswap.training.validation import PartValidator, SwapValidator
from faceswap_models.faceshifter.config import FaceShifterConfig
from faceswap_models.faceshifter.generator import FaceShifter

STAGE = "train_hearnet"


def build_model(cfg: HEARStageConfig, aei_bundle: str | Path, seed: int,
                init_bundle: str | Path | None = None) -> tuple[FaceShifter, artifacts.SwapBundle]:
    """FaceShifter = the AEI-Net bundle's identity network and AEI-Net + a seeded HEAR-Net of this stage's
    sizes (or the init bundle's HEAR-Net); also returns the loaded AEI-Net bundle."""
    base = artifacts.load_bundle(aei_bundle)
    if base.architecture.name != FaceShifter.architecture:
        raise ValueError(f"{aei_bundle}: a {base.architecture.title} bundle, train_hearnet needs a FaceShifter one")
    mcfg = FaceShifterConfig.from_dict({**base.config.to_dict(), "hear": cfg.hear_config(base.img_size).to_dict()})
    torch.manual_seed(seed)
    model = FaceShifter(mcfg, base.generator.identity)
    model.aei.load_state_dict(base.generator.aei.state_dict())
    if init_bundle is not None:  # fine-tune: start from a previous FaceShifter's HEAR-Net
        init = artifacts.load_bundle(init_bundle)
        if init.config.hear != mcfg.hear:
            raise ValueError(f"init bundle {init_bundle}: its HEAR-Net config differs from train_hearnet's")
        model.hear.load_state_dict(init.generator.hear.state_dict())
    return model, base


def part_validator(validator: Any, model: FaceShifter) -> PartValidator:
    """The val scorer of this stage's part: a copy of the whole model (identity network and, for HEAR-Net, the
    trained AEI-Net) into which each validated snapshot of the part is put."""
    return PartValidator(validator, copy.deepcopy(model), attach_hear)


def attach_hear(model: FaceShifter, hear: torch.nn.Module) -> None:
    model.hear = hear
    model.hear_on.fill_(True)


def worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    cfg: HEARStageConfig = spec["cfg"]
    tcfg: TrainConfig = spec["train"]
    data: DataPaths = spec["data"]
    model, base = build_model(cfg, spec["aei_bundle"], tcfg.seed, spec.get("init_bundle"))
    size = base.img_size
    dataset = PairDataset(data.records("train"), size, same_identity_ratio=cfg.same_identity_ratio, same="image",
                          seed=tcfg.seed, augment=cfg.augment)
    task = HEARTask(model.hear, model.aei, model.identity, cfg.weights, cfg.occlusion, lr=cfg.lr, betas=cfg.betas)
    def validator() -> PartValidator:
        v = SwapValidator.from_records(data.records("val"), data.records("train"), data.threedmm_model, size,
                                       pairs=cfg.val_pairs, seed=tcfg.seed)
        return part_validator(v, model)

    result = train_swap_model(spec, ctx, task, dataset, STAGE, validator)
    if ctx.rank != 0:
        return None
    hear, selected = exported_module(task, result, "hear", cfg.export)
    model = model.cpu()
    attach_hear(model, hear)
    artifacts.save_bundle(spec["out_dir"], model, align_size=base.align_size, template_scale=base.template_scale,
                          detect=base.detect,
                          meta={"stage": STAGE, "steps": result.steps, "selected_step": selected, "export": cfg.export,
                                "image_size": size, "ema": True, "hear": True, "aei": base.meta,
                                "data_fingerprint": spec["key"]["data"]})
    return {**loop_summary(result), "selected_step": selected}


def run(data: DataPaths, *, aei_bundle: str | Path, out_dir: str | Path, params_path: str | Path = "params.yaml",
        metrics: str | None = None, plots: str | None = None, checkpoint_root: str | None = None,
        init_bundle: str | Path | None = None) -> dict:
    """Train HEAR-Net on the AEI-Net of `aei_bundle`; with `init_bundle` start from its HEAR-Net."""
    p, tcfg, cfg = params.training(params_path, STAGE, checkpoint_root)
    return run_swap_stage(STAGE, entry=worker, cfg=cfg, train_cfg=tcfg, data=data, register=p.register,
                          out_dir=out_dir, metrics_path=metrics, plots_path=plots, init_bundle=init_bundle,
                          inputs={"aei": sha256_file(artifacts.weights_file(aei_bundle, artifacts.GENERATOR))},
                          spec={"aei_bundle": str(Path(aei_bundle).resolve())})


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--input-bundle", default="models/swap/faceshifter/train_faceshifter",
                   help="the AEI-Net bundle (train_faceshifter's output)")
    add_swap_stage_args(p, out_dir="models/swap/faceshifter", what="FaceShifter")
    a = p.parse_args(argv)
    m = run(data_paths(a), aei_bundle=a.input_bundle, out_dir=a.out_dir, params_path=a.params, metrics=a.metrics,
            plots=a.plots, checkpoint_root=a.checkpoint_root, init_bundle=a.init_bundle)
    print(f"{STAGE}: {m['steps']} steps (resumed from {m['resumed_from']}), {m['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `worker` by reference
    from stages import train_hearnet

    sys.exit(train_hearnet.main())
