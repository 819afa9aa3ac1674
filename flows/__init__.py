"""Prefect flows: thin orchestration over the stage functions (no ML logic here).

Importing this package (which `python -m flows.<name>` does before the flow module) sets the
environment the flows need when they are run outside `make` (the Makefile exports the same):
no Prefect / Ray / DVC telemetry (Prefect's server-side telemetry service writes to its database at
start and printed a "database is locked" traceback when several processes shared it), no Ray auth
prompt, and a longer start-up wait for Prefect's temporary server on a busy machine. Values already
set in the environment win; Prefect and Ray read these when they are first imported.
"""
from __future__ import annotations

import os

FLOW_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",  # Prefect's client-side analytics
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # default 20 s; 2 loaded cores need more
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "DVC_NO_ANALYTICS": "1",
}

for _k, _v in FLOW_ENV.items():
    os.environ.setdefault(_k, _v)
