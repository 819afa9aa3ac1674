"""register stage: gates, champion/challenger promotion, the pyfunc logged from code (no pickle), loaded by
alias and served over REST, model card, fingerprint, concurrency.

MLflow runs against a temporary sqlite database and artifact root; the swap model is a tiny random
bundle (32x32 generator) and the faces are two identities of the tiny demo corpus.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from faceswap.core.config import ConfigError, from_dict
from faceswap.evaluation.gates import resolve_bound
from faceswap.core.images import read_rgb
from faceswap.serving import registry as R
from paramsutil import RAW, section  # noqa: E402

NAME = "flowfacepp"  # the registered model of the flowfacepp bundles these tests make (params register.model_names)
GATES = {"model.shape_error": {"max": 0.5}, "model.id_top1": {"min": "baselines.copy_target.id_top1"}}


def write_eval(path: Path, id_top1: float, shape_error: float = 0.3) -> Path:
    path.write_text(json.dumps({"model": {"id_top1": id_top1, "shape_error": shape_error},
                                "baselines": {"copy_target": {"id_top1": 0.05, "shape_error": 0.9},
                                              "paste_source": {"id_top1": 1.0, "shape_error": 0.0}}}))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    import torch

    from faceswap.artifacts import save_bundle
    from faceswap_models.config import SwapConfig
    from faceswap_models.swap import SwapGenerator

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("bundle"), SwapGenerator(SwapConfig.tiny()), align_size=32,
                       template_scale=1.4, meta={"step": 3, "run": "test"}, detect=section("detect"))


@pytest.fixture(scope="module")
def pair(tiny_corpus) -> tuple[np.ndarray, np.ndarray]:
    """Two real face photos of different identities (demo corpus, 512 px)."""
    return read_rgb(tiny_corpus / "id_000" / "000.jpg"), read_rgb(tiny_corpus / "id_001" / "000.jpg")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A temporary tracking URI set through $MLFLOW_TRACKING_URI (which wins over params)."""
    root = tmp_path_factory.mktemp("mlflow")
    mp_ = pytest.MonkeyPatch()
    mp_.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    yield root
    mp_.undo()


def use(root: Path):
    """Point the fluent API at `root`'s database; returns a client for it."""
    import mlflow

    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def make_cfg(root: Path, **kw) -> R.RegisterConfig:
    return section("register", tracking_uri="sqlite:///ignored.db", artifact_root=str(root / "artifacts"),
                            gates=GATES, lock_timeout_s=120.0, **kw)


# --------------------------------------------------------------------------- pure functions
def test_gates_pass_fail_missing_and_path_bounds():
    m = {"model": {"id_top1": 0.4, "shape_error": 0.6, "bad": float("nan")}, "baselines": {"copy": {"id_top1": 0.5}}}
    res = R.check_gates(m, {"model.shape_error": {"max": 0.5}, "model.id_top1": {"min": "baselines.copy.id_top1"},
                            "model.missing": {"min": 0}, "model.bad": {"max": 1.0}}, "model.id_top1")
    by = {(r["metric"], r["op"]): r for r in res}
    assert by[("model.id_top1", "finite")]["passed"] and by[("model.id_top1", "finite")]["value"] == 0.4
    assert not by[("model.shape_error", "max")]["passed"] and "0.6 > 0.5" in by[("model.shape_error", "max")]["detail"]
    assert not by[("model.id_top1", "min")]["passed"] and "baselines.copy.id_top1" in by[("model.id_top1", "min")]["detail"]
    assert not by[("model.missing", "min")]["passed"] and "'missing'" in by[("model.missing", "min")]["detail"]
    assert not by[("model.bad", "max")]["passed"]
    ok = R.check_gates(m, {"model.shape_error": {"max": 0.7, "min": 0.1}}, "model.id_top1")
    assert [r["passed"] for r in ok] == [True, True, True]
    assert not R.check_gates(m, {}, "model.nope")[0]["passed"]  # an unrankable model never passes
    assert R.is_better(0.5, 0.4, True) and not R.is_better(0.5, 0.5, True) and R.is_better(0.1, 0.2, False)


