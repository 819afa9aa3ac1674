"""align: 5 landmarks -> similarity transform to the ArcFace template at `align.size`
-> aligned crops (content-addressed files) + aligned.parquet (matrix, 5 and 68 landmarks).

Crops are PNG files named by the source's sha256 under the aligned directory (a persistent DVC
output): a re-run only warps images whose crop is missing; stale crops are removed.
Files beat Parquet-embedded bytes here: the training loader memory-maps nothing either way,
and one file per crop keeps incremental runs O(new images) (see docs/data.md for the figures).
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np

from faceswap import params
from faceswap.core.cache import RowCache
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import AlignConfig, DetectConfig, PrepConfig
from faceswap.core.executor import map_items
from faceswap.core.images import BadImage, decode_rgb, encode_image
from faceswap.core.io import atomic_write_bytes, fingerprint, remove_stale
from faceswap.core.layout import DATA
from faceswap.core.schemas import ALIGNED, FILTERED, REJECTS, read_table, write_table
from faceswap.faces.detectors import Landmarker68, align_face, transform_points

CODE_VERSION = 2  # 2: crop names carry the alignment fingerprint


def crop_name(sha256: str, fmt: str, key: str) -> str:
    """`<sha[:2]>/<sha>-<key>.<fmt>`: `key` fingerprints the alignment settings, so a crop made with
    other settings never passes for this one (segment / threedmm name their files after the crop)."""
    return f"{sha256[:2]}/{sha256}-{key[:8]}.{fmt}"


def _make_state(cfg: AlignConfig, max_pixels: int, out_dir: str, key: str):
    return Landmarker68(), cfg, max_pixels, Path(out_dir), key


def align_one(state, row: dict) -> dict:
    """Warp one accepted image; returns the aligned row fields or {'reason', 'detail'}."""
    landmarker, cfg, max_pixels, out_dir, key = state
    try:
        img = decode_rgb(row["path"], max_pixels)
    except (BadImage, OSError) as e:
        return {"reason": getattr(e, "reason", "unreadable"), "detail": f"at align: {e}"}
    lm5 = np.asarray(row["landmarks5"], np.float64).reshape(5, 2)
    crop, m = align_face(img, lm5, cfg.size, cfg.template_scale)
    pts68 = transform_points(landmarker(img, np.asarray(row["face_box"])), m)
    name = crop_name(row["sha256"], cfg.image_format, key)
    atomic_write_bytes(out_dir / name, encode_image(crop, cfg.image_format, cfg.jpeg_quality))
    return {"reason": None, "crop": name, "matrix": m.reshape(-1).tolist(),
            "landmarks5": transform_points(lm5, m).reshape(-1).tolist(),
            "landmarks68": pts68.reshape(-1).tolist()}


def run(cfg: AlignConfig, detect: DetectConfig, max_pixels: int, filtered: str | Path, out_dir: str | Path,
        out_table: str | Path, out_rejects: str | Path, cache_dir: str | Path | None = None,
        prep: PrepConfig | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_table(filtered, FILTERED).to_pylist()
    key = fingerprint(CODE_VERSION, {k: v for k, v in asdict(cfg).items() if k != "workers"}, asdict(detect))
    cache = RowCache.for_stage(cache_dir, "align", key, prep)
    todo = [r for r in rows
            if not ((hit := cache.get(r["sha256"])) and (hit["reason"] or (out_dir / hit["crop"]).exists()))]
    factory = partial(_make_state, cfg, max_pixels, str(out_dir), key)
    for r, res in zip(todo, map_items(align_one, todo, factory, cfg.workers, prep, desc="align")):
        cache.put(r["sha256"], res)
    aligned, rejected = [], []
    for r in rows:
        res = cache.get(r["sha256"])
        if res["reason"]:
            rejected.append({"path": r["path"], "identity": r["identity"], "sha256": r["sha256"],
                             "reason": res["reason"], "detail": res["detail"]})
        else:
            aligned.append({"sha256": r["sha256"], "identity": r["identity"], "path": r["path"],
                            "size": cfg.size, "template_scale": cfg.template_scale, **{k: res[k] for k in ("crop", "matrix", "landmarks5", "landmarks68")}})
    removed = remove_stale(out_dir, f"*.{cfg.image_format}", {a["crop"] for a in aligned})
    write_table(aligned, out_table, ALIGNED)
    write_table(rejected, out_rejects, REJECTS)
    cache.save(keep={r["sha256"] for r in rows})
    return {"input": len(rows), "aligned": len(aligned), "rejected": len(rejected), "warped": len(todo),
            "stale_removed": removed}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--filtered", default=str(DATA.filtered))
    p.add_argument("--out-dir", default=str(DATA.aligned_dir))
    p.add_argument("--out", default=str(DATA.aligned))
    p.add_argument("--rejects", default=str(DATA.align_rejects))
    a = p.parse_args(argv)
    p = params.load(a.params)
    fcfg = p.filter
    m = run(p.align, p.detect,
            fcfg.max_pixels, a.filtered, a.out_dir, a.out, a.rejects, a.cache_dir, p.prep)
    write_metrics(a.metrics, m)
    print(f"align: {m['aligned']} aligned ({m['warped']} warped this run), {m['rejected']} rejected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
