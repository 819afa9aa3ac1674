"""Connecting to Ray: one place for the quiet local settings and the workers' runtime environment,
shared by data preparation (faceswap/core/executor.py) and training (faceswap/training/ray_runner.py)."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

# Quiet Ray for local runs (set before `import ray`): no usage stats, no auth prompts, no
# dashboard; Train V2's controller-state log lines go to Ray's session logs, not the console.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "1",
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def quiet_worker() -> None:
    """Ray worker-process setup hook: Train V2's placement-group cleaner polls the State API, which
    needs the dashboard we leave off locally, and would warn every second that it is unavailable; its
    autoscaling-coordinator client prints a traceback when a resource request to the (local, no-op)
    autoscaler takes over 5 s, as it does on a loaded machine (Ray's message: "safe to ignore")."""
    for name in ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                 "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"):
        logging.getLogger(name).setLevel(logging.ERROR)


def runtime_env() -> dict:
    """What every Ray worker inherits: the quiet settings, the progress/cache switches, and the project
    root on PYTHONPATH (stage modules import from there; workers run in another directory)."""
    env_vars = {k: os.environ[k] for k in list(RAY_ENV) + ["FACESWAP_NO_PROGRESS", "FACESWAP_CACHE_DIR"]
                if k in os.environ}
    if env_vars.get("FACESWAP_CACHE_DIR"):
        env_vars["FACESWAP_CACHE_DIR"] = str(Path(env_vars["FACESWAP_CACHE_DIR"]).resolve())
    env_vars["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": env_vars, "worker_process_setup_hook": "faceswap.core.ray_env.quiet_worker"}


def connect(address: str | None, *, num_cpus: int, num_gpus: int | None, object_store_mb: int) -> None:
    """Join `address` (a cluster from `ray start --head`), or start a small local Ray with no dashboard;
    nothing when this process is already connected (a flow that runs several stages pays start-up once)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
    import ray

    if ray.is_initialized():
        return
    common = dict(logging_level=logging.WARNING, log_to_driver=True, configure_logging=True,
                  runtime_env=runtime_env())
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, num_cpus), num_gpus=num_gpus, include_dashboard=False,
                 object_store_memory=object_store_mb * 1024 * 1024, **common)


def shutdown() -> None:
    """Disconnect from Ray if this process is connected (imports nothing otherwise)."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