def test_gate_expressions_lists_and_shortfall():
    m = {"model": {"id_top1": 0.19, "pose": 20.0}, "baselines": {"copy": {"id_top1": 0.05}, "paste": {"pose": 15.0}},
         "gallery": {"chance_top1": 0.1}}
    assert resolve_bound(m, "baselines.copy.id_top1 + 0.2") == pytest.approx(0.25)
    assert resolve_bound(m, "3 * gallery.chance_top1") == pytest.approx(0.3)
    assert resolve_bound(m, "2 * baselines.paste.pose - 1.5") == pytest.approx(28.5)
    assert resolve_bound(m, 0.9) == 0.9
    res = R.check_gates(m, {"model.id_top1": {"min": ["baselines.copy.id_top1 + 0.2", "3 * gallery.chance_top1"]},
                            "model.pose": {"max": "baselines.paste.pose"}}, "model.id_top1")
    assert [r["passed"] for r in res] == [True, False, False, False]
    assert res[1]["limit"] == pytest.approx(0.25) and res[1]["shortfall"] == pytest.approx(0.06)
    assert "short by 0.06" in res[1]["detail"] and "(baselines.copy.id_top1 + 0.2)" in res[1]["detail"]
    assert res[2]["shortfall"] == pytest.approx(0.11) and "short by 0.11" in res[2]["detail"]
    assert res[3]["shortfall"] == pytest.approx(5.0) and "over by 5" in res[3]["detail"]
    m["model"]["id_top1"], m["model"]["pose"] = 0.31, 14.0
    assert all(r["passed"] for r in R.check_gates(m, {"model.id_top1": {"min": ["baselines.copy.id_top1 + 0.2",
                                                                                  "3 * gallery.chance_top1"]},
                                                       "model.pose": {"max": "baselines.paste.pose"}}, "model.id_top1"))
    missing = R.check_gates(m, {"model.id_top1": {"min": "2 * gallery.nope"}}, "model.id_top1")[1]
    assert not missing["passed"] and "'nope'" in missing["detail"]


def test_default_gates_fail_noise_copy_and_paste_and_pass_a_swap():
    """The params.yaml gates on eval.json-shaped numbers: a noise model (no faces), "copy target"
    and "paste source" all fail, each on its own gate (paste: pose; its expression error is the
    expression gate's bound, so it ties there and one a little worse fails); a model between the
    baselines passes."""
    from faceswap.core.config import load_section

    cfg = load_section(R.RegisterConfig, "register", Path(__file__).resolve().parents[1] / "params.yaml")
    copy = {"detection_rate": 1.0, "id_top1": 0.02, "pose_error_deg": 1.5, "expression_deviation_error": 0.9}
    paste = {"detection_rate": 1.0, "id_top1": 0.95, "pose_error_deg": 17.0, "expression_deviation_error": 1.8}
    base = {"baselines": {"copy_target": copy, "paste_source": paste}, "gallery": {"chance_top1": 1 / 60}}

    def failed(model: dict) -> set[str]:
        return {g["metric"] for g in R.check_gates({**base, "model": model}, cfg.gates, cfg.primary_metric)
                if not g["passed"]}

    noise = {"detection_rate": 0.0, "id_top1": 0.0, "pose_error_deg": None, "expression_deviation_error": None}
    assert failed(noise) == {"model.detection_rate", "model.id_top1", "model.pose_error_deg", "model.expression_deviation_error"}
    assert failed(copy) == {"model.id_top1"}
    assert failed(paste) == {"model.pose_error_deg"}
    assert failed({**paste, "expression_deviation_error": 1.81}) == {"model.pose_error_deg", "model.expression_deviation_error"}
    assert failed({"detection_rate": 0.97, "id_top1": 0.5, "pose_error_deg": 6.0, "expression_deviation_error": 1.2}) == set()


