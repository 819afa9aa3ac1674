"""Fault tolerance under Ray Train: a worker process killed mid-run, and a clean end with loader workers.

The Ray runs go through the real stage CLI (`python -m stages.pretrain_mae`, the tiny MAE of
test_stages.TINY) with 2 Ray Train workers x 1 thread and 2 DataLoader workers each.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from faceswap.data.records import FaceDataset
from faceswap.training.checkpoint import latest_checkpoint, load_checkpoint
from faceswap.training.loop import train
from paramsutil import loop  # noqa: E402
from tinytasks import SIZE, mae_task  # noqa: E402
from training.test_stages import ROOT, data_args, write_params  # noqa: E402

STEPS, EVERY = 200, 10  # tiny MAE steps take ~10-30 ms: ~190 steps of margin for the kill to land
RAY = {"use_ray": True, "num_workers": 2, "threads_per_worker": 1, "loader_workers": 2, "object_store_mb": 80,
       "max_failures": 1, "checkpoint_every": EVERY, "sample_every": 0, "log_every": 1}
UNCLEAN = ("killed by signal", "terminate called", "exited unexpectedly")  # torch / C++ messages of a bad end


def _start(tables: dict, run: Path) -> subprocess.Popen:
    """The pretrain_mae stage CLI under Ray in `run` (params, output, checkpoints, metrics, console log)."""
    run.mkdir()
    params = write_params(run / "params.yaml", train=RAY, pretrain_mae={"steps": STEPS})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACESWAP_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stages.pretrain_mae", "--params", str(params), *data_args(tables),
           "--out-dir", str(run / "mae"), "--checkpoint-root", str(run / "ckpt"), "--metrics", str(run / "metrics.json")]
    with open(run / "console.log", "wb") as log:  # a file, not a pipe: Ray's console output must never block
        return subprocess.Popen(cmd, cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, run: Path) -> tuple[dict, str]:
    """Wait for the stage; (its metrics JSON, its console output)."""
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (run / "console.log").read_text("utf-8", errors="replace")
    assert proc.returncode == 0, out[-3000:]
    return json.loads((run / "metrics.json").read_text()), out


def _ray_train_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The Ray Train worker processes under `proc` (its own Ray instance only, never another one on the machine)."""
    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith("ray::RayTrainWorker"):
                found.append(p)
        except psutil.Error:  # exited meanwhile
            pass
    return found


