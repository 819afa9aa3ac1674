"""The Prefect data-preparation flow end to end in a test harness on the tiny demo corpus."""
from __future__ import annotations

import shutil

import yaml


def test_prepare_flow_runs_all_stages_and_reports(prefect_harness, tiny_corpus, tmp_path):
    from flows.prepare import prepare

    src = tmp_path / "raw"
    shutil.copytree(tiny_corpus, src)
    params = yaml.safe_load(open("params.yaml"))
    params["ingest"].update(source="folder", root=str(src))
    for section in ("filter", "align", "segment", "threedmm"):
        params[section]["workers"] = 1
    params["threedmm"].update(n_shape=3, n_exp=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    m = prepare(str(tmp_path / "params.yaml"), str(tmp_path / "data"), str(tmp_path / "metrics"))
    assert m["ingest"]["files"] == m["filter"]["accepted"] + m["filter"]["rejected"]
    assert m["filter"]["reasons"]["no_face"] >= 1
    assert m["split"]["test"]["identities"] >= 1
    assert (tmp_path / "data" / "splits.parquet").exists()
    assert (tmp_path / "metrics" / "filter.json").exists()

    from prefect.client.orchestration import get_client
    import asyncio

    async def read():
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-prep-report"])))

    arts = asyncio.run(read())
    assert arts and "Reject reasons" in arts[0].data and "no_face" in arts[0].data
    # the split table holds the splits, not the expression figures split.json carries beside them
    assert "| test |" in arts[0].data and "| expression" not in arts[0].data
