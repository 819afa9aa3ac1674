"""Per-stage row caches that make re-runs incremental.

A cache is a Parquet file outside DVC's outputs (default `data/cache/<stage>.parquet`, git- and
DVC-ignored) holding one JSON row per content hash, valid only for one fingerprint of the
stage's params and code version. A changed param invalidates it wholesale.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from faceswap.core.io import atomic_path

_SCHEMA = pa.schema([("key", pa.string()), ("fingerprint", pa.string()), ("row", pa.string())])


class RowCache:
    def __init__(self, path: str | Path | None, fingerprint: str) -> None:
        self.path = Path(path) if path else None
        self.fingerprint = fingerprint
        self._rows: dict[str, str] = {}
        self.hits = 0
        if self.path and self.path.exists():
            try:
                t = pq.read_table(self.path, columns=["key", "fingerprint", "row"])
                for k, f, r in zip(*(t.column(c).to_pylist() for c in ("key", "fingerprint", "row"))):
                    if f == fingerprint:
                        self._rows[k] = r
            except (pa.ArrowInvalid, OSError):
                self._rows = {}  # a damaged cache is only a slower run

    def get(self, key: str) -> dict | None:
        raw = self._rows.get(key)
        if raw is None:
            return None
        self.hits += 1
        return json.loads(raw)

    def put(self, key: str, row: dict) -> None:
        self._rows[key] = json.dumps(row)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def save(self, keep: set[str] | None = None) -> None:
        """Write the cache atomically, keeping only `keep` keys when given."""
        if not self.path:
            return
        keys = [k for k in self._rows if keep is None or k in keep]
        table = pa.table({"key": keys, "fingerprint": [self.fingerprint] * len(keys),
                          "row": [self._rows[k] for k in keys]}, schema=_SCHEMA)
        with atomic_path(self.path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
