"""Evaluation benchmark: the evaluate stage's run() on 1,000 test pairs of the demo data, timed
per component (what is recomputed per pair vs once per test image).

Per pair: generator forward, face detection (mesh) + 3DMM fit and recogniser embedding of the raw
swap and of the blended full-resolution swap (photo detection, alignment, blend). Once per gallery
image (cached within the run): detection + embedding of the test crops and the distractors (and,
when the model's img_size differs from the crop size, of the resized baselines).

The model is `--model` (default models/swap when it exists, else a randomly initialised bundle of
the demo training size from params.yaml). A random model's outputs mostly have no face; mediapipe
stops at its detector then, so the bench also reports the wall time extrapolated to swaps that all
contain a face (mesh + fit time measured on the real test crops).

Usage: python -m bench.evaluate [--pairs 1000] [--model models/swap]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FACESWAP_NO_PROGRESS", "1")

import torch  # noqa: E402

from faceswap import artifacts  # noqa: E402
from faceswap import params as P  # noqa: E402
from faceswap.core.layout import DataLayout  # noqa: E402
from faceswap.core.config import load_params  # noqa: E402
from faceswap.data.records import alignment  # noqa: E402
from faceswap.core.images import read_rgb  # noqa: E402
from faceswap.core.io import atomic_write_text  # noqa: E402
from faceswap.faces.threedmm import LinearFaceModel  # noqa: E402
from faceswap.evaluation.features import FaceAttributes, build_recogniser  # noqa: E402
from faceswap.evaluation.suite import test_set  # noqa: E402
from stages.evaluate import run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Timed:
    """Wraps a callable / an object's method and accumulates seconds and calls."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *a, **k):
        t = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


def demo_bundle(out: Path, params: dict, align: tuple[int, float]) -> Path:
    """A random-weights bundle with the demo train_swap/pretrain_mae sizes of params.yaml."""
    from faceswap.artifacts import save_bundle
    from faceswap_models.config import DecoderConfig, FusionConfig, MAEConfig, SwapConfig
    from faceswap_models.swap import SwapGenerator

    mae_p, sw = params["pretrain_mae"], params["train_swap"]
    size = int(mae_p["image_size"])  # the swap model's size is the MAE's
    mae = MAEConfig(img_size=size, **{k: v for k, v in mae_p["model"].items()})
    dec = DecoderConfig(in_dim=mae.dim, grid_size=mae.grid_size, channels=tuple(sw["decoder"]["channels"]))
    cfg = SwapConfig(mae=mae, fusion=FusionConfig(dim=mae.dim, **sw["fusion"]), decoder=dec)
    torch.manual_seed(0)
    align_size, template_scale = align  # as the crops it will swap were made (data.records.alignment)
    return save_bundle(out, SwapGenerator(cfg), align_size=align_size, template_scale=template_scale,
                       detect=P.load(REPO / "params.yaml").detect,
                       meta={"bench": "random weights"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=str(REPO / "data"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "bench-results" / "evaluate.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    params = load_params(REPO / "params.yaml")
    d = DataLayout(a.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(a.model) if a.model else REPO / "models" / "swap"
        random_model = not artifacts.is_bundle(model)
        if random_model:
            model = demo_bundle(tmp / "swap", params, alignment(d.aligned))
        rows = test_set(d.aligned, d.splits, d.threedmm)
        crops = [read_rgb(d.aligned_dir / r["crop"]) for r in rows]
        cfg = dataclasses.replace(P.load(REPO / "params.yaml").evaluate, pairs=a.pairs)
        rec = build_recogniser(cfg.recogniser, None)
        attr = FaceAttributes(LinearFaceModel.load(d.threedmm_model))
        rec.embed = Timed(rec.embed)
        attr_call = Timed(attr.read)
        # per-face mesh + fit on real faces (what a swap with a face costs)
        for c in crops:
            attr_call(c)
        real_fit_s = attr_call.seconds / len(crops)
        attr_call.seconds, attr_call.calls = 0.0, 0

        class _Attr:  # the stage calls attributes.read(crop) and attributes.close()
            read = staticmethod(attr_call)
            close = staticmethod(attr.close)

        t0 = time.perf_counter()
        m = run(cfg, model, d.aligned, d.aligned_dir, d.splits, d.threedmm,
                d.threedmm_model, tmp / "pairs.parquet", tmp / "grid.png", tmp / "eval.md",
                recogniser=rec, attributes=_Attr())
        wall = time.perf_counter() - t0
        attr.close()
    n_swaps = m["pairs"]
    no_mesh = m["model"]["misses"]
    est = wall - attr_call.seconds + attr_call.calls * real_fit_s
    res = {
        "pairs": n_swaps, "test_images": m["test_images"], "threads": a.threads,
        "model": "random demo-size bundle" if random_model else str(model), "img_size": m["img_size"],
        "wall_s": round(wall, 2), "pairs_per_s": round(n_swaps / wall, 2),
        "recogniser_s": round(rec.embed.seconds, 2),
        "mesh_fit_s": round(attr_call.seconds, 2), "mesh_fit_calls": attr_call.calls,
        "swaps_without_face": no_mesh,
        "mesh_fit_real_face_ms": round(1000 * real_fit_s, 1),
        "wall_s_if_every_swap_has_a_face": round(est, 2),
        "pairs_per_s_if_every_swap_has_a_face": round(n_swaps / est, 2),
    }
    res["other_s (generator, io, metrics)"] = round(wall - res["recogniser_s"] - res["mesh_fit_s"], 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out, json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
