"""Prefect flow: the data-preparation stages (ingest -> filter -> align -> segment -> threedmm -> split).

Runs with no Prefect server configured (Prefect starts a temporary local one). Each stage
function is a task; only I/O errors are retried. A markdown artifact reports counts per stage
and reject reasons. Paths match dvc.yaml, so `dvc repro` and this flow produce the same files.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from faceswap import params as P
from faceswap.core.cli import write_metrics
from faceswap.core.layout import DataLayout


def retry_on_io(task, task_run, state) -> bool:
    """Retry only when the task failed with an OSError (disk, network filesystem)."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is a real bug or bad config
        return False
    return False


io_task = task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io)


@io_task
def ingest_task(params: str, data: Path, cache: Path) -> dict:
    from stages import ingest
    p = P.load(params)
    return ingest.run(p.ingest, DataLayout(data).manifest, cache, p.prep)


@io_task
def filter_task(params: str, data: Path, cache: Path) -> dict:
    from stages import filter as filter_stage
    p, d = P.load(params), DataLayout(data)
    return filter_stage.run(p.filter, p.detect, d.manifest, d.filtered, d.rejects, cache, p.prep)


@io_task
def align_task(params: str, data: Path, cache: Path) -> dict:
    from stages import align
    p, d = P.load(params), DataLayout(data)
    return align.run(p.align, p.detect, p.filter.max_pixels, d.filtered, d.aligned_dir, d.aligned, d.align_rejects,
                     cache, p.prep)


@io_task
def segment_task(params: str, data: Path) -> dict:
    from stages import segment
    p, d = P.load(params), DataLayout(data)
    return segment.run(p.segment, d.aligned, d.aligned_dir, d.parsing_dir, d.segments, prep=p.prep)


@io_task
def threedmm_task(params: str, data: Path, cache: Path) -> dict:
    from stages import threedmm
    p, d = P.load(params), DataLayout(data)
    return threedmm.run(p.threedmm, d.aligned, d.aligned_dir, d.mesh_dir, d.threedmm, d.threedmm_model,
                        d.threedmm_rejects, cache, p.prep)


@io_task
def split_task(params: str, data: Path) -> dict:
    from stages import split
    return split.run(P.load(params).split, DataLayout(data).threedmm, DataLayout(data).splits)


def report_markdown(metrics: dict[str, dict]) -> str:
    """Counts per stage and reject reasons as a markdown report."""
    ing, flt, al, seg, tdm, spl = (metrics[k] for k in ("ingest", "filter", "align", "segment", "threedmm", "split"))
    lines = [
        "# Data preparation", "",
        "| stage | in | out | rejected | work done this run |", "|---|---:|---:|---:|---|",
        f"| ingest | {ing['files']} files | {ing['files']} rows | - | {ing['read']} read, {ing['reused']} unchanged |",
        f"| filter | {flt['input']} | {flt['accepted']} | {flt['rejected']} | {flt['inspected']} inspected |",
        f"| align | {al['input']} | {al['aligned']} | {al['rejected']} | {al['warped']} warped |",
        f"| segment | {al['aligned']} | {seg['faces']} | 0 | {seg['parsed_this_run']} parsed |",
        f"| threedmm | {al['aligned']} | {tdm['faces']} | {tdm['no_mesh']} | {tdm['meshed_this_run']} meshed |",
        "", "## Reject reasons (filter)", "", "| reason | count |", "|---|---:|",
        *[f"| {k} | {v} |" for k, v in flt["reasons"].items()],
        "", "## Splits (identity-disjoint)", "", "| split | identities | images |", "|---|---:|---:|",
        *[f"| {k} | {spl[k]['identities']} | {spl[k]['images']} |" for k in ("train", "val", "test") if k in spl],
    ]
    return "\n".join(lines) + "\n"


@flow(name="prepare-data", log_prints=True)
def prepare(params: str = "params.yaml", data_dir: str = "data", metrics_dir: str = "metrics") -> dict[str, dict]:
    """Run every data stage in order; returns their metrics and publishes a markdown artifact."""
    data, cache = Path(data_dir), DataLayout(data_dir).cache
    m: dict[str, dict] = {}
    m["ingest"] = ingest_task(params, data, cache)
    m["filter"] = filter_task(params, data, cache)
    m["align"] = align_task(params, data, cache)
    m["segment"] = segment_task(params, data)
    m["threedmm"] = threedmm_task(params, data, cache)
    m["split"] = split_task(params, data)
    for name, values in m.items():
        write_metrics(str(Path(metrics_dir) / f"{name}.json"), values)
    create_markdown_artifact(key="data-prep-report", markdown=report_markdown(m),
                             description="Counts per data stage and reject reasons")
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-dir", default="data")
    a = p.parse_args(argv)
    print(json.dumps(prepare(a.params, a.data_dir), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
