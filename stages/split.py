"""split: identity-disjoint, seeded train/val/test assignment -> splits.parquet, and what the expression
gate can ask of the corpus (`expression_figures`: ICC, within-person std and blend ratios of the face-mesh
expression measures, pooled over every identity and per split; docs/evaluation.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from faceswap import params
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import SplitConfig
from faceswap.core.layout import DATA
from faceswap.core.schemas import ALIGNED, SPLITS, THREEDMM, read_table, write_table


def assign_identities(identities: list[str], cfg: SplitConfig) -> dict[str, str]:
    """Shuffle sorted identities with the seed; the first go to test, then val, the rest train.

    With at least 3 identities, test and val each get at least one when their fraction is > 0.
    """
    ids = sorted(set(identities))
    order = np.random.default_rng(cfg.seed).permutation(len(ids))
    n = len(ids)
    n_test = int(round(cfg.test_frac * n))
    n_val = int(round(cfg.val_frac * n))
    if n >= 3:
        n_test = max(n_test, 1 if cfg.test_frac > 0 else 0)
        n_val = max(n_val, 1 if cfg.val_frac > 0 else 0)
    out = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def crop_measures(split_rows: list[dict], aligned: str | Path, mesh_dir: str | Path
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The real crops' face-mesh expression measures (from the threedmm stage's stored meshes): values
    (n, 7) in outer-eye-corner distances, that distance as a share of the crop side (n,), identity (n,) and
    split (n,); crops without a stored mesh are left out."""
    from faceswap.evaluation.features import mesh_expression, outer_eye_corners
    from faceswap.faces.threedmm import mesh_name

    crops = {r["sha256"]: r for r in read_table(aligned, ALIGNED).select(["sha256", "crop", "size"]).to_pylist()}
    values, units, labels, splits = [], [], [], []
    for r in split_rows:
        c = crops.get(r["sha256"])
        path = Path(mesh_dir) / mesh_name(c) if c else None
        if path is None or not path.exists():
            continue
        mesh = np.load(path)
        values.append(mesh_expression(mesh))
        units.append(outer_eye_corners(np.asarray(mesh, np.float64)[:, :2])[2] / c["size"])
        labels.append(r["identity"])
        splits.append(r["split"])
    return (np.array(values, np.float64).reshape(-1, 7), np.array(units, np.float64), np.array(labels),
            np.array(splits))


def read_measures_csv(path: str | Path) -> tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """A crop-measure dump (`bench.expression_ceiling --dump-measures`): its first line (which corpus
    version it was measured on) and `crop_measures`' four arrays. ValueError names what is wrong."""
    lines = Path(path).read_text().splitlines()
    if len(lines) < 3 or lines[1].split(",")[:3] != ["identity", "split", "unit"]:
        raise ValueError(f"{path}: not a crop-measure dump (identity,split,unit,<7 measures> after one comment line)")
    rows = [ln.split(",") for ln in lines[2:] if ln.strip()]
    if any(len(r) != 10 for r in rows):
        raise ValueError(f"{path}: every row needs identity, split, unit and 7 measures")
    return lines[0].lstrip("# "), (np.array([[float(v) for v in r[3:]] for r in rows]),
                                   np.array([float(r[2]) for r in rows]), np.array([r[0] for r in rows]),
                                   np.array([r[1] for r in rows]))


def expression_figures_of(values: np.ndarray, units: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                          px_size: int) -> dict:
    """`metrics.expression_report` of crop measures (`crop_measures`), pooled over every identity and per
    split; px at a `px_size` image (the training size)."""
    from faceswap.evaluation import metrics as E
    from faceswap.evaluation.features import EXPRESSION_MEASURES

    if len(set(labels)) < 2:
        return {"note": "fewer than 2 identities with meshes"}
    out = {"px_size": px_size}
    for name, rows in [("pooled", np.ones(len(labels), bool))] + [(s, splits == s) for s in ("train", "val", "test")]:
        if len(set(labels[rows])) >= 2:
            out[name] = E.expression_report(values[rows], labels[rows], float(units[rows].mean() * px_size),
                                            EXPRESSION_MEASURES)
    return out


def expression_figures(split_rows: list[dict], aligned: str | Path, mesh_dir: str | Path, px_size: int) -> dict:
    """`expression_figures_of` the real crops' face-mesh measures (`crop_measures`)."""
    return expression_figures_of(*crop_measures(split_rows, aligned, mesh_dir), px_size)


def reference_figures(path: str | Path, px_size: int) -> dict:
    """`expression_figures_of` a committed crop-measure dump (split.expression_before: the corpus before
    expression offsets), with its source; a missing or malformed file gives {"note": reason}."""
    try:
        corpus, arrays = read_measures_csv(path)
    except (OSError, ValueError) as e:
        return {"source": str(path), "note": f"not read: {e}"}
    return {"source": str(path), "corpus": corpus, **expression_figures_of(*arrays, px_size)}


def run(cfg: SplitConfig, table: str | Path, out: str | Path, aligned: str | Path | None = None,
        mesh_dir: str | Path | None = None) -> dict:
    rows = read_table(table, THREEDMM).select(["sha256", "identity"]).to_pylist()
    which = assign_identities([r["identity"] for r in rows], cfg)
    split_rows = [{"sha256": r["sha256"], "identity": r["identity"], "split": which[r["identity"]]} for r in rows]
    write_table(split_rows, out, SPLITS)
    counts: dict[str, dict[str, int]] = {s: {"identities": 0, "images": 0} for s in ("train", "val", "test")}
    for s in which.values():
        counts[s]["identities"] += 1
    for r in split_rows:
        counts[r["split"]]["images"] += 1
    if aligned is not None and mesh_dir is not None and Path(aligned).exists():
        counts["expression"] = expression_figures(split_rows, aligned, mesh_dir, cfg.expression_px_size)
    if cfg.expression_before:
        counts["expression_before"] = reference_figures(cfg.expression_before, cfg.expression_px_size)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--table", default=str(DATA.threedmm), help="faces to split (those with 3DMM fits)")
    p.add_argument("--out", default=str(DATA.splits))
    p.add_argument("--aligned", default=str(DATA.aligned), help="crop sizes and names of the meshes")
    p.add_argument("--mesh-dir", default=str(DATA.mesh_dir), help="the threedmm stage's face meshes")
    a = p.parse_args(argv)
    m = run(params.load(a.params).split, a.table, a.out, a.aligned, a.mesh_dir)
    write_metrics(a.metrics, m)
    print("split: " + ", ".join(f"{k} {m[k]['identities']} ids / {m[k]['images']} images" for k in ("train", "val", "test")))
    pooled = m.get("expression", {}).get("pooled")
    if pooled:
        print(f"split: expression, pooled over {pooled['identities']} identities: ICC mean {pooled['icc_mean']:.2f} "
              f"(max {pooled['icc_max']:.2f}); hindsight-optimal blend {pooled['ratio_to_paste']['blend_optimal']:.2f} x "
              f"paste_source, copy_target {pooled['ratio_to_paste']['copy_target']:.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
