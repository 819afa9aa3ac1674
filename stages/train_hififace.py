"""train_hififace: HifiFace (Wang et al. 2021) against a StarGAN-v2-style discriminator with R1.

Generator = the 3D shape-aware identity extractor (the frozen identity network: ArcFace with user weights,
offline default FaceNet; the frozen 3DMM regressor of stage train_aux, `--aux-dir`) + an encoder on the
target, AdaIN ResBlks conditioned on v_sid and Semantic Facial Fusion; losses shape + id + adv + seg + rec +
cycle + perc (faceswap/training/hififace.py). L_shape projects 3DMM points with the pipeline's 3DMM
(`--threedmm-model`); L_seg compares the masks with the target's face parsing (stage segment).

Output (`--out-dir`): a HifiFace swap-model bundle (faceswap.artifacts; the EMA generator, both frozen networks).
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
from faceswap.training.config import HifiFaceStageConfig, TrainConfig
from faceswap.training.contour import ContourProjector
from faceswap.training.facedancer import perceptual_term
from faceswap.training.hififace import HifiFaceTask
from faceswap.training.ray_runner import WorkerContext
from faceswap.training.runs import (
    DataPaths, add_data_args, add_swap_stage_args, attach_net, data_paths, exported_module, load_init_part,
    loop_summary, part_validator_builder, run_swap_stage, train_swap_model,
)
from faceswap_models.auxiliary import build_identity_encoder
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.hififace.config import POSE_DIMS, HifiFaceConfig
from faceswap_models.hififace.generator import HifiFace

STAGE = "train_hififace"


def build_model(cfg: HifiFaceStageConfig, aux_dir: str | Path, crop_size: int, seed: int,
                init_bundle: str | Path | None = None) -> HifiFace:
    """HifiFace with the trained identity network and 3DMM regressor and a seeded generator (or the init
    bundle's). crop_size: the aligned crops' side (the regressor's must match)."""
    identity = build_identity_encoder(cfg.identity_encoder, cfg.identity_weights, cfg.aux_cache_dir)
    regressor = artifacts.load_aux_regressor(aux_dir, crop_size)
    coeff_dim = regressor.cfg.n_shape + regressor.cfg.n_exp + POSE_DIMS
    torch.manual_seed(seed)  # identical initial weights on every rank
    hcfg = HifiFaceConfig(net=cfg.net_config(coeff_dim), identity_encoder=cfg.identity_encoder,
                          regressor=regressor.cfg)
    model = HifiFace(hcfg, identity, regressor)
    if init_bundle is not None:  # fine-tune from a previous HifiFace
        load_init_part(model, init_bundle, STAGE)
    return model


def worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    cfg: HifiFaceStageConfig = spec["cfg"]
    tcfg: TrainConfig = spec["train"]
    data: DataPaths = spec["data"]
    dataset = PairDataset(data.records("train"), cfg.image_size, same_identity_ratio=cfg.same_identity_ratio,
                          same="image", seed=tcfg.seed, augment=cfg.augment)
    align_size, template_scale = alignment(data.aligned)
    model = build_model(cfg, spec["aux_dir"], align_size, tcfg.seed, spec.get("init_bundle"))
    perceptual = perceptual_term(cfg.perceptual, cfg.perceptual_weights, cfg.aux_cache_dir)
    points = ContourProjector.load(data.threedmm_model, cfg.shape_points)
    task = HifiFaceTask(model, PatchDiscriminator(cfg.disc_config()), points, perceptual, cfg.weights,
                        crop_size=align_size, mask_dilation=cfg.mask_dilation, lr=cfg.lr, betas=cfg.betas)

    result = train_swap_model(spec, ctx, task, dataset, STAGE, part_validator_builder(spec, model, attach_net))
    if ctx.rank != 0:
        return None
    model.net, selected = exported_module(task, result, "net", cfg.export)
    artifacts.save_bundle(spec["out_dir"], model.cpu(), align_size=align_size, template_scale=template_scale,
                          detect=spec["detect"],
                          meta={"stage": STAGE, "steps": result.steps, "selected_step": selected, "export": cfg.export,
                                "image_size": cfg.image_size, "ema": True, "data_fingerprint": spec["key"]["data"]})
    return {**loop_summary(result), "selected_step": selected}


def run(data: DataPaths, *, aux_dir: str | Path, out_dir: str | Path, params_path: str | Path = "params.yaml",
        metrics: str | None = None, plots: str | None = None, checkpoint_root: str | None = None,
        init_bundle: str | Path | None = None) -> dict:
    """Train HifiFace with the regressor of `aux_dir`; with `init_bundle` start from its generator."""
    p, tcfg, cfg = params.training(params_path, STAGE, checkpoint_root)
    aux_dir = str(Path(aux_dir).resolve())
    return run_swap_stage(STAGE, entry=worker, cfg=cfg, train_cfg=tcfg, data=data, register=p.register,
                          out_dir=out_dir, metrics_path=metrics, plots_path=plots, init_bundle=init_bundle,
                          inputs={"aux": sha256_file(artifacts.weights_file(aux_dir, artifacts.REGRESSOR))},
                          spec={"detect": p.detect, "aux_dir": aux_dir})


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--aux-dir", default="models/aux", help="train_aux output (the 3DMM regressor)")
    add_swap_stage_args(p, out_dir="models/swap/hififace", what="HifiFace")
    a = p.parse_args(argv)
    m = run(data_paths(a), aux_dir=a.aux_dir, out_dir=a.out_dir, params_path=a.params, metrics=a.metrics,
            plots=a.plots, checkpoint_root=a.checkpoint_root, init_bundle=a.init_bundle)
    print(f"{STAGE}: {m['steps']} steps (resumed from {m['resumed_from']}), {m['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `worker` by reference
    from stages import train_hififace

    sys.exit(train_hififace.main())
