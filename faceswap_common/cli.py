"""Shared CLI helpers and the `faceswap` console script (dispatches to the stage CLIs and COMMANDS)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from faceswap_common.io import atomic_write_text

STAGES = ("ingest", "filter", "align", "segment", "threedmm", "split",
          "train_aux", "pretrain_mae", "train_shape", "train_swap", "evaluate", "register")


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


# User commands beside the stages: name -> (module, function taking argv and returning an exit code).
COMMANDS = {
    "swap": ("faceswap_models.swap_cli", "swap_main"),
    "verify": ("faceswap_models.swap_cli", "verify_main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    table = {**{s: (f"stages.{s}", "main") for s in STAGES}, **COMMANDS}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in table:
        print("usage: faceswap {" + ",".join(table) + "} [options]  (see: faceswap COMMAND --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, func = table[argv[0]]
    return getattr(importlib.import_module(module_name), func)(argv[1:])