def test_config_rejects_malformed_gates():
    with pytest.raises(ConfigError, match="gates.model.x"):
        from_dict(R.RegisterConfig, {**RAW["register"], "gates": {"model.x": {"above": 1}}}, "register")
    with pytest.raises(ConfigError, match="not a number"):
        from_dict(R.RegisterConfig, {**RAW["register"], "gates": {"model.x": {"min": True}}}, "register")
    assert from_dict(R.RegisterConfig, {**RAW["register"], "gates": {"a.b": {"min": 0, "max": "c.d"}}}, "register").gates["a.b"]["max"] == "c.d"
    with pytest.raises(ConfigError, match="expression"):
        from_dict(R.RegisterConfig, {**RAW["register"], "gates": {"model.x": {"min": ["c.d + 1", "c.d ** 2"]}}}, "register")
    with pytest.raises(ConfigError, match="expression"):
        from_dict(R.RegisterConfig, {**RAW["register"], "gates": {"model.x": {"min": "__import__('os')"}}}, "register")


def test_pip_requirements_are_pinned_from_requirements(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("torch==2.14.1  # cpu\nray[train]==2.60.0\npyyaml\n")
    pins = R.pip_requirements(req, ("torch", "ray", "pyyaml", "surely-not-installed-pkg"))
    import yaml as _yaml

    assert pins[:2] == ["torch==2.14.1", "ray==2.60.0"]
    assert pins[2] == f"pyyaml=={_yaml.__version__}" and len(pins) == 3


def test_fingerprint_reads_dvc_lock_and_tolerates_no_git(tmp_path):
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  split:\n    outs:\n    - path: data/splits.parquet\n"
                                       "      hash: md5\n      md5: abc123\n")
    fp = R.data_fingerprint(tmp_path / "dvc.lock", repo=tmp_path)
    assert fp["stages"] == {"split": {"data/splits.parquet": "abc123"}} and len(fp["dvc_lock_sha256"]) == 64
    assert fp["git_commit"] is None
    assert len(R.data_fingerprint(tmp_path / "absent.lock", repo=".")["git_commit"] or "x" * 40) == 40


# --------------------------------------------------------------------------- registry
@pytest.fixture(scope="module")
def sequence(registry, bundle, pair, tmp_path_factory):
    """Four registrations: 0.5 (first) -> 0.4 (worse) -> 0.9 with a failed gate -> 0.7 (better)."""
    work = tmp_path_factory.mktemp("seq")
    cfg = make_cfg(registry)
    params = work / "params.yaml"
    params.write_text("register:\n  model_names: {flowfacepp: flowfacepp}\ntrain_swap:\n  lr: 0.0001\n")
    reports = []
    for i, (top1, shape) in enumerate([(0.5, 0.3), (0.4, 0.3), (0.9, 0.8), (0.7, 0.2)]):
        ev = write_eval(work / f"eval{i}.json", top1, shape)
        reports.append(R.register_model(cfg, bundle, ev, pair, work / f"register{i}.json", params_path=params))
    return cfg, reports, work, registry


def test_champion_moves_only_when_gates_pass_and_better(sequence):
    cfg, reports, work, root = sequence
    assert [r["version"] for r in reports] == [1, 2, 3, 4]
    assert [r["champion_version"] for r in reports] == [1, 1, 1, 4]
    assert [r["aliases_moved"] for r in reports] == [["challenger", "champion"], ["challenger"], ["challenger"],
                                                     ["challenger", "champion"]]
    assert "no champion yet" in reports[0]["reason"] and "does not beat" in reports[1]["reason"]
    assert not reports[2]["gates_passed"] and reports[2]["reason"].startswith("gate failed")
    assert "0.7 beats champion v1 (0.5)" in reports[3]["reason"]
    saved = json.loads((work / "register2.json").read_text())
    assert saved["version"] == 3 and any(not g["passed"] and g["metric"] == "model.shape_error" for g in saved["gates"])
    client = use(root)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 4
    assert int(client.get_model_version_by_alias(NAME, "challenger").version) == 4
    assert client.get_model_version(NAME, "3").tags["gates_passed"] == "False"


