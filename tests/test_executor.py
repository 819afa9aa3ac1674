"""`prep.executor: ray` (Ray Data actor pools, 2 CPU workers on a local Ray) makes exactly what `local` makes:
every data stage's tables equal row for row after sorting, crops, parsing maps and meshes byte-identical."""
from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faceswap.core import ray_env
from faceswap.core.executor import map_items
from paramsutil import section
from stages import align, ingest, segment, threedmm
from stages import filter as filter_stage

OUTPUT_TABLES = ("filtered", "rejects", "aligned", "align_rejects", "segments", "threedmm", "threedmm_rejects")
OUTPUT_DIRS = ("aligned", "parsing", "meshes")


def _prepare(manifest: Path, work: Path, executor: str) -> dict:
    """filter -> align -> segment -> threedmm on `executor` with 2 workers, into `work`."""
    prep = section("prep", executor=executor, checkpoint_items=4)
    c = work / "cache"
    m = {"filter": filter_stage.run(section("filter", workers=2), section("detect"), manifest, work / "filtered.parquet",
                                    work / "rejects.parquet", c, prep)}
    m["align"] = align.run(section("align", workers=2), section("detect"), 10**8, work / "filtered.parquet",
                           work / "aligned", work / "aligned.parquet", work / "align_rejects.parquet", c, prep)
    m["segment"] = segment.run(section("segment", workers=2), work / "aligned.parquet", work / "aligned",
                               work / "parsing", work / "segments.parquet", prep=prep)
    m["threedmm"] = threedmm.run(section("threedmm", workers=2, n_shape=3, n_exp=3), work / "aligned.parquet",
                                 work / "aligned", work / "meshes", work / "threedmm.parquet",
                                 work / "threedmm_model.npz", work / "threedmm_rejects.parquet", c, prep)
    return m


@pytest.fixture(scope="module")
def both_executors(tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("executors")
    src = root / "raw"
    shutil.copytree(tiny_corpus, src)
    ingest.run(section("ingest", source="folder", root=str(src)), root / "manifest.parquet", root / "cache")
    try:
        runs = {ex: (root / ex, _prepare(root / "manifest.parquet", root / ex, ex)) for ex in ("local", "ray")}
        runs["ray again"] = (root / "ray", _prepare(root / "manifest.parquet", root / "ray", "ray"))
    finally:
        ray_env.shutdown()
    return runs


def _sorted_rows(path: Path) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    return sorted(rows, key=lambda r: (r.get("sha256") or "", r.get("path") or "", str(r.get("reason"))))


@pytest.mark.parametrize("table", OUTPUT_TABLES)
def test_ray_tables_equal_local_row_for_row(both_executors, table):
    (local, m_local), (ray, m_ray) = both_executors["local"], both_executors["ray"]
    rows = _sorted_rows(local / f"{table}.parquet")
    assert rows == _sorted_rows(ray / f"{table}.parquet")
    if table in ("filtered", "aligned", "threedmm"):
        assert len(rows) >= 15  # the stage kept most of the corpus: the comparison is not of empty tables
    assert m_local["filter"]["reasons"] == m_ray["filter"]["reasons"]
    assert m_ray["filter"]["inspected"] == m_local["filter"]["inspected"] > 0  # ray did the work, no cache shared


@pytest.mark.parametrize("folder", OUTPUT_DIRS)
def test_ray_files_byte_identical_to_local(both_executors, folder):
    local, ray = both_executors["local"][0] / folder, both_executors["ray"][0] / folder
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert len(names) >= 15
    assert names == sorted(p.relative_to(ray).as_posix() for p in ray.rglob("*") if p.is_file())
    for n in names:
        assert (local / n).read_bytes() == (ray / n).read_bytes(), n


def _square(_state, x: int) -> int:
    return x * x


def _batch_square(_state, xs: list[int]) -> list[int]:
    assert len(xs) <= 3
    return [x * x for x in xs]


def _none() -> None:
    return None


def test_local_executor_keeps_order_for_batched_functions():
    items = list(range(10))
    assert list(map_items(_batch_square, items, _none, 2, None, batched=3)) == [x * x for x in items]
    assert list(map_items(_square, items, _none, 1, section("prep", executor="local"))) == [x * x for x in items]
    assert list(map_items(_square, [], _none, 2, None)) == []


def test_use_gpu_puts_retinaface_on_cuda_and_leaves_fingerprinted_settings_alone():
    detect = section("detect", backend="retinaface", device="cpu")
    gpu_prep = section("prep", executor="ray", use_gpu=True)
    assert filter_stage.gpu_detector(detect, gpu_prep) == (section("detect", backend="retinaface", device="cuda"), True)
    assert filter_stage.gpu_detector(detect, section("prep", executor="ray")) == (detect, False)
    assert filter_stage.gpu_detector(section("detect"), gpu_prep) == (section("detect"), False)  # dlib: CPU only


def test_ray_reruns_are_incremental_like_local(both_executors):
    """Nothing new: the second ray run inspects, warps, parses and meshes nothing, and its tables are the same."""
    again = both_executors["ray again"][1]
    assert again["filter"]["inspected"] == 0 and again["align"]["warped"] == 0
    assert again["segment"]["parsed_this_run"] == 0 and again["threedmm"]["meshed_this_run"] == 0
    assert again["filter"]["reasons"] == both_executors["local"][1]["filter"]["reasons"]