def _kill_one_worker_after_a_checkpoint(proc: subprocess.Popen, ckpt_root: Path) -> tuple[int, int]:
    """SIGKILL one Ray Train worker once the first checkpoint exists; (its pid, the newest checkpoint step then)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        written = sorted(ckpt_root.glob("pretrain_mae/*/step_*.pt"))
        workers = _ray_train_workers(proc) if written else []
        if len(workers) == RAY["num_workers"]:
            victim = workers[-1]
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
            return victim.pid, int(written[-1].stem.split("_")[1])
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint with {RAY['num_workers']} live workers to kill (stage exit code {proc.poll()})")


def _final(run: Path) -> dict:
    return load_checkpoint(latest_checkpoint(next((run / "ckpt" / "pretrain_mae").iterdir())))


def _tensors(tree, prefix: str = ""):
    """(path, leaf) of every leaf of a checkpoint's nested dicts / lists."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def _losses(run: Path) -> list[dict]:
    """The per-step metrics rows, timings left out."""
    rows = [json.loads(ln) for ln in next((run / "ckpt" / "pretrain_mae").iterdir()).joinpath("metrics.jsonl")
            .read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s" and not k.startswith(("time/", "val/seconds"))}
            for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(train_tables, tmp_path_factory) -> tuple[Path, dict, str]:
    """One uninterrupted Ray run: (its folder, metrics, console output)."""
    run = tmp_path_factory.mktemp("ray_runs") / "uninterrupted"
    return (run, *_finish(_start(train_tables, run), run))


def test_a_ray_run_with_loader_workers_ends_cleanly(uninterrupted):
    """2 Ray workers, each with 2 DataLoader worker processes: the run ends with exit code 0, every loader
    worker stopped before its Ray worker ends (no abort, no "killed by signal" from torch), and nothing is
    left running."""
    run, metrics, out = uninterrupted
    assert metrics["steps"] == STEPS and metrics["resumed_from"] == 0
    assert out.count("Started training worker group of size 2") == 1
    assert not [m for m in UNCLEAN if m in out], out[-3000:]


def test_killed_ray_worker_restarts_the_group_and_the_weights_equal_an_uninterrupted_run(train_tables, tmp_path,
                                                                                         uninterrupted):
    """SIGKILL one Ray Train worker process (not the stage) after a checkpoint: Ray restarts the group, the loop
    resumes from the last checkpoint, the run finishes, and the final checkpoint (modules, optimizer, EMA,
    RNG states) and the saved weights equal the uninterrupted run's bit for bit."""
    straight, _, _ = uninterrupted
    run = tmp_path / "killed"
    proc = _start(train_tables, run)
    try:
        pid, seen = _kill_one_worker_after_a_checkpoint(proc, run / "ckpt")
    finally:
        metrics, out = _finish(proc, run)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # Ray saw the worker die and started a second group, which resumed from a checkpoint mid-run
    assert f"pid: {pid}" in out and out.count("Started training worker group of size 2") == 2
    assert metrics["steps"] == STEPS and seen <= metrics["resumed_from"] < STEPS
    assert metrics["resumed_from"] % EVERY == 0
    a, b = _final(straight), _final(run)
    assert a["step"] == b["step"] == STEPS and a["extra"] == b["extra"] and a["config"] == b["config"]
    leaves_a = dict(_tensors({k: a[k] for k in ("modules", "optimizers", "ema", "scaler", "rng")}))
    leaves_b = dict(_tensors({k: b[k] for k in ("modules", "optimizers", "ema", "scaler", "rng")}))
    assert leaves_a.keys() == leaves_b.keys()
    differ = [k for k, v in leaves_a.items()
              if not (torch.equal(v, leaves_b[k]) if torch.is_tensor(v) else v == leaves_b[k])]
    assert not differ, differ[:5]
    w_a, w_b = load_file(straight / "mae" / "mae.safetensors"), load_file(run / "mae" / "mae.safetensors")
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    # the same batches in the same order: every step's losses equal the uninterrupted run's
    assert _losses(run) == _losses(straight) and len(_losses(run)) == STEPS


class _FailsInEpoch1(Dataset):
    """The tiny faces until the loader reaches epoch 1, then an error raised in the loader worker."""

    def __init__(self, faces: FaceDataset) -> None:
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, key):
        if key[0] >= 1:
            raise RuntimeError("unreadable face")
        return self.faces[key]


@pytest.mark.parametrize("fails", [False, True])
def test_train_stops_its_loader_workers_before_returning_or_raising(fails, train_records, tmp_path):
    """With loader_workers > 0, `train` leaves no loader process alive, whether it returns or raises (the
    exception, whose traceback holds the loader iterator, is still alive when this is checked)."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    faces = FaceDataset(train_records, SIZE, seed=0)  # 16 faces: 4 batches of 4 per epoch
    cfg = loop(steps=6, batch_size=4, checkpoint_every=6, sample_every=0, loader_workers=2)
    if fails:
        with pytest.raises(RuntimeError, match="unreadable face") as raised:
            train(mae_task(), _FailsInEpoch1(faces), cfg, ckpt_dir=tmp_path, progress=False)
        assert raised.value is not None
    else:
        assert train(mae_task(), faces, cfg, ckpt_dir=tmp_path, progress=False).steps == 6
    left = [p for p in me.children(recursive=True) if p.pid not in before and _spawned_worker(p)]
    assert not left, [p.cmdline() for p in left]


def _spawned_worker(p: psutil.Process) -> bool:
    """A live multiprocessing 'spawn' child (a loader worker; not the long-lived resource tracker)."""
    try:
        return p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline())
    except psutil.Error:  # exited meanwhile
        return False
