"""The retraining flow with the *real* default trainer (stages/train_swap.py under Ray) and evaluator
(stages/evaluate.py), run the way a user runs it: from the project folder, with the relative paths
of params.yaml (data/, models/, checkpoints, sqlite:///mlflow.db, mlartifacts).

A temporary project mirrors "a clone after `make demo`": the data stages have run on a small demo
corpus and the upstream models (train_aux, pretrain_mae, train_shape; tiny, in-process) exist. Then
three photos of a new person arrive under data/raw/newperson/ and `retrain(...)` runs once (no
champion yet: from scratch, under Ray); with the resulting version made champion, one more photo
arrives and the second run fine-tunes from the champion's bundle (in-process: a second Ray worker
group would add ~40 s and nothing the first run does not cover).

The gate outcome itself is not asserted (the evaluation metrics and the gates change with the model);
only that it was decided and reported.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from prefectutil import latest_artifact

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "train": {"use_ray": True, "num_workers": 1, "threads_per_worker": 1, "checkpoint_every": 2, "sample_every": 0,
              "log_every": 1, "object_store_mb": 80, "ema_decay": 0.9, "max_failures": 0},
    "pretrain_mae": {"steps": 2, "batch_size": 4, "image_size": 32,
                     "model": {"patch_size": 8, "dim": 32, "depth": 1, "heads": 2, "decoder_dim": 16,
                               "decoder_depth": 1, "decoder_heads": 2, "mask_ratio": 0.75}},
    "train_aux": {"steps": 2, "batch_size": 4, "model": {"image_size": 32, "width": 8, "hidden": 32,
                                                         "n_shape": 2, "n_exp": 2}},
    "train_shape": {"steps": 2, "batch_size": 2, "image_size": 32,
                    "model": {"base_channels": 8, "max_channels": 16, "num_down": 3, "heatmap_sigma": 1.0},
                    "disc": {"base_channels": 8, "max_channels": 16, "num_down": 2}},
    "train_swap": {"steps": 3, "flow_start_step": 1, "val_every": 0, "batch_size": 2,
                   "fusion": {"heads": 2, "num_blocks": 1}, "decoder": {"channels": [16, 8, 8, 8]},
                   "disc": {"base_channels": 8, "max_channels": 16, "num_down": 2},
                   "weights": {}},  # the paper's loss weights: every term, the flow loss included
}


def _params(path: Path, **train: object) -> str:
    """The repository's params.yaml with tiny data / training / evaluation sizes; paths stay relative."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source="folder", root="data/raw")
    for section in ("filter", "align", "segment", "threedmm"):
        params[section]["workers"] = 1
    params["threedmm"].update(n_shape=2, n_exp=2)  # learned: n_shape <= identities - 1 (3 or more here)
    params["split"].update(val_frac=0.0, test_frac=0.5)
    params["evaluate"].update(pairs=4, batch_size=4, grid_rows=2)
    for section, values in TINY.items():
        params[section].update(values)
    params["train"].update(train)
    params["retrain"].update(source_root="data/raw")
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path.name


def _latest_report() -> str:
    return latest_artifact("retrain-report")


def _check_run(r: dict, proj: Path, *, version: int) -> str:
    """What every real run must leave behind: a trained bundle, eval.json, a registered version, a report."""
    from faceswap.artifacts import load_bundle

    assert r["status"] == "registered"
    assert r["train"]["steps"] == TINY["train_swap"]["steps"] and r["train"]["nonfinite_steps"] == 0
    bundle = load_bundle(proj / "models" / "swap" / "flowfacepp")
    assert bundle.meta["stage"] == "train_swap" and bundle.meta["steps"] == TINY["train_swap"]["steps"]
    assert Path(r["train"]["checkpoint_dir"]).is_relative_to(proj / "checkpoints")
    ev = json.loads((proj / "metrics" / "eval" / "flowfacepp.json").read_text())
    assert {"model", "baselines"} <= set(ev) and ev["model"] and ev["baselines"]
    assert r["eval"]["model"] == ev["model"]
    reg = json.loads((proj / "metrics" / "register" / "flowfacepp.json").read_text())
    assert reg["version"] == r["register"]["version"] == version and "challenger" in reg["aliases_moved"]
    assert isinstance(reg["gates_passed"], bool) and reg["reason"]
    report = _latest_report()
    assert "## Evaluation" in report and "## Registration" in report
    assert f"registered: models:/flowfacepp/{version}" in report and f"({reg['reason']})" in report
    return report


