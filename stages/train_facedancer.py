"""train_facedancer: FaceDancer (Rosberg et al. 2023) against a StarGAN-v2-style discriminator with R1.

Generator = the frozen identity network (ArcFace with user weights; offline default FaceNet) + a U-Net on
the target with AdaIN ResBlks conditioned on the identity and AFFA on the skips; losses adv + id + rec +
perc + cycle + IFSR (faceswap/training/facedancer.py), IFSR's margins from stage ifsr_margins
(`--input-bundle`: its output folder; `faceswap train facedancer` runs both).

Output (`--out-dir`): a FaceDancer swap-model bundle (faceswap.artifacts; the EMA generator) and a copy of
the margins it was trained with (ifsr_margins.json).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from faceswap import artifacts, params
from faceswap.core.cli import parser
from faceswap.core.io import atomic_write_text
from faceswap.data.records import PairDataset, alignment
from faceswap.training.config import FaceDancerStageConfig, TrainConfig
from faceswap.training.facedancer import MARGINS_FILE, FaceDancerTask, load_margins, perceptual_term
from faceswap.training.ray_runner import WorkerContext
from faceswap.training.runs import (
    DataPaths, add_data_args, add_swap_stage_args, attach_net, data_paths, exported_module, load_init_part,
    loop_summary, part_validator_builder, run_swap_stage, train_swap_model,
)
from faceswap_models.auxiliary import build_identity_encoder
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.facedancer.config import FaceDancerConfig
from faceswap_models.facedancer.generator import FaceDancer

STAGE = "train_facedancer"


def build_model(cfg: FaceDancerStageConfig, seed: int, init_bundle: str | Path | None = None) -> FaceDancer:
    """FaceDancer with the trained identity network and a seeded generator (or the init bundle's)."""
    identity = build_identity_encoder(cfg.identity_encoder, cfg.identity_weights, cfg.aux_cache_dir)
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = FaceDancer(FaceDancerConfig(net=cfg.net_config(), identity_encoder=cfg.identity_encoder), identity)
    if init_bundle is not None:  # fine-tune from a previous FaceDancer
        load_init_part(model, init_bundle, STAGE)
    return model


def worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    cfg: FaceDancerStageConfig = spec["cfg"]
    tcfg: TrainConfig = spec["train"]
    data: DataPaths = spec["data"]
    dataset = PairDataset(data.records("train"), cfg.image_size, same_identity_ratio=cfg.same_identity_ratio,
                          same="image", seed=tcfg.seed, augment=cfg.augment)
    align_size, template_scale = alignment(data.aligned)
    model = build_model(cfg, tcfg.seed, spec.get("init_bundle"))
    perceptual = perceptual_term(cfg.perceptual, cfg.perceptual_weights, cfg.aux_cache_dir)
    margins = spec["margins"]
    task = FaceDancerTask(model.net, PatchDiscriminator(cfg.disc_config()), model.identity, perceptual, cfg.weights,
                          margins["margins"], cfg.ifsr.layers, lr=cfg.lr, betas=cfg.betas)

    result = train_swap_model(spec, ctx, task, dataset, STAGE, part_validator_builder(spec, model, attach_net))
    if ctx.rank != 0:
        return None
    model.net, selected = exported_module(task, result, "net", cfg.export)
    out = artifacts.save_bundle(spec["out_dir"], model.cpu(), align_size=align_size, template_scale=template_scale,
                                detect=spec["detect"],
                                meta={"stage": STAGE, "steps": result.steps, "selected_step": selected,
                                      "export": cfg.export, "image_size": cfg.image_size, "ema": True,
                                      "ifsr_margins": margins["margins"], "data_fingerprint": spec["key"]["data"]})
    atomic_write_text(Path(out) / MARGINS_FILE, json.dumps(margins, indent=2) + "\n")
    return {**loop_summary(result), "selected_step": selected}


def run(data: DataPaths, *, margins_dir: str | Path, out_dir: str | Path, params_path: str | Path = "params.yaml",
        metrics: str | None = None, plots: str | None = None, checkpoint_root: str | None = None,
        init_bundle: str | Path | None = None) -> dict:
    """Train FaceDancer with the IFSR margins of `margins_dir`; with `init_bundle` start from its generator."""
    p, tcfg, cfg = params.training(params_path, STAGE, checkpoint_root)
    margins = load_margins(margins_dir, cfg)
    return run_swap_stage(STAGE, entry=worker, cfg=cfg, train_cfg=tcfg, data=data, register=p.register,
                          out_dir=out_dir, metrics_path=metrics, plots_path=plots, init_bundle=init_bundle,
                          inputs={"margins": margins["margins"]}, spec={"detect": p.detect, "margins": margins})


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--input-bundle", default="models/swap/facedancer/ifsr_margins",
                   help="the folder holding ifsr_margins.json (stage ifsr_margins' output)")
    add_swap_stage_args(p, out_dir="models/swap/facedancer", what="FaceDancer")
    a = p.parse_args(argv)
    m = run(data_paths(a), margins_dir=a.input_bundle, out_dir=a.out_dir, params_path=a.params, metrics=a.metrics,
            plots=a.plots, checkpoint_root=a.checkpoint_root, init_bundle=a.init_bundle)
    print(f"{STAGE}: {m['steps']} steps (resumed from {m['resumed_from']}), {m['samples_per_s']:.1f} samples/s")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `worker` by reference
    from stages import train_facedancer

    sys.exit(train_facedancer.main())
