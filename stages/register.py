"""register: log the swap model to MLflow, register a version and promote it by the champion gate.

The run, the aliases (`challenger` always, `champion` only through every gate) and the lock are the
registry's: faceswap/serving/registry.py says what one registration logs and how; docs/registry.md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from faceswap import params
from faceswap.core.layout import DATA, ModelOutputs
from faceswap.serving.config import RegisterConfig
from faceswap.serving.registry import register_model

FLOWFACEPP = ModelOutputs("flowfacepp")  # the CLI's defaults: the default architecture's paths


def run(cfg: RegisterConfig, bundle_dir: str | Path, eval_json: str | Path, example: tuple[Any, Any],
        out: str | Path | None = None, params_path: str | Path = "params.yaml",
        lock_file: str | Path = "dvc.lock", data_metrics: dict | None = None) -> dict:
    """Log, register and gate one swap model (faceswap.serving.registry.register_model)."""
    return register_model(cfg, bundle_dir, eval_json, example, out, params_path, lock_file, data_metrics)


def example_pair(aligned_table: str | Path, aligned_dir: str | Path) -> tuple[Any, Any]:
    """Two aligned crops of different identities (first by sha256) as the model's input example."""
    from faceswap.core.images import read_rgb
    from faceswap.core.schemas import ALIGNED, read_table

    rows = sorted(read_table(aligned_table, ALIGNED).to_pylist(), key=lambda r: r["sha256"])
    first = rows[0] if rows else None
    other = next((r for r in rows if first and r["identity"] != first["identity"]), None)
    if first is None or other is None:
        raise ValueError(f"{aligned_table}: need aligned faces of two identities for the input example")
    return read_rgb(Path(aligned_dir) / first["crop"]), read_rgb(Path(aligned_dir) / other["crop"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--bundle", default=str(FLOWFACEPP.bundle), help="swap-model bundle directory")
    p.add_argument("--eval", default=str(FLOWFACEPP.eval_metrics))
    p.add_argument("--aligned", default=str(DATA.aligned), help="input example source")
    p.add_argument("--aligned-dir", default=str(DATA.aligned_dir))
    p.add_argument("--split-metrics", default="metrics/split.json", help="split counts for the model card")
    p.add_argument("--lock-file", default="dvc.lock")
    p.add_argument("--out", default=str(FLOWFACEPP.register_report))
    a = p.parse_args(argv)
    split = Path(a.split_metrics)
    data = json.loads(split.read_text("utf-8")) if split.is_file() else None
    r = run(params.load(a.params).register, a.bundle, a.eval, example_pair(a.aligned, a.aligned_dir),
            a.out, a.params, a.lock_file, data)
    champion = f"v{r['champion_version']}" if r["champion_version"] is not None else "none yet"
    print(f"register: {r['model_name']} v{r['version']} gates={'pass' if r['gates_passed'] else 'FAIL'} "
          f"moved={r['aliases_moved']} champion={champion} ({r['reason']})")
    for g in r["gates"]:
        print(f"  gate {'pass' if g['passed'] else 'FAIL'}: {g['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
