"""Training benchmark: Ray overhead, 2-worker scaling, loader headroom, GPU figures (when CUDA is there).

All ratios come from this one run, on the demo data (`data/`) and the demo config (params.yaml):
  * Ray overhead = steady-state steps/s of a 1-worker TorchTrainer ÷ the plain in-process loop,
    same model (pretrain_mae's MAE), data, batch and 1 thread each (start-up reported apart);
  * scaling = samples/s of 2 Ray workers x 1 thread ÷ 1 Ray worker x 1 thread (DDP, gloo);
  * loader = pairs/s the loader delivers ÷ pairs/s the train_swap step consumes (1 thread, demo
    sizes, random weights: same compute), and its fraction of the decode-only ceiling (bench.train_data);
  * GPU: Fswa and Dshape at 256², batch 8, bf16: samples/s, peak memory, days for 640K steps;
  * step profile, from the loader figure's train_swap run: where a step's wall time goes:
    forward time of each part (the generator's top-level blocks, the discriminator, the frozen identity
    encoder, regressor and Dshape) per step, and the rest (backward passes, optimiser, loader, losses).
Steady state: each run trains `--warmup` steps, then resumes from that checkpoint and times the rest.

Usage: python -m bench.train [--steps 20 --warmup 3] [--json bench-results/train.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("FACESWAP_NO_PROGRESS", "1")

import torch  # noqa: E402

from faceswap import params as P  # noqa: E402
from faceswap.core.layout import DataLayout  # noqa: E402
from faceswap.core.config import load_params  # noqa: E402
from faceswap.data.records import FaceDataset  # noqa: E402
from faceswap.training.loop import LoopConfig, train  # noqa: E402
from faceswap.training.ray_runner import WorkerContext, run_workers, shutdown_ray  # noqa: E402
from faceswap.training.runs import DataPaths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def steady_state(task: Any, dataset: Any, cfg: LoopConfig, warmup: int, ckpt_dir: str, device: Any,
                 after_warmup: Callable[[], Any] | None = None) -> Any:
    """Train `warmup` steps, then (after calling `after_warmup`) resume from that checkpoint and return the
    timed LoopResult."""
    train(task, dataset, cfg, ckpt_dir=ckpt_dir, device=device, progress=False, stop_after=warmup)
    if after_warmup is not None:
        after_warmup()
    return train(task, dataset, cfg, ckpt_dir=ckpt_dir, device=device, progress=False)


def mae_worker(spec: dict[str, Any], ctx: WorkerContext) -> dict[str, Any] | None:
    """Ray / in-process entry: the pretrain_mae task at the demo config, steady-state rate."""
    from stages.pretrain_mae import build_task

    cfg = spec["cfg"]
    ds = FaceDataset(spec["data"].records("train"), cfg.image_size, augment=cfg.augment)
    loop = dataclasses.replace(spec["train"].loop(steps=spec["steps"], batch_size=cfg.batch_size),
                               checkpoint_every=spec["warmup"], sample_every=0, log_every=10**9)
    r = steady_state(build_task(cfg, 0), ds, loop, spec["warmup"], spec["ckpt_dir"], ctx.device)
    if ctx.rank != 0:
        return None
    steps = r.steps - r.start_step
    return {"steps_per_s": steps / r.seconds, "samples_per_s": r.samples_per_s, "world_size": ctx.world_size}


def training_params(raw: dict) -> dict[str, Any]:
    """The training sections of a parsed params file, typed: {"train": TrainConfig, "pretrain_mae": ...}."""
    p = P.parse(raw, "params")
    return {k: getattr(p, k) for k in ("train", "pretrain_mae", "train_aux", "train_shape", "train_swap")}


def ray_vs_plain(data: DataPaths, params: dict, steps: int, warmup: int, root: Path) -> dict[str, float]:
    spec = {"cfg": params["pretrain_mae"], "data": data, "steps": steps, "warmup": warmup, "train": params["train"]}
    base = dataclasses.replace(params["train"], threads_per_worker=1, checkpoint_root=str(root))
    out: dict[str, float] = {}
    for name, use_ray, workers in (("plain_1x1", False, 1), ("ray_1x1", True, 1), ("ray_2x1", True, 2)):
        cfg = dataclasses.replace(base, use_ray=use_ray, num_workers=workers)
        d = root / name
        d.mkdir(parents=True)
        t = time.perf_counter()
        r = run_workers(mae_worker, {**spec, "ckpt_dir": str(d)}, cfg, name=f"bench-{name}",
                        result_dir=d)
        out[f"{name}_wall_s"] = time.perf_counter() - t
        out[f"{name}_steps_per_s"] = r["steps_per_s"]
        out[f"{name}_samples_per_s"] = r["samples_per_s"]
    shutdown_ray()
    out["ray_overhead_ratio"] = out["ray_1x1_steps_per_s"] / out["plain_1x1_steps_per_s"]
    out["two_workers_speedup"] = out["ray_2x1_samples_per_s"] / out["ray_1x1_samples_per_s"]
    return out


def swap_task_random(size: int, k: int, n_shape: int, n_exp: int, cfg: Any, threedmm_model: str | Path, mae: Any = None,
                     paper: bool = False) -> Any:
    """A train_swap task with random weights everywhere (same compute as the real one); the contour
    projector reads `threedmm_model` (the data folder's 3DMM)."""
    from faceswap_models.auxiliary import build_identity_encoder
    from faceswap_models.auxiliary.regressor import FaceAttributeRegressor, RegressorConfig
    from faceswap_models.config import MAEConfig, ShapeConfig
    from faceswap_models.shape import ShapeDiscriminator
    from faceswap_models.swap import SwapGenerator
    from faceswap_models.discriminator import PatchDiscriminator
    from faceswap.training.contour import ContourProjector
    from faceswap.training.steps import SwapAux, SwapTask
    from stages.train_swap import swap_config

    mae = MAEConfig.paper() if paper else mae
    rcfg = (RegressorConfig.paper() if paper else RegressorConfig(image_size=size, width=16, hidden=128))
    rcfg = dataclasses.replace(rcfg, n_shape=n_shape, n_exp=n_exp)
    aux = SwapAux(identity=build_identity_encoder(cfg.identity_encoder, cfg.identity_weights, cfg.aux_cache_dir),
                  perceptual=None, regressor=FaceAttributeRegressor(rcfg).eval().requires_grad_(False),
                  dshape=ShapeDiscriminator(ShapeConfig.paper() if paper else ShapeConfig.from_dict(
                      {"img_size": size, "num_landmarks": k, "base_channels": 16, "max_channels": 64, "num_down": 3}))
                  .eval().requires_grad_(False),
                  contour=ContourProjector.load(threedmm_model), crop_size=256)
    gen = SwapGenerator(swap_config(cfg, mae))
    return SwapTask(gen, PatchDiscriminator(cfg.disc_config(mae.img_size)), aux, cfg.weights, lr=cfg.lr, betas=cfg.betas,
                    flow_start_step=0)



class ForwardTimer:
    """Inclusive forward wall time of named modules, from forward pre / post hooks (seconds, calls)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.seconds = dict.fromkeys(modules, 0.0)
        self.calls = dict.fromkeys(modules, 0)
        self._start: dict[str, float] = {}
        self._handles = []
        for name, m in modules.items():
            self._handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: self._begin(n)))
            self._handles.append(m.register_forward_hook(lambda mod, args, out, n=name: self._end(n)))

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)

    def _begin(self, name: str) -> None:
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._start.pop(name)
        self.calls[name] += 1

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def step_profile(result: Any, timer: ForwardTimer) -> dict[str, Any]:
    """Seconds per step of a timed run and each timed part's forward share; "rest" is everything else:
    backward passes, optimiser steps, the loader, the losses."""
    n = max(1, result.steps - result.start_step)
    per_step = result.seconds / n
    forward = {name: sec / n for name, sec in timer.seconds.items() if timer.calls[name]}
    return {"steps": n, "seconds_per_step": per_step, "forward_s_per_step": forward,
            "rest_s_per_step": per_step - sum(forward.values()),
            "calls_per_step": {name: c / n for name, c in timer.calls.items() if c}}


def print_step_profile(prof: dict[str, Any]) -> None:
    total = prof["seconds_per_step"]
    print(f"train_swap step profile (1 thread, {prof['steps']} steps, source-embedding cache cold): {total:.3f} s/step")
    rows = sorted(prof["forward_s_per_step"].items(), key=lambda kv: -kv[1]) + [
        ("rest: backward, optimiser, loader, losses", prof["rest_s_per_step"])]
    width = max(len(k) for k, _ in rows)
    for name, sec in rows:
        calls = prof["calls_per_step"].get(name)
        print(f"  {name:<{width}}  {sec:7.3f} s  {100 * sec / total:5.1f} %" + (f"  ({calls:g} calls)" if calls else ""))


def swap_step_figures(data: DataPaths, params: dict, steps: int, warmup: int, root: Path) -> dict[str, Any]:
    """One steady-state train_swap run (1 thread, demo sizes, random weights: same compute, identity term on),
    its parts' forwards timed: the loader's headroom over what the step consumes ("loader") and where the
    step's time goes ("step_profile")."""
    from bench.train_data import loader_figures
    from faceswap.training.contour import ContourProjector
    from faceswap.data.records import PairDataset

    torch.set_num_threads(1)
    cfg = params["train_swap"]
    records = data.records("train")
    k = ContourProjector.load(data.threedmm_model).num_points
    size = params["pretrain_mae"].image_size  # the swap model's size
    task = swap_task_random(size, k, records.shape.shape[1], records.expression.shape[1], cfg, data.threedmm_model,
                            mae=params["pretrain_mae"].mae_config())
    ds = PairDataset(records, size, same_identity_ratio=cfg.same_identity_ratio, augment=cfg.augment)
    loop = dataclasses.replace(params["train"].loop(steps=steps, batch_size=cfg.batch_size), checkpoint_every=warmup,
                               sample_every=0, log_every=10**9)
    parts = {f"generator.{n}": m for n, m in task.modules["gen"].named_children()}
    parts["discriminator"] = task.modules["disc"]
    parts.update({f"{n} (frozen)": getattr(task.aux, n) for n in ("identity", "regressor", "dshape")
                  if isinstance(getattr(task.aux, n, None), torch.nn.Module)})
    timer = ForwardTimer(parts)
    try:
        r = steady_state(task, ds, loop, warmup, str(root / "swap"), torch.device("cpu"), after_warmup=timer.reset)
    finally:
        timer.close()
    tables = {"aligned_parquet": data.aligned, "aligned_dir": data.aligned_dir, "segments_parquet": data.segments,
              "parsing_dir": data.parsing_dir, "threedmm_parquet": data.threedmm,
              "threedmm_model": data.threedmm_model, "splits_parquet": data.splits}
    return {"loader": loader_figures(tables, size, cfg.batch_size, train_samples_per_s=r.samples_per_s),
            "step_profile": step_profile(r, timer)}


def gpu_figures(params: dict, threedmm_model: str | Path) -> dict[str, Any]:
    """Fswa and Dshape at paper size (256², batch 8, bf16) on the first GPU; empty without CUDA."""
    if not torch.cuda.is_available():
        return {}
    from faceswap_models.config import DiscriminatorConfig, ShapeConfig, ShapeLossWeights
    from faceswap_models.discriminator import Dres
    from faceswap_models.shape import ShapeDiscriminator
    from faceswap.training.loop import run_step
    from faceswap.training.steps import ShapeAux, ShapeTask
    from faceswap_models.auxiliary.regressor import FaceAttributeRegressor, RegressorConfig
    from faceswap.training.contour import ContourProjector

    dev = torch.device("cuda")
    paper = training_params({**load_params(REPO / "params.yaml"), **load_params(REPO / "params-paper.yaml")})
    cfg = paper["train_swap"]
    contour = ContourProjector.load(threedmm_model)
    k, b, s = contour.num_points, 8, 256
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}

    def batch() -> dict[str, Any]:
        def face() -> dict[str, torch.Tensor]:
            return {"image": torch.rand(b, 3, s, s, device=dev) * 2 - 1,
                    "parsing": torch.randint(0, 7, (b, s, s), device=dev),
                    "landmarks68": torch.rand(b, 68, 2, device=dev) * s, "contour": torch.rand(b, k, 2, device=dev) * s,
                    "shape": torch.randn(b, 20, device=dev), "expression": torch.randn(b, 10, device=dev),
                    "pose": torch.randn(b, 3, device=dev) * 10,
                    "camera": torch.tensor([[1.0, 128.0, 128.0]], device=dev).repeat(b, 1)}
        return {"source": face(), "target": face(), "same_identity": torch.rand(b, device=dev) < 0.25,
                "p12": torch.rand(b, k, 2, device=dev) * s}

    swap = swap_task_random(s, k, 20, 10, cfg, threedmm_model, paper=True).to(dev)
    rcfg = RegressorConfig.paper()
    shape = ShapeTask(ShapeDiscriminator(ShapeConfig.from_dict({"num_landmarks": k})), Dres(DiscriminatorConfig()),
                      ShapeAux(FaceAttributeRegressor(rcfg).eval().requires_grad_(False), contour, 256),
                      ShapeLossWeights(), lr=1e-4, betas=(0.0, 0.99)).to(dev)
    loop = dataclasses.replace(paper["train"].loop(steps=1, batch_size=b), precision="bf16")
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for name, task in (("fswa", swap), ("dshape", shape)):
        task.train()
        mb = batch()
        for _ in range(3):
            run_step(task, [mb], 10**6, loop, scaler, dev, 1)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        n, t = 10, time.perf_counter()
        for i in range(n):
            run_step(task, [mb], 10**6, loop, scaler, dev, 1)
        torch.cuda.synchronize()
        sps = n / (time.perf_counter() - t)
        out[f"{name}_samples_per_s"] = sps * b
        out[f"{name}_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        total = 640_000 if name == "fswa" else 250_000
        out[f"{name}_days_1gpu"] = total / sps / 86400
        out[f"{name}_days_8gpu_ideal"] = out[f"{name}_days_1gpu"] / 8
        task.to(torch.device("cpu"))
        torch.cuda.empty_cache()
    return out


@torch.no_grad()
def input_sensitivity(generator: Any, sources: Any, targets: Any, which: str = "source") -> float:
    """mean |G(x') - G(x)| / mean |x' - x| when only the `which` input (source or target) is replaced by
    the next pair's; (P, 3, S, S) inputs. Source: 0 = the output ignores the source (a copy of the
    target), 1 = it follows it pixel for pixel (a paste of the source)."""
    generator.eval()
    base = generator(sources, targets)
    if which == "source":
        other = sources.roll(1, 0)
        moved, changed = generator(other, targets) - base, other - sources
    else:
        other = targets.roll(1, 0)
        moved, changed = generator(sources, other) - base, other - targets
    return float(moved.abs().mean() / changed.abs().mean().clamp_min(1e-8))


def bundle_sensitivity(bundle_dir: str | Path, data: DataPaths, n: int = 32) -> dict[str, float] | None:
    """The trained bundle's sensitivity to its source and to its target on 2n val faces (None: no bundle)."""
    import cv2

    from faceswap.core.images import read_rgb
    from faceswap.artifacts import is_bundle, load_bundle
    from faceswap.evaluation.features import to_tensor

    if not is_bundle(bundle_dir):
        return None
    gen = load_bundle(bundle_dir).generator
    size = gen.cfg.mae.img_size
    paths = data.records("val").crop_paths[: 2 * n]
    x = to_tensor([cv2.resize(read_rgb(p), (size, size), interpolation=cv2.INTER_AREA) for p in paths])
    half = len(x) // 2
    s, t = x[:half], x[half: 2 * half]
    return {"source": input_sensitivity(gen, s, t, "source"), "target": input_sensitivity(gen, s, t, "target")}


def val_curve(steps_csv: str | Path) -> list[dict[str, float]]:
    """The in-training validation rows (val/*) of a train_swap run's steps CSV (metrics/train/flowfacepp/train_swap_steps.csv)."""
    import csv

    path = Path(steps_csv)
    if not path.is_file():
        return []
    keys = ("val/detection_rate", "val/id_top1", "val/id_margin", "val/pose_error_deg", "val/expression_error",
            "val/expression_geometry_error", "val/id_top1_self", "val/expression_error_self",
            "val/expression_geometry_error_self", "val/expression_deviation_error",
            "val/expression_deviation_error_self", "val/best_step")
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("val/detection_rate") not in (None, ""):
                out.append({"step": int(float(row["step"])),
                            **{k: float(row[k]) if row.get(k) not in (None, "") else float("nan") for k in keys}})
    return out


def print_val_curve(rows: list[dict[str, float]], source: str) -> None:
    if not rows:
        print(f"\nno in-training validation rows in {source} (run `make demo` first)")
        return
    print(f"\ntrain_swap validation curve ({source}; EMA weights, 32 val pairs):")
    print(f"{'step':>6}  {'detection':>9}  {'ID top-1':>8}  {'ID margin':>9}  {'pose err':>8}  {'expr 3DMM':>9}  "
          f"{'expr geom':>9}  {'expr dev':>8}  {'G(s,s) top-1':>12}  {'G(s,s) 3DMM':>11}  {'G(s,s) geom':>11}  "
          f"{'G(s,s) dev':>10}  {'best step':>9}")
    for r in rows:
        print(f"{r['step']:>6}  {r['val/detection_rate']:>9.2f}  {r['val/id_top1']:>8.2f}  "
              f"{r['val/id_margin']:>9.3f}  {r['val/pose_error_deg']:>8.1f}  {r['val/expression_error']:>9.2f}  "
              f"{r['val/expression_geometry_error']:>9.2f}  {r['val/expression_deviation_error']:>8.2f}  "
              f"{r['val/id_top1_self']:>12.2f}  {r['val/expression_error_self']:>11.2f}  "
              f"{r['val/expression_geometry_error_self']:>11.2f}  {r['val/expression_deviation_error_self']:>10.2f}  "
              f"{r['val/best_step']:>9.0f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps-csv", default=str(REPO / "metrics" / "train" / "flowfacepp" / "train_swap_steps.csv"),
                   help="the demo run's train_swap steps CSV: its validation curve is printed")
    p.add_argument("--data", default="data")
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=str(REPO / "bench-results" / "train.json"))
    a = p.parse_args(argv)
    d = Path(a.data)
    data = DataPaths.of(DataLayout(d)).resolved()
    params = training_params(load_params(a.params))
    params["train"] = dataclasses.replace(params["train"], mlflow_tracking_uri="")
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        res["ray"] = ray_vs_plain(data, params, a.steps, a.warmup, Path(tmp) / "ray")
        res.update(swap_step_figures(data, params, max(a.warmup + 5, a.steps // 2), a.warmup, Path(tmp)))
    res["gpu"] = gpu_figures(params, data.threedmm_model)
    res["val_curve"] = val_curve(a.steps_csv)
    res["sensitivity"] = bundle_sensitivity(REPO / "models" / "swap", data)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    r, ld = res["ray"], res["loader"]
    rows = [
        ("plain loop, 1 thread (MAE demo)", f"{r['plain_1x1_steps_per_s']:.2f} steps/s", ""),
        ("Ray TorchTrainer, 1 worker x 1 thread", f"{r['ray_1x1_steps_per_s']:.2f} steps/s", ""),
        ("Ray overhead ratio (Ray / plain)", f"{r['ray_overhead_ratio']:.2f}", ">= 0.9"),
        ("Ray wall incl. start-up, 1 worker / plain", f"{r['ray_1x1_wall_s']:.1f} s / {r['plain_1x1_wall_s']:.1f} s", ""),
        ("2 workers x 1 thread / 1 worker (samples/s)", f"{r['two_workers_speedup']:.2f}x", ">= 1.6"),
        ("train_swap step consumes (1 thread)", f"{ld['train_samples_per_s']:.2f} pairs/s", ""),
        ("loader, 0 workers / consumption", f"{ld['loader_over_train_0_workers']:.1f}x", ">= 3"),
        ("loader, 2 workers / consumption", f"{ld['loader_over_train_2_workers']:.1f}x", ">= 3"),
        ("decode-only ceiling", f"{ld['decode_only_pairs_per_s']:.1f} pairs/s", ""),
        ("loader (0 workers) / ceiling", f"{ld['fraction_of_ceiling_0_workers']:.2f}", ""),
    ]
    g = res["gpu"]
    if g:
        for n in ("fswa", "dshape"):
            rows.append((f"GPU {n} 256², batch 8, bf16", f"{g[f'{n}_samples_per_s']:.1f} samples/s, "
                         f"{g[f'{n}_peak_mem_gib']:.1f} GiB", ""))
            rows.append((f"GPU {n} days (1 GPU / 8 GPUs ideal)",
                         f"{g[f'{n}_days_1gpu']:.1f} / {g[f'{n}_days_8gpu_ideal']:.1f}", ""))
    else:
        rows.append(("GPU section", "skipped (no CUDA device)", ""))
    width = max(len(x[0]) for x in rows)
    print("\n".join(f"{k:<{width}}  {v:>28}  {goal}" for k, v, goal in rows))
    print_step_profile(res["step_profile"])
    print_val_curve(res["val_curve"], a.steps_csv)
    if res["sensitivity"]:
        print("trained bundle: output change / input change when only the source changes "
              f"{res['sensitivity']['source']:.3f}, only the target {res['sensitivity']['target']:.3f} "
              "(a swap needs both well above 0)")
    return 0


if __name__ == "__main__":  # run the importable module, so Ray pickles `mae_worker` by reference
    from bench import train as bench_train

    raise SystemExit(bench_train.main())
