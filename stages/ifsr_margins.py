"""ifsr_margins: FaceDancer's IFSR margins, measured on the training data before train_facedancer.

Per regularised block i of the identity network (params train_facedancer.ifsr.layers), the distribution of
cos(I_i(swap), I_i(target)) over `ifsr.pairs` training pairs of different identities, where the swap is
the stand-in of faceswap/training/facedancer.py (the source's inner face blended into the target): the
paper measures it on a pretrained swapper's outputs, which this pipeline does not have before training.

Output (`--out-dir`): ifsr_margins.json {identity_encoder, image_size, layers, margins (= the means), mean,
std, q10, q90, pairs, data_fingerprint} and ifsr_margins_examples.png (source, target, stand-in swap rows).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2

from faceswap import params
from faceswap.core.cli import parser, write_metrics
from faceswap.core.io import atomic_write_bytes, atomic_write_text
from faceswap.data.records import FaceRecords, PairDataset
from faceswap.training.config import FaceDancerStageConfig
from faceswap.training.facedancer import MARGINS_FILE, blended_swap, ifsr_margin_stats
from faceswap.training.runs import DataPaths, add_data_args, data_paths
from faceswap.training.steps import sample_grid
from faceswap_models.auxiliary import build_identity_encoder
from faceswap_models.swap import face_ellipse_mask

STAGE = "ifsr_margins"
EXAMPLES_FILE = "ifsr_margins_examples.png"


def measure(cfg: FaceDancerStageConfig, records: FaceRecords, seed: int, progress: bool = False) -> dict[str, Any]:
    """The margins document for `cfg` on `records` (the train split): pure, no files written."""
    identity = build_identity_encoder(cfg.identity_encoder, cfg.identity_weights, cfg.aux_cache_dir)
    pairs = PairDataset(records, cfg.image_size, same_identity_ratio=0.0, seed=seed, length=cfg.ifsr.pairs)
    stats = ifsr_margin_stats(identity, (pairs[i] for i in range(len(pairs))), cfg.ifsr.layers, cfg.ifsr.face_ellipse,
                              cfg.ifsr.feather, cfg.ifsr.batch_size, progress=progress)
    return {"identity_encoder": cfg.identity_encoder, "image_size": cfg.image_size, "layers": list(stats.layers),
            "margins": list(stats.margins), "mean": list(stats.mean), "std": list(stats.std), "q10": list(stats.q10),
            "q90": list(stats.q90), "pairs": stats.pairs,
            "stand_in": {"kind": "blended_inner_face", "face_ellipse": list(cfg.ifsr.face_ellipse),
                         "feather": cfg.ifsr.feather}}


def examples_png(cfg: FaceDancerStageConfig, records: FaceRecords, seed: int, n: int = 4) -> bytes:
    """A PNG of n rows: source, target, the stand-in swap the margins are measured on."""
    import torch

    pairs = PairDataset(records, cfg.image_size, same_identity_ratio=0.0, seed=seed, length=n)
    items = [pairs[i] for i in range(min(n, len(pairs)))]
    src = torch.stack([it["source"]["image"] for it in items])
    tgt = torch.stack([it["target"]["image"] for it in items])
    swap = blended_swap(src, tgt, face_ellipse_mask(cfg.image_size, tuple(cfg.ifsr.face_ellipse), edge=cfg.ifsr.feather))
    ok, buf = cv2.imencode(".png", cv2.cvtColor(sample_grid([src, tgt, swap]).numpy(), cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def run(data: DataPaths, *, out_dir: str | Path, params_path: str | Path = "params.yaml",
        metrics: str | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    p = params.load(params_path)
    cfg = p.train_facedancer
    records = data.records("train")
    doc = {**measure(cfg, records, p.train.seed, progress=True), "data_fingerprint": data.fingerprint()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / EXAMPLES_FILE, examples_png(cfg, records, p.train.seed))
    atomic_write_text(out / MARGINS_FILE, json.dumps(doc, indent=2) + "\n")
    write_metrics(metrics, {"pairs": doc["pairs"], "seconds": round(time.perf_counter() - start, 3),
                            **{f"margin_block{i}": m for i, m in zip(doc["layers"], doc["margins"])}})
    return doc


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--out-dir", default="models/swap/facedancer/ifsr_margins", help="where ifsr_margins.json goes")
    p.add_argument("--plots", default=None, help="unused (no per-step curve); accepted as every training stage does")
    p.add_argument("--init-bundle", default=None, help="unused (margins depend on the data only); accepted as above")
    a = p.parse_args(argv)
    doc = run(data_paths(a), out_dir=a.out_dir, params_path=a.params, metrics=a.metrics)
    print(f"{STAGE}: {doc['pairs']} pairs, margins " + ", ".join(f"block {i}: {m:.3f}"
                                                                  for i, m in zip(doc["layers"], doc["margins"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
