"""Data-preparation benchmark: throughput, worker scaling, the `local` vs `ray` executor, incremental
cost, peak memory, RetinaFace CPU speed and the no-op `dvc repro` time — all measured in this one run.

Usage: python -m bench.data_prep [--identities 40 --per-identity 25]   (~1,000 images)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("FACESWAP_NO_PROGRESS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from faceswap import params  # noqa: E402
from faceswap.core.layout import DataLayout  # noqa: E402
from faceswap.data.demo_corpus import build_demo_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS = params.load(REPO / "params.yaml")


def run_stages(src: Path, work: Path, workers: int, executor: str = "local") -> tuple[float, dict, dict]:
    """All data stages in-process (one shared worker pool, or Ray Data actors); returns (seconds, metrics,
    seconds per stage)."""
    from stages import align, filter as filter_stage, ingest, segment, split, threedmm

    L = DataLayout(work)
    c = L.cache
    p = PARAMS
    w = {"workers": workers}
    prep = replace(p.prep, executor=executor)
    calls = {
        "ingest": lambda: ingest.run(replace(p.ingest, source="folder", root=str(src)), L.manifest, c),
        "filter": lambda: filter_stage.run(replace(p.filter, **w), p.detect, L.manifest,
                                           L.filtered, L.rejects, c, prep),
        "align": lambda: align.run(replace(p.align, **w), p.detect, 10**8, L.filtered,
                                   L.aligned_dir, L.aligned, L.align_rejects, c, prep),
        "segment": lambda: segment.run(replace(p.segment, **w), L.aligned, L.aligned_dir,
                                       L.parsing_dir, L.segments, prep=prep),
        "threedmm": lambda: threedmm.run(replace(p.threedmm, **w), L.aligned, L.aligned_dir,
                                         L.mesh_dir, L.threedmm, L.threedmm_model,
                                         L.threedmm_rejects, c, prep),
        "split": lambda: split.run(p.split, L.threedmm, L.splits),
    }
    m, per_stage = {}, {}
    t0 = time.perf_counter()
    for name, call in calls.items():
        t = time.perf_counter()
        m[name] = call()
        per_stage[name] = round(time.perf_counter() - t, 2)
    return time.perf_counter() - t0, m, per_stage


def _tree_rss_peak(proc: subprocess.Popen, interval: float = 0.05) -> float:
    """Poll until `proc` exits; the peak of the summed RSS of it and all its descendants (MiB).

    Sampling /proc (psutil) rather than rusage: ru_maxrss of a child forked from this (large)
    process carries the parent's high-water mark across exec, and it never sums the workers.
    """
    import psutil

    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(interval)
    if proc.returncode != 0:
        raise RuntimeError(f"stage failed in the memory benchmark (exit {proc.returncode})")
    return peak / 2**20


def peak_rss_per_stage(src: Path, work: Path) -> dict[str, float]:
    """Run each stage CLI as a child process (as dvc repro does); peak RSS of it + its workers (MiB)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"].update(source="folder", root=str(src))
    work.mkdir(parents=True, exist_ok=True)
    pfile = work / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    d = DataLayout(work / "data")
    cmds = {
        "ingest": ["stages.ingest", "--out", str(d.manifest)],
        "filter": ["stages.filter", "--manifest", str(d.manifest), "--out", str(d.filtered),
                   "--rejects", str(d.rejects)],
        "align": ["stages.align", "--filtered", str(d.filtered), "--out-dir", str(d.aligned_dir),
                  "--out", str(d.aligned), "--rejects", str(d.align_rejects)],
        "segment": ["stages.segment", "--aligned", str(d.aligned), "--aligned-dir", str(d.aligned_dir),
                    "--out-dir", str(d.parsing_dir), "--out", str(d.segments)],
        "threedmm": ["stages.threedmm", "--aligned", str(d.aligned), "--aligned-dir", str(d.aligned_dir),
                     "--mesh-dir", str(d.mesh_dir), "--out", str(d.threedmm),
                     "--model-out", str(d.threedmm_model), "--rejects", str(d.threedmm_rejects)],
        "split": ["stages.split", "--table", str(d.threedmm), "--out", str(d.splits)],
    }
    out = {}
    for name, args in cmds.items():
        proc = subprocess.Popen([sys.executable, "-m", *args, "--params", str(pfile), "--cache-dir", str(d.cache)],
                                cwd=REPO, stdout=subprocess.DEVNULL)
        out[name] = _tree_rss_peak(proc)
    return out


def ray_vs_local(corpus: Path, tmp: Path, t_local: float, m_local: dict) -> dict:
    """The same stages on a local Ray (2 actors per stage): Ray's start-up apart, then the stages."""
    from faceswap.core import ray_env

    t = time.perf_counter()
    ray_env.connect(None, num_cpus=2, num_gpus=0, object_store_mb=PARAMS.prep.object_store_mb)
    start = time.perf_counter() - t
    try:
        t_ray, m_ray, s_ray = run_stages(corpus, tmp / "wray", workers=2, executor="ray")
    finally:
        ray_env.shutdown()
    same = all(m_ray[k] == m_local[k] for k in ("filter", "align", "split"))
    return {"ray_start_seconds": start, "seconds_ray_2_actors": t_ray, "stage_seconds_ray": s_ray,
            "ray_over_local": t_ray / t_local, "ray_metrics_equal_local": same}


