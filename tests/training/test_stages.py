"""Training stages end to end on the tiny tables: the chain in-process, kill -9 + resume, Ray + MLflow."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from faceswap.artifacts import load_bundle
from faceswap.training.checkpoint import latest_checkpoint
from faceswap.training.runs import DataPaths
from paramsutil import section  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "train": {"use_ray": False, "num_workers": 1, "threads_per_worker": 1, "checkpoint_every": 2,
              "sample_every": 2, "log_every": 1, "mlflow_tracking_uri": "", "ema_decay": 0.9},
    "pretrain_mae": {"steps": 2, "batch_size": 4, "image_size": 32, "lr": 1e-3,
                     "model": {"patch_size": 8, "dim": 32, "depth": 1, "heads": 2, "decoder_dim": 16,
                               "decoder_depth": 1, "decoder_heads": 2}},
    "train_aux": {"steps": 2, "batch_size": 4, "model": {"image_size": 32, "width": 8, "hidden": 32,
                                                         "n_shape": 3, "n_exp": 2}},
    "train_shape": {"steps": 2, "batch_size": 2, "image_size": 32,
                    "model": {"base_channels": 8, "max_channels": 16, "num_down": 3, "heatmap_sigma": 1.0},
                    "disc": {"base_channels": 8, "max_channels": 16, "num_down": 2}},
    "train_swap": {"steps": 2, "flow_start_step": 1, "val_every": 0, "batch_size": 2,
                   "fusion": {"heads": 2, "num_blocks": 1}, "decoder": {"channels": [16, 8, 8, 8]},
                   "disc": {"base_channels": 8, "max_channels": 16, "num_down": 2},
                   "weights": {}},  # the paper's loss weights: every term, the flow loss included
}


def write_params(path: Path, **overrides: dict) -> Path:
    """The repository's params.yaml with the TINY training sections (and `overrides`) merged in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in [*TINY.items(), *overrides.items()]:
        params[name].update(values)
    path.write_text(yaml.safe_dump(params))
    return path


def data_paths(t: dict) -> DataPaths:
    return DataPaths(aligned=t["aligned_parquet"], aligned_dir=t["aligned_dir"], segments=t["segments_parquet"],
                     parsing_dir=t["parsing_dir"], threedmm=t["threedmm_parquet"],
                     threedmm_model=t["threedmm_model"], splits=t["splits_parquet"]).resolved()


def data_args(t: dict) -> list[str]:
    return ["--aligned", t["aligned_parquet"], "--aligned-dir", t["aligned_dir"], "--segments", t["segments_parquet"],
            "--parsing-dir", t["parsing_dir"], "--threedmm", t["threedmm_parquet"],
            "--threedmm-model", t["threedmm_model"], "--splits", t["splits_parquet"]]


