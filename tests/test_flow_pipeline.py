"""The full-pipeline Prefect flow in the test harness, with dvc stubbed out: artifacts summarise
data counts, training figures and evaluation metrics read from metrics/*.json."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

METRICS = {
    "ingest": {"files": 244, "identities": 24, "read": 244, "reused": 0},
    "filter": {"input": 244, "accepted": 227, "rejected": 17, "reasons": {"no_face": 7, "too_blurry": 10}},
    "align": {"input": 227, "aligned": 227, "rejected": 0},
    "split": {"test": {"identities": 4, "images": 38}, "train": {"identities": 16, "images": 153}},
    "train/flowfacepp": {"train_swap": {"steps": 40, "loss": {"total": 1.25}}},
    "eval/flowfacepp": {"pairs": 100, "recogniser": "dlib_resnet128", "realism_features": "dlib (not comparable to papers)",
             "model": {"id_top1": 0.42, "pose_error_deg": 3.5},
             "baselines": {"copy_target": {"id_top1": 0.0, "pose_error_deg": 1.0},
                           "paste_source": {"id_top1": 1.0, "pose_error_deg": 15.2}}},
}


def _artifacts(keys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))

    return {a.key: a.data for a in asyncio.run(read())}


def test_pipeline_flow_publishes_metrics_artifacts(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    (tmp_path / "metrics").mkdir()
    for name, m in METRICS.items():
        (tmp_path / "metrics" / f"{name}.json").parent.mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(m))
    (tmp_path / "metrics" / "broken.json").write_text("{not json")
    m = pipeline(repo=str(tmp_path), run_dvc=False)
    assert m["eval/flowfacepp"]["model"]["id_top1"] == 0.42 and "error" in m["broken"]

    arts = _artifacts(["pipeline-report", "data-counts", "eval-metrics-flowfacepp"])
    report = arts["pipeline-report"]
    assert "| filter | 244 | 227 | 17 |" in report
    assert "| train_swap.loss.total | 1.25 |" in report and "### train/flowfacepp" in report and "### flowfacepp" in report
    assert "| id_top1 | 0.42 | 0 | 1 |" in report  # model, copy_target, paste_source
    assert "not comparable to papers" in report
    data = json.loads(arts["data-counts"]) if isinstance(arts["data-counts"], str) else arts["data-counts"]
    assert {"stage": "align", "in": 227, "out": 227, "rejected": 0} in data
    ev = arts["eval-metrics-flowfacepp"]
    ev = json.loads(ev) if isinstance(ev, str) else ev
    assert {"metric": "pose_error_deg", "model": 3.5, "copy_target": 1.0, "paste_source": 15.2} in ev


def test_dvc_repro_failure_names_the_command(tmp_path, monkeypatch):
    """A failing `dvc repro` surfaces its output (here: not a DVC repository)."""
    from flows.pipeline import dvc_repro

    pytest.importorskip("dvc")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the venv's dvc
    with pytest.raises(RuntimeError, match="dvc repro"):
        dvc_repro.fn(str(tmp_path), [])
