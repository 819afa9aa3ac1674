"""A data stage killed with `kill -9` half way resumes from its saved progress: the re-run inspects at most
60 % of the images, its tables equal an uninterrupted run's, and the killed stage's pool workers exit
quietly (no BrokenPipe tracebacks, no orphans left running)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from faceswap.core.config import load_params
from faceswap.core.parallel import ORPHAN_POLL_S
from paramsutil import REPO, section
from stages import filter as filter_stage
from stages import ingest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """~60 images (a pool of 2 workers runs them; a single process would not show orphans)."""
    from faceswap.data.demo_corpus import build_demo_corpus

    root = tmp_path_factory.mktemp("resume")
    src = build_demo_corpus(root / "raw", identities=12, per_identity=5)
    ingest.run(section("ingest", source="folder", root=str(src)), root / "manifest.parquet", None)
    return root / "manifest.parquet"


def _journal_rows(journal: Path) -> int:
    parts = sorted(journal.glob("part-*.parquet")) if journal.is_dir() else []
    total = 0
    for p in parts:
        try:
            total += pq.read_metadata(p).num_rows
        except OSError:
            pass  # renamed into place while we looked
    return total


def _tables(work: Path) -> tuple[list[dict], list[dict]]:
    return tuple(sorted(pq.read_table(work / f"{t}.parquet").to_pylist(), key=lambda r: r["path"])
                 for t in ("filtered", "rejects"))


def test_filter_killed_half_way_resumes_and_workers_exit_quietly(manifest, tmp_path):
    ref = filter_stage.run(section("filter", workers=1), section("detect"), manifest, tmp_path / "filtered.parquet",
                           tmp_path / "rejects.parquet")
    n = ref["inspected"]
    assert n >= 50

    raw = load_params(REPO / "params.yaml")
    raw["filter"]["workers"] = 2
    raw["prep"]["checkpoint_items"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    work, cache = tmp_path / "killed", tmp_path / "cache"
    work.mkdir()
    journal = cache / "filter.parquet.journal"
    log = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "stages.filter", "--params", str(params), "--manifest", str(manifest),
           "--out", str(work / "filtered.parquet"), "--rejects", str(work / "rejects.parquet"),
           "--cache-dir", str(cache), "--metrics", str(work / "filter.json")]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "FACESWAP_NO_PROGRESS": "1"})
    try:
        deadline = time.monotonic() + 300
        while _journal_rows(journal) < n // 2:
            assert proc.poll() is None, f"filter ended before half way: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "filter made no progress"
            time.sleep(0.02)
        children = psutil.Process(proc.pid).children(recursive=True)
        workers = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = _journal_rows(journal)
    assert n // 2 <= saved < n  # killed part way: progress was saved, the run was not done
    assert len(workers) == 2, [c.cmdline() for c in children]
    _, alive = psutil.wait_procs(children, timeout=10 * ORPHAN_POLL_S + 5)
    assert not alive, "orphaned pool workers kept running"
    stderr = log.read_text()
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr[-2000:]

    # the re-run picks up the journal, inspects only the rest, and ends with the uninterrupted run's tables
    rerun = filter_stage.run(section("filter", workers=1), section("detect"), manifest, work / "filtered.parquet",
                             work / "rejects.parquet", cache, section("prep"))
    assert rerun["inspected"] == n - saved <= 0.6 * n
    assert _tables(work) == _tables(tmp_path)
    assert rerun["reasons"] == ref["reasons"]
    assert not journal.exists()  # folded into the cache
    assert filter_stage.run(section("filter", workers=1), section("detect"), manifest, work / "filtered.parquet",
                            work / "rejects.parquet", cache)["inspected"] == 0


def test_row_cache_saves_progress_in_journal_parts_and_folds_them(tmp_path):
    from faceswap.core.cache import RowCache

    path = tmp_path / "stage.parquet"
    c = RowCache(path, "fp1", checkpoint_items=2, checkpoint_seconds=3600)
    for i in range(5):
        c.put(f"k{i}", {"v": i})
    assert len(list(c.journal.glob("part-*.parquet"))) == 2 and not path.exists()  # k0-k1, k2-k3; k4 unsaved
    (c.journal / "part-99999999999999999999-0.parquet").write_bytes(b"torn")  # a damaged part is skipped
    again = RowCache(path, "fp1")
    assert [again.get(f"k{i}") for i in range(5)] == [{"v": 0}, {"v": 1}, {"v": 2}, {"v": 3}, None]
    assert RowCache(path, "other params").get("k0") is None  # another fingerprint sees nothing
    again.put("k4", {"v": 4})
    again.save(keep={"k1", "k4"})
    assert not c.journal.exists()
    final = RowCache(path, "fp1")
    assert [final.get(k) for k in ("k0", "k1", "k4")] == [None, {"v": 1}, {"v": 4}]


def test_ingest_that_fails_part_way_rereads_only_what_it_had_not_saved(tmp_path, monkeypatch):
    from faceswap.data.demo_corpus import build_demo_corpus

    src = build_demo_corpus(tmp_path / "raw", identities=3, per_identity=4)
    cfg, prep = section("ingest", source="folder", root=str(src)), section("prep", checkpoint_items=4)
    ref = ingest.run(cfg, tmp_path / "ref.parquet", None)
    describe, calls = ingest.describe, []

    def dies_at_the_tenth_file(path, root):
        calls.append(path)
        if len(calls) == 10:
            raise OSError("the storage went away")
        return describe(path, root)

    monkeypatch.setattr(ingest, "describe", dies_at_the_tenth_file)
    with pytest.raises(OSError):
        ingest.run(cfg, tmp_path / "manifest.parquet", tmp_path / "cache", prep)
    monkeypatch.setattr(ingest, "describe", describe)
    again = ingest.run(cfg, tmp_path / "manifest.parquet", tmp_path / "cache", prep)
    assert (again["read"], again["reused"]) == (ref["files"] - 8, 8)  # 9 read, 8 of them saved (every 4)
    assert pq.read_table(tmp_path / "manifest.parquet").to_pylist() == pq.read_table(tmp_path / "ref.parquet").to_pylist()