def test_stage_chain_writes_models_bundle_metrics_and_plots(train_tables, tmp_path):
    from stages import pretrain_mae, train_aux, train_shape, train_swap

    params, data, m = write_params(tmp_path / "params.yaml"), data_paths(train_tables), tmp_path / "models"
    ck = str(tmp_path / "ckpt")
    train_aux.run(data, m / "aux", params, metrics=str(tmp_path / "aux.json"))
    r_mae = pretrain_mae.run(data, m / "mae", params, metrics=str(tmp_path / "mae.json"),
                             plots=str(tmp_path / "mae.csv"), checkpoint_root=ck)
    r_shape = train_shape.run(data, m / "aux", m / "shape", params, checkpoint_root=ck)
    r_swap = train_swap.run(data, mae_dir=m / "mae", shape_dir=m / "shape", aux_dir=m / "aux", out_dir=m / "swap",
                            params_path=params, metrics=str(tmp_path / "swap.json"), plots=str(tmp_path / "swap.csv"),
                            checkpoint_root=ck)
    assert r_mae["steps"] == r_shape["steps"] == r_swap["steps"] == 2
    assert "g_flow" in r_swap and r_swap["nonfinite_steps"] == 0  # flow loss on from step 1
    assert (tmp_path / "mae.csv").read_text().splitlines()[0].startswith("step,")
    assert len((tmp_path / "swap.csv").read_text().splitlines()) == 3  # header + 2 steps
    bundle = load_bundle(m / "swap")
    # the alignment comes from the aligned table the model was trained on (64 px crops), not from params.yaml
    assert bundle.img_size == 32 and (bundle.align_size, bundle.template_scale) == (64, 1.4)
    assert bundle.meta["steps"] == 2
    assert bundle.meta["selected_step"] == r_swap["selected_step"] == 2  # no validation: the last weights
    x = torch.zeros(1, 3, 32, 32)
    assert bundle.generator(x, x).shape == (1, 3, 32, 32)
    # the swap generator's frozen encoder is the pretrained MAE encoder
    mae_w = pretrain_mae.FaceMAE(section("pretrain_mae", **TINY["pretrain_mae"]).mae_config())
    from faceswap.core.weights import load_into

    load_into(mae_w, m / "mae" / "mae.safetensors")
    assert torch.equal(mae_w.encoder.patch_embed.proj.weight, bundle.generator.encoder.patch_embed.proj.weight)
    # fine-tuning from a bundle starts from its weights (lr 0: the output equals the init bundle)
    tuned = train_swap.run(data, mae_dir=m / "mae", shape_dir=m / "shape", aux_dir=m / "aux", out_dir=m / "tuned",
                           params_path=write_params(tmp_path / "p0.yaml", train_swap={"steps": 1, "lr": 0.0}),
                           checkpoint_root=ck, init_bundle=m / "swap")
    assert tuned["resumed_from"] == 0
    w0 = load_bundle(m / "tuned").generator.state_dict()
    assert all(torch.equal(v, w0[k]) for k, v in bundle.generator.state_dict().items())
    # re-running a finished stage trains nothing and rewrites the same output
    again = pretrain_mae.run(data, m / "mae", params, checkpoint_root=ck)
    assert again["resumed_from"] == 2 and again["steps"] == 2


def test_kill_9_then_rerun_resumes_from_the_last_checkpoint(train_tables, tmp_path):
    from stages import pretrain_mae

    params = write_params(tmp_path / "params.yaml", pretrain_mae={"steps": 100_000})
    ck = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FACESWAP_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stages.pretrain_mae", "--params", str(params), *data_args(train_tables),
           "--out-dir", str(tmp_path / "mae"), "--checkpoint-root", str(ck)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(ck.glob("pretrain_mae/*/step_*.pt"))
            if found:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert found, "no checkpoint within the deadline"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    last = latest_checkpoint(found[0].parent)
    step = int(last.stem.split("_")[1])
    assert step >= 2 and not (tmp_path / "mae" / "mae.safetensors").exists()
    # re-run (steps raised just past the checkpoint): it continues from there, it does not restart
    write_params(params, pretrain_mae={"steps": step + 2})
    m = pretrain_mae.run(data_paths(train_tables), tmp_path / "mae", params, checkpoint_root=str(ck))
    assert (m["resumed_from"], m["steps"]) == (step, step + 2)
    assert (tmp_path / "mae" / "mae.safetensors").is_file()


def test_ray_torchtrainer_one_cpu_worker_with_mlflow(train_tables, tmp_path):
    from faceswap.training.ray_runner import shutdown_ray
    from stages import pretrain_mae

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = write_params(tmp_path / "params.yaml", train={
        "use_ray": True, "mlflow_tracking_uri": uri, "mlflow_artifact_root": str(tmp_path / "artifacts"),
        "object_store_mb": 80})
    try:
        m = pretrain_mae.run(data_paths(train_tables), tmp_path / "mae", params,
                             checkpoint_root=str(tmp_path / "ckpt"))
    finally:
        shutdown_ray()
    assert m["steps"] == 2 and (tmp_path / "mae" / "mae.safetensors").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(m["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["faceswap.stage"] == "pretrain_mae"
    assert len(client.get_metric_history(run.info.run_id, "mae/total")) == 2
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/step_00000002.png"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/mae.json",
                                                                                 "model/mae.safetensors"}