def test_retrain_with_the_real_trainer_and_evaluator_from_the_project_folder(
        prefect_harness, tiny_corpus, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from faceswap.training.ray_runner import shutdown_ray
    from faceswap.training.runs import DataPaths
    from flows.prepare import prepare
    from flows.retrain import retrain
    from stages import pretrain_mae, train_aux, train_shape

    for var in ("MLFLOW_TRACKING_URI", "FACESWAP_MLFLOW_TRACKING_URI", "FACESWAP_MLFLOW_PARENT_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    proj = tmp_path / "proj"
    raw = proj / "data" / "raw"
    shutil.copytree(tiny_corpus, raw, ignore=shutil.ignore_patterns(".demo_corpus.json"))
    held = sorted(raw.glob("id_*"))[-1]  # this identity's photos arrive later
    shutil.move(held, tmp_path / "held")
    monkeypatch.chdir(proj)  # everything below uses the relative paths of params.yaml, as a user does
    params = _params(proj / "params.yaml")
    upstream = _params(proj / "params-upstream.yaml", use_ray=False)

    # "after make demo": data stages + upstream models (in-process: no Ray start-up for these)
    prepare(params, "data", "metrics")
    data = DataPaths.of()  # data/aligned.parquet, ... (relative)
    train_aux.run(data, "models/aux", upstream)
    pretrain_mae.run(data, "models/mae", upstream)
    train_shape.run(data, "models/aux", "models/shape", upstream)

    k3dmm = (proj / "data" / "threedmm_model.npz").read_bytes()

    # three photos of a new person; the default trainer (Ray) and evaluator
    (raw / "newperson").mkdir()
    photos = sorted((tmp_path / "held").iterdir())
    for f in photos[:3]:
        shutil.copy2(f, raw / "newperson" / f.name)
    try:
        r1 = retrain(params)
        assert sorted(r1["scan"]["new"]) == sorted(f"newperson/{f.name}" for f in photos[:3])
        assert r1["prepare"]["ingest"]["read"] == 3
        assert r1["champion"]["version"] is None and r1["train"]["init"] == "from scratch"
        # the 3DMM the upstream models were trained with is kept (a re-learned one changed K once: Dshape failed)
        assert r1["threedmm_kept"] and (proj / "data" / "threedmm_model.npz").read_bytes() == k3dmm
        report = _check_run(r1, proj, version=1)
        assert "- start: no champion; from scratch" in report and "3DMM: the current model, kept" in report
    finally:
        shutdown_ray()
    # make v1 the champion (whatever its gate said), one more photo: fine-tuned from the champion
    uri = f"sqlite:///{proj / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias("flowfacepp", "champion", "1")
    shutil.copy2(photos[3], raw / "newperson" / photos[3].name)
    r2 = retrain(upstream)
    assert r2["scan"]["new"] == [f"newperson/{photos[3].name}"]
    assert r2["champion"]["version"] == 1 and r2["train"]["init"].startswith("fine-tuned from ")
    assert r2["train"]["resumed_from"] == 0  # new data + init bundle: a fresh checkpoint folder
    report = _check_run(r2, proj, version=2)
    assert "- start: champion v1; fine-tuned from " in report
    # the training runs went to the project's MLflow store (relative sqlite URI and artifact root)
    runs = client.search_runs([client.get_experiment_by_name("faceswap").experiment_id],
                              "tags.`faceswap.stage` = 'train_swap'")
    assert len(runs) == 2 and all(x.info.status == "FINISHED" for x in runs)
    assert all(x.info.artifact_uri.startswith((proj / "mlartifacts").as_uri()) for x in runs)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "model")} >= {"model/generator.safetensors"}