def test_model_card_fingerprint_and_metrics_logged(sequence, tmp_path):
    import mlflow

    cfg, reports, _, root = sequence
    client = use(root)
    run = client.get_run(reports[3]["run_id"])
    assert run.data.metrics["model.id_top1"] == pytest.approx(0.7)
    assert run.data.metrics["baselines.copy_target.id_top1"] == pytest.approx(0.05)
    assert run.data.params["train_swap.lr"] == "0.0001" and run.data.params["bundle.step"] == "3"
    card = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/model_card.md")
    for part in ("Intended use", "Limitations", "Provenance marking", "| id_top1 | 0.7 | 0.05 | 1 |",
                 f"v{reports[3]['version']}", run.info.run_id):
        assert part in card
    fp = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/fingerprint.json")
    assert set(fp) >= {"git_commit", "dvc_lock_sha256", "stages"} and run.data.tags["git_commit"] == (fp["git_commit"] or "unknown")
    mv = client.get_model_version(NAME, "4")
    assert mv.description.startswith("# Model card: flowfacepp v4") and mv.tags["primary_value"] == "0.7"
    mlmodel = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/4", dst_path=str(tmp_path)))
    reqs = (mlmodel / "requirements.txt").read_text()
    assert "torch==2.14.1" in reqs and "mlflow==" in reqs
    assert (mlmodel / "artifacts" / "bundle" / "generator.json").is_file()
    assert (mlmodel / "code" / "faceswap" / "serving" / "pyfunc.py").is_file()
    assert (mlmodel / "code" / "faceswap_models" / "swap.py").is_file()
    sig = json.loads(json.dumps(mlflow.models.get_model_info(f"models:/{NAME}/4").signature.to_dict()))
    assert '"source"' in sig["inputs"] and '"binary"' in sig["outputs"]


