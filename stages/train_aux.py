"""train_aux: the face-attribute regressor (68 landmarks + 3DMM coefficients) used inside the
Dshape and Fswa losses, trained on the precomputed tables of the training split's faces.

A small supervised CNN (faceswap_models/auxiliary/regressor.py), so it trains in-process with
`train_regressor` (no Ray, no GAN machinery): standardised targets, augmentation that moves the
landmark / camera / roll targets with the pixels, AdamW + cosine, and the weights with the best val
landmark NME (scored every `eval_every` steps) are kept. Outputs (`--out-dir`, default models/aux/):
`regressor.safetensors` (weights + target statistics) + `regressor.json` ({"regressor":
RegressorConfig, "crop_size", "meta"}; meta holds the val figures of the kept weights).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from faceswap.core.cli import parser, write_metrics
from faceswap.core.io import atomic_write_text
from faceswap.core.schemas import ALIGNED, read_table, write_table
from faceswap_models.auxiliary.regressor import RegressorConfig, evaluate_regressor, load_regressor, train_regressor
from faceswap.training.config import AuxStageConfig, load_training_params
from faceswap.training.runs import DataPaths, add_data_args, data_paths

STAGE = "train_aux"
WEIGHTS = "regressor.safetensors"
META = "regressor.json"


def load_aux_regressor(model_dir: str | Path):
    """(frozen FaceAttributeRegressor, crop_size it was trained on) from a train_aux output folder."""
    doc = json.loads((Path(model_dir) / META).read_text("utf-8"))
    return load_regressor(Path(model_dir) / WEIGHTS, RegressorConfig(**doc["regressor"])), int(doc["crop_size"])


def run(data: DataPaths, out_dir: str | Path, params_path: str | Path = "params.yaml", *,
        metrics: str | None = None) -> dict:
    cfg: AuxStageConfig = load_training_params(params_path)[STAGE]
    rcfg = cfg.regressor_config()
    records = data.records("train")  # same join + split as the training stages
    keep = set(records.sha256)
    table = read_table(data.aligned, ALIGNED)
    rows = [r for r in table.to_pylist() if r["sha256"] in keep]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        val_keep = set(data.records("val").sha256)
    except ValueError:  # no usable val faces (tiny data): no held-out figures
        val_keep = set()
    val_rows = [r for r in table.to_pylist() if r["sha256"] in val_keep]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        subset = Path(tmp) / "aligned_train.parquet"
        write_table(rows, subset, ALIGNED)
        val = None
        if val_rows:  # held-out quality: is the regressor better than predicting the mean?
            val = Path(tmp) / "aligned_val.parquet"
            write_table(val_rows, val, ALIGNED)
        m = train_regressor(subset, data.aligned_dir, data.threedmm, rcfg, steps=cfg.steps,
                            batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            head_weight_decay=cfg.head_weight_decay, warmup=cfg.warmup, seed=cfg.seed,
                            augment=cfg.augment_config(), val_parquet=val, eval_every=cfg.eval_every,
                            out_path=out / WEIGHTS)
        if val is not None:
            model = load_regressor(out / WEIGHTS, rcfg)
            ev = evaluate_regressor(model, val, data.aligned_dir, data.threedmm)
            m.update({f"val_{k}": v for k, v in ev.items()})
    crop_size = int(records.crop_size.max())
    doc = {"regressor": dataclasses.asdict(rcfg), "crop_size": crop_size, "meta": {"stage": STAGE, **m}}
    atomic_write_text(out / META, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    write_metrics(metrics, m)
    return m


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    add_data_args(p)
    p.add_argument("--out-dir", default="models/aux")
    a = p.parse_args(argv)
    m = run(data_paths(a), a.out_dir, a.params, metrics=a.metrics)
    val = (f"; val (weights of step {int(m['best_step'])}): NME {m['val_landmark_nme_side']:.4f} of the side, "
           f"shape R2 {m['val_shape_r2']:.3f}, expression R2 {m['val_expression_r2']:.3f}"
           if "val_shape_r2" in m and "best_step" in m else "")
    print(f"{STAGE}: loss {m['initial_total']:.4f} -> {m['final_total']:.4f} in {int(m['steps'])} steps "
          f"({m['seconds']:.1f} s, {int(m['n_rows'])} faces){val}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