def retinaface_cpu(n: int = 6) -> float:
    """RetinaFace-R50 images/s at 640 px on CPU (random weights: speed only)."""
    import torch

    from faceswap.data.demo_corpus import base_astronaut
    from faceswap.faces.detectors import RetinaFaceDetector, build_retinaface

    with tempfile.TemporaryDirectory() as tmp:
        torch.save(build_retinaface().state_dict(), f"{tmp}/r50.pth")
        det = RetinaFaceDetector(replace(PARAMS.detect, backend="retinaface", retinaface_weights=f"{tmp}/r50.pth",
                                         max_side=640))
        img = np.asarray(np.tile(base_astronaut(320), (2, 2, 1)))  # 640 x 640
        det.detect(img)
        t = time.perf_counter()
        for _ in range(n):
            det.detect(img)
        return n / (time.perf_counter() - t)


def dvc_noop_seconds(src: Path, tmp: Path) -> tuple[float, float]:
    """Clone the repo, `dvc repro split` (all data stages) once, then again with nothing changed: seconds."""
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["ingest"].update(source="folder", root=str(src))
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    t = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q", "split"], cwd=clone, env=env, check=True, stdout=subprocess.DEVNULL)
    full = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(["dvc", "repro", "-q", "split"], cwd=clone, env=env, check=True, stdout=subprocess.DEVNULL)
    return full, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identities", type=int, default=40)
    p.add_argument("--per-identity", type=int, default=25)
    p.add_argument("--json", default="bench-results/data_prep.json")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        corpus = build_demo_corpus(tmp / "corpus", a.identities, a.per_identity)
        files = sorted(f for f in corpus.rglob("*") if f.is_file() and not f.name.startswith("."))
        n = len(files)
        r: dict = {"images": n, "input_px": 512}
        t1, _, s1 = run_stages(corpus, tmp / "w1", workers=1)
        t2, m2, s2 = run_stages(corpus, tmp / "w2", workers=2)
        r.update(ray_vs_local(corpus, tmp, t2, m2))
        r.update(seconds_1_worker=t1, seconds_2_workers=t2, images_per_s_1_worker=n / t1,
                 images_per_s_2_workers=n / t2, speedup_2_vs_1=t1 / t2,
                 stage_seconds_1_worker=s1, stage_seconds_2_workers=s2, accepted=m2["filter"]["accepted"])
        # Incremental: full run on ~90% of the files, then add the other ~10% and re-run.
        part = tmp / "partial"
        rng = np.random.default_rng(0)
        held = set(rng.choice(n, size=max(1, n // 10), replace=False).tolist())
        for i, f in enumerate(files):
            if i not in held:
                dst = part / f.relative_to(corpus)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dst)
        run_stages(part, tmp / "inc", workers=2)
        for i in held:
            dst = part / files[i].relative_to(corpus)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(files[i], dst)
        t_inc, _, s_inc = run_stages(part, tmp / "inc", workers=2)
        r.update(seconds_rerun_after_10pct_new=t_inc, rerun_fraction_of_full=t_inc / t2, stage_seconds_rerun=s_inc)
        r["peak_rss_mib"] = peak_rss_per_stage(corpus, tmp / "mem")
        r["retinaface_r50_cpu_images_per_s"] = retinaface_cpu()
        full, noop = dvc_noop_seconds(corpus, tmp)
        r.update(dvc_repro_full_seconds=full, dvc_repro_noop_seconds=noop)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(r)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


def print_report(r: dict) -> None:
    ok = lambda cond: "PASS" if cond else "FAIL"  # noqa: E731
    peak = max(r["peak_rss_mib"].values())
    rows = [
        ("images (demo corpus, 512 px)", f"{r['images']}", ""),
        ("end to end, 1 worker", f"{r['images_per_s_1_worker']:.1f} img/s", ""),
        ("end to end, 2 workers", f"{r['images_per_s_2_workers']:.1f} img/s", f"goal >= 10: {ok(r['images_per_s_2_workers'] >= 10)}"),
        ("2 workers / 1 worker", f"{r['speedup_2_vs_1']:.2f}x", f"goal >= 1.7: {ok(r['speedup_2_vs_1'] >= 1.7)}"),
        ("end to end, prep.executor ray, 2 actors", f"{r['images'] / r['seconds_ray_2_actors']:.1f} img/s",
         f"ray / local time {r['ray_over_local']:.2f}x; same outputs: {ok(r['ray_metrics_equal_local'])}"),
        ("  Ray start-up (local, not in the above)", f"{r['ray_start_seconds']:.1f} s", ""),
        ("re-run after +10% images / full run", f"{r['rerun_fraction_of_full']:.2f}", f"goal <= 0.20: {ok(r['rerun_fraction_of_full'] <= 0.2)}"),
        ("peak RSS of any stage", f"{peak:.0f} MiB", f"goal <= 2048: {ok(peak <= 2048)}"),
        *[(f"  peak RSS {k}", f"{v:.0f} MiB", "") for k, v in r["peak_rss_mib"].items()],
        *[(f"  seconds {k} (1w / 2w / ray / re-run)", f"{r['stage_seconds_1_worker'][k]:.1f} / {v:.1f} / "
           f"{r['stage_seconds_ray'][k]:.1f} / {r['stage_seconds_rerun'][k]:.1f}", "")
          for k, v in r["stage_seconds_2_workers"].items()],
        ("RetinaFace R50, CPU, 640 px", f"{r['retinaface_r50_cpu_images_per_s']:.2f} img/s", ""),
        ("dvc repro, full (clone)", f"{r['dvc_repro_full_seconds']:.1f} s", ""),
        ("dvc repro, nothing changed", f"{r['dvc_repro_noop_seconds']:.1f} s", f"goal <= 5: {ok(r['dvc_repro_noop_seconds'] <= 5)}"),
    ]
    w = max(len(a) for a, _, _ in rows)
    print("\nData preparation benchmark (offline default backends, this machine, one run)")
    for a, b, c in rows:
        print(f"  {a:<{w}}  {b:>14}  {c}")


if __name__ == "__main__":
    raise SystemExit(main())
