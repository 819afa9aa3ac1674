"""segment: face parsing maps (uint8 label PNGs) + segments.parquet.

Labels (faceswap.faces.bisenet.LABELS): 0 background, 1 skin, 2 brows, 3 eyes, 4 nose,
5 mouth/lips, 6 hair. Backends: `landmarks` (offline default: polygons from the 68 aligned
landmarks; it never emits hair) and `bisenet` (BiSeNet weights from a local file).
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from faceswap import params
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import PrepConfig, SegmentConfig
from faceswap.core.executor import map_items
from faceswap.core.images import encode_image, read_rgb
from faceswap.core.io import atomic_write_bytes, fingerprint, remove_stale
from faceswap.core.layout import DATA
from faceswap.core.schemas import ALIGNED, SEGMENTS, read_table, write_table
from faceswap.faces.labels import LABELS
from faceswap.faces.parsing import parse_from_landmarks

CODE_VERSION = 1
N_LABELS = len(LABELS)


def _no_state() -> None:
    return None


def _segment_landmarks(_: None, item: tuple[dict, str]) -> None:
    row, out_path = item
    _save(Path(out_path), parse_from_landmarks(np.asarray(row["landmarks68"]).reshape(68, 2), row["size"]))


def _bisenet_state(weights: str, device: str):
    from faceswap.faces.bisenet import BiSeNetParser

    return BiSeNetParser(weights, device)


def _segment_bisenet(parser, items: list[tuple[str, str]]) -> list[None]:
    """One batch of (crop path, out path): parse the crops together, save each map."""
    crops = np.stack([read_rgb(crop) for crop, _ in items])
    for (_, out_path), lab in zip(items, parser(crops)):
        _save(Path(out_path), lab)
    return [None] * len(items)


def backend_key(cfg: SegmentConfig) -> str:
    """Fingerprint of what a parsing map depends on besides its crop: the backend and its weights file."""
    w = Path(cfg.bisenet_weights) if cfg.backend == "bisenet" and cfg.bisenet_weights else None
    stat = (w.stat().st_size, w.stat().st_mtime_ns) if w is not None and w.exists() else None
    return fingerprint(CODE_VERSION, cfg.backend, str(w) if w else None, stat)[:8]


def parsing_name(row: dict, key: str) -> str:
    """Named after the aligned crop (whose name fingerprints the alignment) + the backend key."""
    return f"{Path(row['crop']).with_suffix('').as_posix()}-{key}.png"


def _save(out_path: Path, lab: np.ndarray) -> None:
    atomic_write_bytes(out_path, encode_image(lab, "png"))


def run(cfg: SegmentConfig, aligned: str | Path, aligned_dir: str | Path, out_dir: str | Path,
        out_table: str | Path, batch: int = 16, prep: PrepConfig | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_table(aligned, ALIGNED).to_pylist()
    key = backend_key(cfg)
    todo = [r for r in rows if not (out_dir / parsing_name(r, key)).exists()]
    if cfg.backend == "landmarks":
        items = [(r, str(out_dir / parsing_name(r, key))) for r in todo]
        list(map_items(_segment_landmarks, items, _no_state, cfg.workers, prep, desc="segment"))
    else:
        if not cfg.bisenet_weights:
            raise ValueError("segment.backend=bisenet needs segment.bisenet_weights (a local file)")
        gpu = prep is not None and prep.use_gpu
        items = [(str(Path(aligned_dir) / r["crop"]), str(out_dir / parsing_name(r, key))) for r in todo]
        factory = partial(_bisenet_state, str(Path(cfg.bisenet_weights).resolve()), "cuda" if gpu else "cpu")
        list(map_items(_segment_bisenet, items, factory, cfg.workers, prep, desc="segment", gpu=gpu, batched=batch))
    out_rows, keep = [], set()
    for r in rows:
        name = parsing_name(r, key)
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
    p.add_argument("--aligned", default=str(DATA.aligned))
    p.add_argument("--aligned-dir", default=str(DATA.aligned_dir))
    p.add_argument("--out-dir", default=str(DATA.parsing_dir))
    p.add_argument("--out", default=str(DATA.segments))
    a = p.parse_args(argv)
    p = params.load(a.params)
    m = run(p.segment, a.aligned, a.aligned_dir, a.out_dir, a.out, prep=p.prep)
    write_metrics(a.metrics, m)
    print(f"segment: {m['faces']} parsing maps ({m['parsed_this_run']} this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
