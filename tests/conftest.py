"""Shared fixtures for the data-stage tests: a tiny demo corpus, real face images, bad inputs."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("FACESWAP_NO_PROGRESS", "1")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
import flows  # noqa: E402,F401  (sets flows.FLOW_ENV: no Prefect / Ray / DVC telemetry, no Ray auth prompt)
# Prefect configures logging when first imported (logging.config.dictConfig), which closes every existing
# handler: absl's (mediapipe's) holds the stderr pytest captures, and closing it broke the session when a
# test imported Prefect after a data-stage test had loaded mediapipe. Importing it first avoids that.
import prefect.main  # noqa: E402,F401  (prefect itself imports lazily)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def face_rgb() -> np.ndarray:
    """A real photographic face (scikit-image's astronaut, public domain), (512, 512, 3) uint8."""
    from faceswap.data.demo_corpus import base_astronaut

    return base_astronaut(512)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A 5-identity x 4-image demo corpus (plus the bad extras), built once per session."""
    from faceswap.data.demo_corpus import build_demo_corpus

    return build_demo_corpus(tmp_path_factory.mktemp("corpus") / "raw", identities=5, per_identity=4)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server + database for the whole session (shared by every flow test)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def cfgs():
    """Default stage configs with one worker (tests stay in-process and fast)."""
    from paramsutil import section

    return {
        "ingest": section("ingest", source="folder"),
        "detect": section("detect"),
        "filter": section("filter", workers=1),
        "align": section("align", workers=1),
        "segment": section("segment", workers=1),
        "threedmm": section("threedmm", workers=1, n_shape=3, n_exp=3),
        "split": section("split"),
    }

