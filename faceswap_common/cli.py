"""Shared CLI helpers and the `faceswap` console script (dispatches to the stage CLIs)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from faceswap_common.io import atomic_write_text

STAGES = ("ingest", "filter", "align", "segment", "threedmm", "split")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--cache-dir", default="data/cache", help="incremental caches (not DVC outputs)")
    p.add_argument("--metrics", default=None, help="write stage counts as JSON here")
    return p


def write_metrics(path: str | None, metrics: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        print("usage: faceswap {" + ",".join(STAGES) + "} [stage options]  (see: faceswap STAGE --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"stages.{argv[0]}")
    return module.main(argv[1:])