def test_champion_alias_loads_pyfunc_and_swaps_a_real_pair(sequence, pair):
    pytest.importorskip("faceswap.serving.inference")
    import mlflow.pyfunc
    from PIL import Image

    from faceswap.serving.pyfunc import input_example

    cfg, _, _, root = sequence
    use(root)
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # a cloudpickled model would refuse to load
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = input_example(*pair)
    frame.loc[1] = [frame.loc[0, "source"], b"not an image"]
    out = model.predict(frame)
    assert list(out.columns) == ["swapped", "error"] and out.loc[0, "error"] == ""
    png = out.loc[0, "swapped"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    assert img.size == (pair[1].shape[1], pair[1].shape[0]) and img.mode == "RGB"
    from faceswap.serving import watermark

    assert watermark.detect(np.asarray(img)).found and "faceswap-pipeline" in watermark.read_metadata(png)
    assert np.abs(np.asarray(img).astype(int) - pair[1]).max() > 0  # the face region changed
    assert out.loc[1, "swapped"] == b"" and out.loc[1, "error"].startswith("undecodable")


def test_the_model_is_logged_from_code_without_pickle_or_its_warning(bundle, pair, tmp_path, monkeypatch):
    """models-from-code: MLmodel names the code file, nothing is pickled, MLflow's cloudpickle warning is gone."""
    import mlflow
    import yaml

    from faceswap.serving.pyfunc import MODEL_CODE

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    mlflow_logger = logging.getLogger("mlflow")  # MLflow's loggers do not propagate to the root (caplog)
    mlflow_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = R.register_model(make_cfg(tmp_path), bundle, write_eval(tmp_path / "e.json", 0.5), pair)
    finally:
        mlflow_logger.removeHandler(handler)
    said = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    assert records and not [m for m in said if "pickle" in m.lower()], said
    use(tmp_path)
    local = Path(mlflow.artifacts.download_artifacts(report["model_uri"], dst_path=str(tmp_path / "dl")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert Path(flavor["model_code_path"]).name == MODEL_CODE.name and "python_model" not in flavor
    assert (local / MODEL_CODE.name).read_text() == MODEL_CODE.read_text()
    assert flavor["artifacts"]["bundle"]["path"] == "artifacts/bundle"
    assert not [p.name for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]


# --------------------------------------------------------------------------- REST serving
def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model_uri: str, workdir: Path, timeout_s: float = 120.0):
    """`mlflow models serve` on 127.0.0.1 (a new process group); yields its base URL once /ping answers 200,
    and always stops the whole group (SIGTERM, then SIGKILL after 15 s)."""
    port = free_port()
    bindir = str(Path(sys.executable).parent)  # the server runs `uvicorn` from PATH
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    log = workdir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            assert proc.poll() is None, f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no /ping within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def test_rest_serving_by_alias_swaps_like_the_loaded_model(sequence, pair, tmp_path):
    """`mlflow models serve -m models:/flowfacepp@challenger` (pickle loading disallowed): /invocations with
    base64 image cells returns, per row, the same swap as the in-process pyfunc, or the row's error."""
    import mlflow.pyfunc
    from PIL import Image

    from faceswap.serving import watermark
    from faceswap.serving.pyfunc import decode_cell, input_example

    _, _, _, root = sequence
    use(root)
    frame = input_example(*pair)
    local = mlflow.pyfunc.load_model(f"models:/{NAME}@challenger").predict(frame)
    cells = [base64.b64encode(b).decode("ascii") for b in (frame.loc[0, "source"], frame.loc[0, "target"])]
    body = {"dataframe_split": {"columns": ["source", "target"],
                                "data": [cells, [cells[0], base64.b64encode(b"not an image").decode("ascii")]]}}
    with served(f"models:/{NAME}@challenger", tmp_path) as url:
        req = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            rows = json.loads(r.read())["predictions"]
    assert [row["error"] for row in rows[:1]] == [""] and rows[1]["error"].startswith("undecodable")
    png = base64.b64decode(rows[0]["swapped"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and base64.b64decode(rows[1]["swapped"]) == b""
    served_rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    local_rgb = np.asarray(Image.open(io.BytesIO(local.loc[0, "swapped"])).convert("RGB"))
    target = decode_cell(frame.loc[0, "target"]).astype(int)
    assert served_rgb.shape == target.shape and watermark.detect(served_rgb).found
    assert (np.abs(served_rgb - target) > 8).mean() > 0.05  # the face was swapped (31 % of the values, measured)
    assert np.abs(served_rgb.astype(int) - local_rgb).max() <= 2  # the in-process model's output (identical, measured)


# --------------------------------------------------------------------------- concurrency
def _register_worker(root: str, bundle: str, eval_json: str, source: np.ndarray, target: np.ndarray, q) -> None:
    """Runs in a spawned process: one full registration against the shared database."""
    try:
        q.put(R.register_model(make_cfg(Path(root)), bundle, eval_json, (source, target)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put(f"{type(e).__name__}: {e}")


def test_two_concurrent_registrations_leave_a_consistent_registry(bundle, pair, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")  # fresh db: setup races too
    small = tuple(np.ascontiguousarray(p[::4, ::4]) for p in pair)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_register_worker, args=(str(tmp_path), str(bundle),
                                                        str(write_eval(tmp_path / f"e{v}.json", v)), *small, q))
             for v in (0.3, 0.8)]
    for p in procs:
        p.start()
    results = [q.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(r, dict) for r in results), results
    assert sorted(r["version"] for r in results) == [1, 2]
    best = next(r for r in results if r["primary_value"] == 0.8)
    client = use(tmp_path)
    assert int(client.get_model_version_by_alias("flowfacepp", "champion").version) == best["version"]
    assert int(client.get_model_version_by_alias("flowfacepp", "challenger").version) in (1, 2)
    assert len(client.search_model_versions("name='flowfacepp'")) == 2
