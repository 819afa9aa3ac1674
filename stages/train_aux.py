"""train_aux: the face-attribute regressor (68 landmarks + 3DMM coefficients) used inside the
Dshape and Fswa losses, trained on the precomputed tables of the training split's faces.

A small supervised CNN (faceswap_models/auxiliary/regressor.py), so it trains in-process with
`train_regressor` (no Ray, no GAN machinery): standardised targets, augmentation that moves the
landmark / camera / roll targets with the pixels, AdamW + cosine, and the weights with the best val
landmark NME (scored every `eval_every` steps) are kept. Outputs (`--out-dir`, default models/aux/):
`regressor.safetensors` (weights + target statistics) + `regressor.json` (faceswap.artifacts format:
RegressorConfig, "crop_size", and meta with the val figures of the kept weights).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from faceswap import artifacts, params
from faceswap.core.cli import parser, write_metrics
from faceswap.core.schemas import ALIGNED, read_table, write_table
from faceswap.training.config import AuxStageConfig
from faceswap.training.regressor import evaluate_regressor, train_regressor
from faceswap.training.runs import DataPaths, add_data_args, data_paths
from faceswap_models.auxiliary.regressor import load_regressor

STAGE = "train_aux"


def run(data: DataPaths, out_dir: str | Path, params_path: str | Path = "params.yaml", *,
        metrics: str | None = None) -> dict:
    cfg: AuxStageConfig = params.load(params_path).train_aux
    rcfg = cfg.model
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
                            augment=cfg.augment, val_parquet=val, eval_every=cfg.eval_every,
                            out_path=artifacts.weights_file(out, artifacts.REGRESSOR))
        if val is not None:
            model = load_regressor(artifacts.weights_file(out, artifacts.REGRESSOR), rcfg)
            ev = evaluate_regressor(model, val, data.aligned_dir, data.threedmm)
            m.update({f"val_{k}": v for k, v in ev.items()})
    crop_size = int(records.crop_size.max())
    artifacts.write_config(out, artifacts.REGRESSOR, rcfg, {"stage": STAGE, **m}, crop_size=crop_size)
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
