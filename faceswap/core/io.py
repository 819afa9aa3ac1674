"""Atomic file outputs and content hashing."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `dest`; rename it onto `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `dest` via temp + rename."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def absolute_tracking_uri(uri: str) -> str:
    """MLflow URI with a relative `sqlite:///file.db` or plain folder path made absolute (against this
    process's cwd: Ray workers and stage subprocesses may run elsewhere); other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


def fingerprint(*parts: object) -> str:
    """Short stable hash of reprs: keys caches on params + code version."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def remove_stale(directory: str | os.PathLike, pattern: str, keep: set[str]) -> int:
    """Delete files under `directory` matching `pattern` whose relative posix path is not in `keep`.

    Content-addressed stage outputs (crops, parsing maps, meshes) use this after a run so that
    images gone from the input do not linger. Returns how many files were removed.
    """
    directory = Path(directory)
    removed = 0
    for f in directory.rglob(pattern):
        if f.relative_to(directory).as_posix() not in keep:
            f.unlink()
            removed += 1
    return removed
