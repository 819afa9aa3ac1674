"""Helpers every stage CLI shares: the common arguments and the metrics JSON writer."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from faceswap.core.io import atomic_write_text
from faceswap.core.layout import DATA


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--cache-dir", default=str(DATA.cache), help="incremental caches (not DVC outputs)")
    p.add_argument("--metrics", default=None, help="write stage counts as JSON here")
    return p


def write_metrics(path: str | None, metrics: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
