"""split: identity-disjoint, seeded train/val/test assignment -> splits.parquet."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from faceswap import params
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import SplitConfig
from faceswap.core.layout import DATA
from faceswap.core.schemas import SPLITS, THREEDMM, read_table, write_table


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


def run(cfg: SplitConfig, table: str | Path, out: str | Path) -> dict:
    rows = read_table(table, THREEDMM).select(["sha256", "identity"]).to_pylist()
    which = assign_identities([r["identity"] for r in rows], cfg)
    split_rows = [{"sha256": r["sha256"], "identity": r["identity"], "split": which[r["identity"]]} for r in rows]
    write_table(split_rows, out, SPLITS)
    counts: dict[str, dict[str, int]] = {s: {"identities": 0, "images": 0} for s in ("train", "val", "test")}
    for s in which.values():
        counts[s]["identities"] += 1
    for r in split_rows:
        counts[r["split"]]["images"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--table", default=str(DATA.threedmm), help="faces to split (those with 3DMM fits)")
    p.add_argument("--out", default=str(DATA.splits))
    a = p.parse_args(argv)
    m = run(params.load(a.params).split, a.table, a.out)
    write_metrics(a.metrics, m)
    print("split: " + ", ".join(f"{k} {v['identities']} ids / {v['images']} images" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
