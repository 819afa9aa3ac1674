"""MLflow tracking for the training stages: one run per stage, nested under a parent run.

The driver (stage process) opens the run with `start_stage_run`; Ray workers get only the run id
and log through `MlflowSink` (rank 0 only), so no worker needs an active-run context. A run is
nested under the run named by the env var FACESWAP_MLFLOW_PARENT_RUN_ID (set by the lead's
`dvc repro` wrapper / Prefect flow) or under the run active in this process.

Tracking URI: params `train.mlflow_tracking_uri`, overridden by env FACESWAP_MLFLOW_TRACKING_URI;
default `sqlite:///mlflow.db`. Relative sqlite paths and the artifact folder are made absolute in
the driver, so workers with another working directory write to the same store. "" disables MLflow.
Browse with: `mlflow ui --backend-store-uri sqlite:///mlflow.db`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from faceswap.core.config import flatten
from faceswap.core.io import absolute_tracking_uri
from faceswap.training.loop import MetricsSink

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "FACESWAP_MLFLOW_PARENT_RUN_ID"


@dataclass(frozen=True)
class RunRef:
    """Enough to log into an existing run from any process."""

    tracking_uri: str
    run_id: str


def _quiet_mlflow() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.utils.requirements_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _client(uri: str) -> Any:
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, artifact_root: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_root).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another stage
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def parent_run_id() -> str | None:
    """The parent run: env FACESWAP_MLFLOW_PARENT_RUN_ID, else the run active in this process."""
    env = os.environ.get(PARENT_RUN_ENV)
    if env:
        return env
    with contextlib.suppress(Exception):
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            return run.info.run_id
    return None


@contextlib.contextmanager
def stage_run(stage: str, *, tracking_uri: str, experiment: str, artifact_root: str,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None
              ) -> Iterator[RunRef | None]:
    """Open (and finish) one MLflow run for a stage; yields None when tracking is off ("")."""
    if not tracking_uri:
        yield None
        return
    uri = absolute_tracking_uri(tracking_uri)
    client = _client(uri)
    exp_id = _experiment_id(client, experiment, artifact_root)
    all_tags = {"mlflow.runName": stage, "faceswap.stage": stage, **(tags or {})}
    parent = parent_run_id()
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, tags=all_tags)
    ref = RunRef(uri, run.info.run_id)
    if params:
        log_params(ref, params)
    status = "FAILED"
    try:
        yield ref
        status = "FINISHED"
    finally:
        client.set_terminated(ref.run_id, status=status)


def log_params(ref: RunRef, params: Mapping[str, Any]) -> None:
    """Flatten nested params to dotted keys (values truncated to MLflow's 6000 chars)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(params).items())]
    client = _client(ref.tracking_uri)
    for i in range(0, len(items), 100):
        client.log_batch(ref.run_id, params=items[i:i + 100])


def log_artifacts(ref: RunRef | None, path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Upload a file or folder (e.g. the final weights) to the run."""
    if ref is None:
        return
    client = _client(ref.tracking_uri)
    p = Path(path)
    if p.is_dir():
        client.log_artifacts(ref.run_id, str(p), artifact_path)
    else:
        client.log_artifact(ref.run_id, str(p), artifact_path)


def log_final_metrics(ref: RunRef | None, metrics: Mapping[str, float], step: int) -> None:
    if ref is not None:
        MlflowSink(ref).log_metrics({f"final/{k}": v for k, v in metrics.items()}, step)


class MlflowSink(MetricsSink):
    """Rank-0 sink: per-step metrics with log_batch, sample grids as PNG artifacts."""

    def __init__(self, ref: RunRef) -> None:
        self.ref = ref
        self.client = _client(ref.tracking_uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        try:
            self.client.log_batch(self.ref.run_id, metrics=ms)
        except Exception as e:  # tracking must never stop training
            log.warning("MLflow log_batch failed at step %d: %s", step, e)

    def log_image(self, image: Any, name: str) -> None:
        try:
            self.client.log_image(self.ref.run_id, image, artifact_file=name)
        except Exception as e:
            log.warning("MLflow log_image %s failed: %s", name, e)


def run_under_parent(cmd: list[str], *, tracking_uri: str, experiment: str, artifact_root: str,
                     run_name: str = "pipeline", cwd: str | os.PathLike | None = None) -> int:
    """Run `cmd` (e.g. `dvc repro`) inside one parent MLflow run: every stage run it starts nests under it
    (the child processes see PARENT_RUN_ENV). Returns the command's exit code; the parent run is
    FINISHED on 0, FAILED otherwise. Tracking off ("") just runs the command."""
    import subprocess

    if not tracking_uri:
        return subprocess.call(cmd, cwd=cwd)
    uri = absolute_tracking_uri(tracking_uri)
    client = _client(uri)
    run = client.create_run(_experiment_id(client, experiment, artifact_root),
                            tags={"mlflow.runName": run_name, "faceswap.command": " ".join(cmd)})
    code = 1
    try:
        code = subprocess.call(cmd, cwd=cwd, env={**os.environ, PARENT_RUN_ENV: run.info.run_id,
                                                  "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", uri)})
    finally:
        client.set_terminated(run.info.run_id, status="FINISHED" if code == 0 else "FAILED")
    return code


def main(argv: list[str] | None = None) -> int:
    """`python -m faceswap.training.tracking [--params F] -- dvc repro ...`: the command under a parent run."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--run-name", default="pipeline")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("give the command after --, e.g. -- dvc repro")
    from faceswap.core.config import from_dict, load_params
    from faceswap.training.config import TrainConfig

    params = load_params(a.params) if Path(a.params).is_file() else {}
    train = from_dict(TrainConfig, params.get("train", {}), "train")
    return run_under_parent(cmd, tracking_uri=train.tracking_uri, experiment=train.mlflow_experiment,
                            artifact_root=train.mlflow_artifact_root, run_name=a.run_name)


if __name__ == "__main__":
    raise SystemExit(main())
