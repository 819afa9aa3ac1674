"""segment: face parsing maps (uint8 label PNGs) + segments.parquet.

Labels (faceswap_common.bisenet.LABELS): 0 background, 1 skin, 2 brows, 3 eyes, 4 nose,
5 mouth/lips, 6 hair. Backends: `landmarks` (offline default: polygons from the 68 aligned
landmarks; it never emits hair) and `bisenet` (BiSeNet weights from a local file).
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from faceswap_common.labels import LABELS
from faceswap_common.cli import parser, write_metrics
from faceswap_common.config import SegmentConfig, load_section
from faceswap_common.images import encode_image, read_rgb
from faceswap_common.io import atomic_write_bytes, remove_stale
from faceswap_common.parallel import pmap
from faceswap_common.parsing import parse_from_landmarks
from faceswap_common.schemas import ALIGNED, SEGMENTS, read_table, write_table

CODE_VERSION = 1
N_LABELS = len(LABELS)


def _landmark_state(out_dir: str):
    return Path(out_dir)


def _segment_landmarks(out_dir: Path, row: dict) -> None:
    _save(out_dir, row, parse_from_landmarks(np.asarray(row["landmarks68"]).reshape(68, 2), row["size"]))


def parsing_name(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}.png"


def _save(out_dir: Path, row: dict, lab: np.ndarray) -> None:
    atomic_write_bytes(out_dir / parsing_name(row["sha256"]), encode_image(lab, "png"))


def run(cfg: SegmentConfig, aligned: str | Path, aligned_dir: str | Path, out_dir: str | Path,
        out_table: str | Path, batch: int = 16) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_table(aligned, ALIGNED).to_pylist()
    todo = [r for r in rows if not (out_dir / parsing_name(r["sha256"])).exists()]
    if cfg.backend == "landmarks":
        list(pmap(_segment_landmarks, todo, partial(_landmark_state, str(out_dir)), cfg.workers,
                  total=len(todo), desc="segment"))
    else:
        from faceswap_common.bisenet import BiSeNetParser

        if not cfg.bisenet_weights:
            raise ValueError("segment.backend=bisenet needs segment.bisenet_weights (a local file)")
        model = BiSeNetParser(cfg.bisenet_weights)
        for i in range(0, len(todo), batch):
            chunk = todo[i:i + batch]
            crops = np.stack([read_rgb(Path(aligned_dir) / r["crop"]) for r in chunk])
            for r, lab in zip(chunk, model(crops)):
                _save(out_dir, r, lab)
    out_rows, keep = [], set()
    for r in rows:
        name = parsing_name(r["sha256"])
        keep.add(name)
        lab = cv2.imread(str(out_dir / name), cv2.IMREAD_UNCHANGED)
        frac = np.bincount(lab.reshape(-1), minlength=N_LABELS)[:N_LABELS] / lab.size
        out_rows.append({"sha256": r["sha256"], "identity": r["identity"], "parsing": name,
                         "class_fractions": frac.astype(np.float32).tolist()})
    remove_stale(out_dir, "*.png", keep)
    write_table(out_rows, out_table, SEGMENTS)
    mean = np.mean([r["class_fractions"] for r in out_rows], axis=0) if out_rows else np.zeros(N_LABELS)
    return {"faces": len(out_rows), "parsed_this_run": len(todo),
            "mean_class_fraction": {n: round(float(v), 4) for n, v in zip(LABELS, mean)}}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--aligned", default="data/aligned.parquet")
    p.add_argument("--aligned-dir", default="data/aligned")
    p.add_argument("--out-dir", default="data/parsing")
    p.add_argument("--out", default="data/segments.parquet")
    a = p.parse_args(argv)
    m = run(load_section(SegmentConfig, "segment", a.params), a.aligned, a.aligned_dir, a.out_dir, a.out)
    write_metrics(a.metrics, m)
    print(f"segment: {m['faces']} parsing maps ({m['parsed_this_run']} this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
