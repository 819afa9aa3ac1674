"""ingest: enumerate a source into manifest.parquet (path, sha256, identity, size, format, ...).

Sources: `folder` (identity sub-folders as VGGFace2, or flat as FFHQ/CelebA-HQ) and `demo`
(the embedded corpus, generated into `ingest.root`). Incremental: a file whose size and mtime
are unchanged since the last run is not re-read. Symlinks that leave the root are refused.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

from faceswap import params
from faceswap.core.cache import RowCache
from faceswap.core.cli import parser, write_metrics
from faceswap.core.config import IngestConfig, PrepConfig
from faceswap.core.images import BadImage, probe
from faceswap.core.io import fingerprint, sha256_file
from faceswap.core.layout import DATA
from faceswap.core.schemas import MANIFEST, write_table

CODE_VERSION = 1


def iter_files(root: Path, extensions: list[str]) -> Iterator[Path]:
    """Image-extension files below root, sorted, hidden entries skipped, links not followed."""
    exts = {e.lower() for e in extensions}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                yield Path(dirpath) / name


def detect_layout(root: Path, files: list[Path]) -> str:
    return "identity_folders" if any(len(f.relative_to(root).parts) > 1 for f in files) else "flat"


def identity_of(rel: Path, layout: str) -> str:
    if layout == "identity_folders":
        return rel.parts[0] if len(rel.parts) > 1 else "_unsorted"
    return rel.stem


def describe(path: Path, root_real: Path) -> dict:
    """Manifest fields read from the file itself: sha256, header size/format, or an error code."""
    row: dict = {"sha256": None, "width": None, "height": None, "format": None, "error": None, "detail": None}
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.exists():
            return {**row, "error": "broken_symlink", "detail": f"link target {os.readlink(path)} does not exist"}
        if root_real not in target.parents:
            return {**row, "error": "symlink_outside_root",
                    "detail": f"link points to {target}, outside the source root; refused"}
    try:
        row["sha256"] = sha256_file(path)
    except OSError as e:
        return {**row, "error": "unreadable", "detail": str(e)}
    try:
        h = probe(path)
        row.update(width=h.width, height=h.height, format=h.format)
    except BadImage as e:
        row.update(error=e.reason, detail=e.detail)
    return row


def run(cfg: IngestConfig, out: str | Path, cache_dir: str | Path | None = None, prep: PrepConfig | None = None) -> dict:
    """Write manifest.parquet for the configured source; returns counts. Files read are saved to the row
    cache as they come (`prep.checkpoint_*`), so a killed run re-reads only what came after its last save."""
    root = Path(cfg.root)
    if cfg.source == "demo":
        from faceswap.data.demo_corpus import build_demo_corpus

        build_demo_corpus(root, cfg.demo_identities, cfg.demo_images_per_identity, cfg.demo_size, cfg.seed)
    if not root.is_dir():
        raise FileNotFoundError(f"ingest.root {root} is not a directory")
    files = list(iter_files(root, cfg.extensions))
    layout = detect_layout(root, files) if cfg.layout == "auto" else cfg.layout
    cache = RowCache.for_stage(cache_dir, "ingest", fingerprint(CODE_VERSION), prep)
    root_real = Path(os.path.realpath(root))
    rows, keys, read = [], set(), 0
    for f in files:
        rel = f.relative_to(root)
        st = f.lstat()
        key = f"{rel.as_posix()}|{st.st_size}|{st.st_mtime_ns}"
        keys.add(key)
        info = cache.get(key)
        if info is None:
            info = describe(f, root_real)
            cache.put(key, info)
            read += 1
        rows.append({"path": str(f), "relpath": rel.as_posix(), "identity": identity_of(rel, layout),
                     "size": st.st_size, "mtime_ns": st.st_mtime_ns, **info})
    write_table(rows, out, MANIFEST)
    cache.save(keep=keys)
    errors: dict[str, int] = {}
    for r in rows:
        if r["error"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {"files": len(rows), "read": read, "reused": len(rows) - read, "layout": layout,
            "identities": len({r["identity"] for r in rows}), "ingest_errors": errors}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DATA.manifest))
    a = p.parse_args(argv)
    p = params.load(a.params)
    m = run(p.ingest, a.out, a.cache_dir, p.prep)
    write_metrics(a.metrics, m)
    print(f"ingest: {m['files']} files ({m['read']} read, {m['reused']} unchanged), "
          f"{m['identities']} identities, layout={m['layout']}, errors={m['ingest_errors']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
