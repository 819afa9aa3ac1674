"""What the expression gate can ask of the corpus: per face-mesh expression measure its ICC (one-way ANOVA
ICC(1), unbiased variance components for few faces per person) and within-person std (measure units and px
at the training size), and the mean `expression_deviation_error` of blends of the *real* measures of every
cross-identity (source, target) pair — paste_source (w = 1), copy_target (w = 0), w = ICC and the hindsight
least-squares optimum — against paste_source; pooled over all identities and per split. The same code as
the split stage's metrics/split.json "expression" (docs/evaluation.md "What the expression gate can ask").
Needs the data stages' outputs (`make demo`, or `dvc repro split`).

Usage: python -m bench.expression_ceiling [--data DIR | --measures CSV] [--size 64] [--json OUT] [--dump-measures CSV]

`--dump-measures` writes every crop's measures (identity, split, unit, seven measures) as CSV: the real-crop
fixture of tests/test_expression_gate_sanity.py (metrics/reference/); `--measures` reads one back, so the
corpus before expression offsets (version 5) is measured with the same code.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from faceswap.core.schemas import SPLITS, read_table
from faceswap.evaluation.features import EXPRESSION_MEASURES
from stages.split import crop_measures, expression_figures, expression_figures_of, read_measures_csv

_SHORT = {"mouth_open": "mouth open", "mouth_width": "width", "corner_lift": "corner", "eye_open_left": "eye L",
          "eye_open_right": "eye R", "brow_left": "brow L", "brow_right": "brow R"}


def figures(data: Path, size: int) -> dict:
    rows = read_table(data / "splits.parquet", SPLITS).to_pylist()
    return expression_figures(rows, data / "aligned.parquet", data / "meshes", size)


def dump_measures(data: Path, out: Path) -> None:
    """Every crop's identity, split, unit (outer-eye-corner distance / crop side) and measures, as CSV
    (first line: a comment naming the demo corpus version the data was built from)."""
    import numpy as np

    from faceswap.core.io import atomic_write_text

    rows = read_table(data / "splits.parquet", SPLITS).to_pylist()
    values, units, labels, splits = crop_measures(rows, data / "aligned.parquet", data / "meshes")
    marker = data / "raw" / ".demo_corpus.json"
    version = json.loads(marker.read_text()).get("version") if marker.exists() else "unknown"
    lines = [f"# demo corpus version {version}", ",".join(["identity", "split", "unit", *EXPRESSION_MEASURES])]
    order = np.lexsort((splits, labels))
    lines += [",".join([labels[i], splits[i], f"{units[i]:.6f}", *(f"{v:.6f}" for v in values[i])]) for i in order]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")


def _measures(values: dict, fmt: str = "10.3f") -> str:
    return " ".join(f"{values[m]:{fmt}}" for m in EXPRESSION_MEASURES)


def _blends(r: dict) -> str:
    e, q = r["deviation_error"], r["ratio_to_paste"]
    return (f"paste {e['paste_source']:.3f}  copy {e['copy_target']:.3f} ({q['copy_target']:.2f} x)  "
            f"w=ICC {e['blend_icc']:.3f} ({q['blend_icc']:.2f} x)  optimal {e['blend_optimal']:.3f} "
            f"({q['blend_optimal']:.2f} x)")


_SECTIONS = (  # (heading, one split's row)
    (None, lambda r: f"{r['faces']:5d} {r['identities']:4d} | {'':27s}" + _measures(r["within_std_px"])),
    ("ICC (ANOVA ICC(1)):", lambda r: f"mean {r['icc_mean']:.3f} max {r['icc_max']:.3f} | {'':15s}" + _measures(r["icc"])),
    ("blends of the real measures, deviation error (x paste_source):", _blends),
)


def table(fig: dict) -> str:
    names = " ".join(f"{_SHORT[m]:>10s}" for m in EXPRESSION_MEASURES)
    lines = [f"{'':7s} {'faces':>5s} {'ids':>4s} | within-person std, px at {fig['px_size']}: " + names]
    for heading, row in _SECTIONS:
        if heading:
            lines.append(heading)
        lines += [f"{k:7s} " + row(fig[k]) for k in ("pooled", "train", "val", "test") if fig.get(k)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data"), help="folder with splits.parquet, aligned.parquet, meshes/")
    p.add_argument("--size", type=int, default=64, help="training size for the px figures")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--dump-measures", type=Path, default=None, help="also write every crop's measures as CSV")
    p.add_argument("--measures", type=Path, default=None,
                   help="read the crops' measures from such a CSV instead of --data (e.g. the corpus before: "
                        "metrics/reference/expression_measures_v5.csv)")
    a = p.parse_args(argv)
    if a.measures:
        corpus, arrays = read_measures_csv(a.measures)
        print(f"{a.measures}: {corpus}")
        fig = expression_figures_of(*arrays, a.size)
    else:
        fig = figures(a.data, a.size)
    if a.dump_measures:
        dump_measures(a.data, a.dump_measures)
    print(table(fig))
    if a.json:
        a.json.write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
