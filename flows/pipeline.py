"""Prefect flow: the full pipeline as `dvc repro` (data -> models -> evaluation -> registry), then
markdown and table artifacts from the metrics files DVC wrote.

Running `dvc repro` (not the stage functions) keeps the flow and DVC identical: same cache, same
lock file, a stage whose deps and params did not change is skipped. The flow only reads
metrics/*.json afterwards: data counts (ingest/filter/align/split), training figures (train_*.json
and train/<architecture>.json when present) and the evaluation of each architecture (eval/<architecture>.json:
model beside the trivial baselines).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from faceswap.core.config import flatten
from flows.prepare import retry_on_io


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_on_io)
def dvc_repro(repo: str, targets: list[str], force: bool = False) -> str:
    """`dvc repro [targets]` in `repo` under one parent MLflow run; raises with DVC's output when it fails."""
    cmd = ["dvc", "repro", *(["--force"] if force else []), *targets]
    parent = [sys.executable, "-m", "faceswap.training.tracking", "--params", "params.yaml", "--"]
    proc = subprocess.run(parent + cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


@task
def read_metrics(metrics_dir: str) -> dict[str, Any]:
    """Every metrics/<name>.json as {name: content} and metrics/<group>/<architecture>.json as
    {"<group>/<architecture>": content}; unreadable files become {"error": ...}."""
    out: dict[str, Any] = {}
    root = Path(metrics_dir)
    for f in sorted([*root.glob("*.json"), *root.glob("*/*.json")]):
        try:
            out[f.relative_to(root).with_suffix("").as_posix()] = json.loads(f.read_text("utf-8"))
        except (OSError, ValueError) as e:
            out[f.stem] = {"error": f"{f}: {e}"}
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def data_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per data stage with its input / output / rejected counts."""
    rows = []
    if "ingest" in m:
        rows.append({"stage": "ingest", "in": m["ingest"].get("files"), "out": m["ingest"].get("files"), "rejected": 0})
    if "filter" in m:
        f = m["filter"]
        rows.append({"stage": "filter", "in": f.get("input"), "out": f.get("accepted"), "rejected": f.get("rejected")})
    if "align" in m:
        a = m["align"]
        rows.append({"stage": "align", "in": a.get("input"), "out": a.get("aligned"), "rejected": a.get("rejected")})
    if "threedmm" in m:
        t = m["threedmm"]
        rows.append({"stage": "threedmm", "in": None, "out": t.get("faces"), "rejected": t.get("no_mesh")})
    return rows


def eval_rows(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluation metrics: one row per metric, the model beside each baseline."""
    model, baselines = ev.get("model", {}), ev.get("baselines", {})
    return [{"metric": k, "model": v, **{b: baselines[b].get(k) for b in sorted(baselines)}}
            for k, v in model.items() if isinstance(v, (int, float)) or v is None]


def evaluations(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{architecture: its eval.json} from read_metrics' "eval/<architecture>" entries."""
    return {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("eval/")}


def _table_md(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    cols = list(rows[0])
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]]


def report_markdown(m: dict[str, Any]) -> str:
    """Data counts, identity-disjoint splits, training figures and evaluation as one markdown report."""
    lines = ["# Pipeline run", "", "## Data", "", *_table_md(data_rows(m))]
    if "filter" in m and m["filter"].get("reasons"):
        lines += ["", "Filter reject reasons: " + ", ".join(f"{k} {v}" for k, v in m["filter"]["reasons"].items())]
    if "split" in m:
        counts = [{"split": k, **v} for k, v in m["split"].items() if isinstance(v, dict) and "identities" in v]
        lines += ["", "## Splits", "", *_table_md(counts)]
    train = {k: v for k, v in m.items() if k.startswith("train") or k.startswith("pretrain")}
    lines += ["", "## Training", ""]
    if train:
        for name, values in train.items():
            leaves = {k: v for k, v in flatten(values).items() if isinstance(v, (int, float))}
            lines += [f"### {name}", "", *_table_md([{"figure": k, "value": v} for k, v in leaves.items()]), ""]
    else:
        lines.append("(no training metrics yet)")
    lines += ["", "## Evaluation", ""]
    evals = evaluations(m)
    for arch, ev in evals.items():
        lines += [f"### {arch}", "", f"{ev.get('pairs', '?')} test pairs, recogniser `{ev.get('recogniser', '?')}`; "
                  f"realism features: {ev.get('realism_features', '?')}.", "", *_table_md(eval_rows(ev)), ""]
    if not evals:
        lines.append("(no metrics/eval/<architecture>.json yet)")
    return "\n".join(lines) + "\n"


@flow(name="faceswap-pipeline", log_prints=True)
def pipeline(repo: str = ".", targets: list[str] | None = None, run_dvc: bool = True, force: bool = False,
             metrics_dir: str = "metrics") -> dict[str, Any]:
    """`dvc repro` (skipped with run_dvc=False: report on existing metrics), then publish artifacts.

    Returns the metrics read, keyed by file stem (`ingest`, `filter`, ..., `eval/<architecture>`).
    """
    if run_dvc:
        print(dvc_repro(repo, list(targets or []), force)[-2000:])
    m = read_metrics(str(Path(repo) / metrics_dir))
    create_markdown_artifact(key="pipeline-report", markdown=report_markdown(m),
                             description="Data counts, training figures and evaluation of this run")
    create_table_artifact(key="data-counts", table=data_rows(m), description="Images in / out / rejected per data stage")
    for arch, ev in evaluations(m).items():
        create_table_artifact(key=f"eval-metrics-{arch}", table=eval_rows(ev),
                              description=f"{arch}: the model beside the copy-target and paste-source baselines")
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="*", help="dvc stages to reproduce (default: all)")
    p.add_argument("--repo", default=".")
    p.add_argument("--force", action="store_true", help="dvc repro --force")
    p.add_argument("--report-only", action="store_true", help="skip dvc, publish artifacts from existing metrics")
    a = p.parse_args(argv)
    m = pipeline(a.repo, a.targets, run_dvc=not a.report_only, force=a.force)
    print(json.dumps(sorted(m)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
