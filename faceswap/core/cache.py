"""Per-stage row caches that make re-runs incremental, and killed runs resumable.

A cache is a Parquet file outside DVC's outputs (default `data/cache/<stage>.parquet`, git- and
DVC-ignored) holding one JSON row per content hash, valid only for one fingerprint of the
stage's params and code version. A changed param invalidates it wholesale.

During a run, new rows are also saved as they come (every `checkpoint_items` rows or
`checkpoint_seconds`, `prep` in params.yaml): each save writes only the new rows, atomically, as one
part file in `<cache>.journal/`, so saving stays O(new rows) at any scale. A run killed at 90 %
re-inspects only what came after its last save; the final `save()` folds the parts into the cache.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from faceswap.core.config import PrepConfig
from faceswap.core.io import atomic_path

_SCHEMA = pa.schema([("key", pa.string()), ("fingerprint", pa.string()), ("row", pa.string())])


class RowCache:
    def __init__(self, path: str | Path | None, fingerprint: str, checkpoint_items: int | None = None,
                 checkpoint_seconds: float | None = None) -> None:
        self.path = Path(path) if path else None
        self.fingerprint = fingerprint
        self.checkpoint_items, self.checkpoint_seconds = checkpoint_items, checkpoint_seconds
        self._rows: dict[str, str] = {}
        self._unsaved: list[str] = []
        self._last_save = time.monotonic()
        self.hits = 0
        if self.path:
            for part in [self.path, *self._journal_parts()]:
                self._load(part)

    @classmethod
    def for_stage(cls, cache_dir: str | Path | None, stage: str, fingerprint: str,
                  prep: PrepConfig | None = None) -> RowCache:
        """`<cache_dir>/<stage>.parquet` (no cache when cache_dir is None), saving progress as `prep` says."""
        return cls(Path(cache_dir) / f"{stage}.parquet" if cache_dir else None, fingerprint,
                   prep.checkpoint_items if prep else None, prep.checkpoint_seconds if prep else None)

    @property
    def journal(self) -> Path | None:
        return self.path.with_name(self.path.name + ".journal") if self.path else None

    def _journal_parts(self) -> list[Path]:
        return sorted(self.journal.glob("part-*.parquet")) if self.journal.is_dir() else []

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            t = pq.read_table(path, columns=["key", "fingerprint", "row"])
        except (pa.ArrowInvalid, OSError):
            return  # a damaged cache is only a slower run
        for k, f, r in zip(*(t.column(c).to_pylist() for c in ("key", "fingerprint", "row"))):
            if f == self.fingerprint:
                self._rows[k] = r

    def get(self, key: str) -> dict | None:
        raw = self._rows.get(key)
        if raw is None:
            return None
        self.hits += 1
        return json.loads(raw)

    def put(self, key: str, row: dict) -> None:
        """Add a row; saves the unsaved rows to the journal when a checkpoint is due."""
        self._rows[key] = json.dumps(row)
        self._unsaved.append(key)
        if self.checkpoint_items and (len(self._unsaved) >= self.checkpoint_items or
                                      time.monotonic() - self._last_save >= self.checkpoint_seconds):
            self.checkpoint()

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def _write(self, path: Path, keys: list[str]) -> None:
        table = pa.table({"key": keys, "fingerprint": [self.fingerprint] * len(keys),
                          "row": [self._rows[k] for k in keys]}, schema=_SCHEMA)
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)

    def checkpoint(self) -> None:
        """Save the rows added since the last save as one new journal part (atomic)."""
        if self.path and self._unsaved:
            self._write(self.journal / f"part-{time.time_ns():020d}-{os.getpid()}.parquet", self._unsaved)
        self._unsaved = []
        self._last_save = time.monotonic()

    def save(self, keep: set[str] | None = None) -> None:
        """Write the whole cache atomically (only `keep` keys when given), then drop the journal."""
        if not self.path:
            return
        self._write(self.path, [k for k in self._rows if keep is None or k in keep])
        self._unsaved = []
        if self.journal.is_dir():
            for f in self.journal.iterdir():  # parts, and temp files of a save a kill interrupted
                f.unlink(missing_ok=True)
            self.journal.rmdir()
