"""The retraining flow end to end in the Prefect harness: real data stages and registry, fake training
and evaluation (injected as "module:function" flow parameters).

One test walks the life of a deployment: first run (no champion: train from scratch, register,
promote) -> nothing new (early stop) -> a new image with a model that fails a gate (fine-tuned from
the champion, registered as challenger, champion unchanged).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import yaml

from prefectutil import latest_artifact
from paramsutil import section  # noqa: E402


def fake_train(params, data_dir, models_dir, out_dir, init_bundle, metrics_path) -> dict:
    """A tiny random generator; starts from init_bundle's weights when given (as a fine-tune would)."""
    import torch

    from faceswap.artifacts import load_bundle, save_bundle
    from faceswap_models.config import SwapConfig
    from faceswap_models.swap import SwapGenerator

    torch.manual_seed(0)
    gen = load_bundle(init_bundle).generator if init_bundle else SwapGenerator(SwapConfig.tiny())
    save_bundle(out_dir, gen, align_size=32, template_scale=1.4, meta={"init": str(init_bundle)}, detect=section("detect"))
    return {"steps": 2, "init": f"fake fine-tune from {Path(init_bundle).name}" if init_bundle else "fake, from scratch",
            "init_had_bundle": bool(init_bundle and (Path(init_bundle) / "generator.json").is_file())}


def _fake_eval(metrics_path, id_top1: float, shape_error: float) -> dict:
    m = {"model": {"id_top1": id_top1, "shape_error": shape_error},
         "baselines": {"copy_target": {"id_top1": 0.0, "shape_error": 0.9}, "paste_source": {"id_top1": 1.0, "shape_error": 0.0}}}
    Path(metrics_path).write_text(json.dumps(m))
    return m


def eval_good(params, data_dir, bundle_dir, metrics_path) -> dict:
    return _fake_eval(metrics_path, 0.5, 0.3)


def eval_gate_fail(params, data_dir, bundle_dir, metrics_path) -> dict:
    return _fake_eval(metrics_path, 0.9, 0.8)  # better primary metric, but shape_error fails its gate


def _latest_report() -> str:
    return latest_artifact("retrain-report")


def test_retrain_flow_end_to_end(prefect_harness, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from faceswap.data.demo_corpus import build_demo_corpus
    from flows.retrain import retrain

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = build_demo_corpus(tmp_path / "raw", identities=3, per_identity=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = yaml.safe_load(open("params.yaml"))
    for name in ("filter", "align", "segment", "threedmm"):
        params[name]["workers"] = 1
    params["threedmm"].update(n_shape=3, n_exp=3)
    params["split"].update(val_frac=0.0, test_frac=0.34)
    params["register"].update(tracking_uri=uri, artifact_root=str(tmp_path / "artifacts"),
                              gates={"model.id_top1": {"min": "baselines.copy_target.id_top1"},
                                     "model.shape_error": {"max": 0.5}})
    params["retrain"].update(source_root=str(raw))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    kw = dict(params_path=str(tmp_path / "params.yaml"), data_dir=str(tmp_path / "data"),
              models_dir=str(tmp_path / "models"), metrics_dir=str(tmp_path / "metrics"),
              trainer=fake_train)

    # 1. first run: everything is new, no champion yet -> from scratch, promoted
    r1 = retrain(**kw, evaluator=eval_good)
    assert r1["status"] == "registered" and len(r1["scan"]["new"]) == r1["scan"]["files"] > 6
    assert r1["champion"]["version"] is None and r1["train"]["init"] == "fake, from scratch"
    assert r1["register"]["version"] == 1 and r1["register"]["aliases_moved"] == ["challenger", "champion"]
    rep = _latest_report()
    assert "## Evaluation" in rep and "| id_top1 | 0.5 | 0 | 1 |" in rep and "champion: v1 (no champion yet" in rep
    assert json.loads((tmp_path / "metrics" / "register" / "flowfacepp.json").read_text())["champion_version"] == 1

    # 2. nothing new -> stop early, nothing registered
    r2 = retrain(**kw, evaluator=eval_good)
    assert r2["status"] == "no_new_data" and r2["scan"]["new"] == [] and "register" not in r2
    assert "No new images: stopped early" in _latest_report()

    # 3. one new photo; the fine-tuned model fails a gate -> challenger moves, champion stays v1
    img = cv2.imread(str(raw / "id_000" / "000.jpg"))
    cv2.imwrite(str(raw / "id_000" / "900.jpg"), cv2.flip(img, 1))
    r3 = retrain(**kw, evaluator=eval_gate_fail)
    assert r3["scan"]["new"] == ["id_000/900.jpg"] and r3["prepare"]["ingest"]["read"] == 1
    assert r3["champion"]["version"] == 1 and r3["train"]["init_had_bundle"] is True
    assert r3["register"]["version"] == 2 and r3["register"]["aliases_moved"] == ["challenger"]
    assert not r3["register"]["gates_passed"]
    rep = _latest_report()
    assert "start: champion v1" in rep and "| model.shape_error | max 0.5 | FAIL |" in rep and "gate failed" in rep
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias("flowfacepp", "champion").version) == 1
    assert int(client.get_model_version_by_alias("flowfacepp", "challenger").version) == 2
