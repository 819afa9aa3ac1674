"""The real loop in-process: exact resume, EMA/checkpoint contents, autocast, non-finite stop; params files."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from faceswap.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from faceswap import params
from faceswap.core.config import load_params
from faceswap.params import overlay_sections
from faceswap.data.records import FaceDataset, PairDataset
from faceswap.training.loop import NonFiniteLossError, train
from faceswap.training.steps import Phase
from tinytasks import SIZE, mae_task, swap_task
from paramsutil import loop, section  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _state(task, result):
    out = {f"{n}.{k}": v.clone() for n, m in task.modules.items() for k, v in m.state_dict().items()}
    out.update({f"ema.{n}.{k}": v.clone() for n, e in result.ema.items() for k, v in e.shadow.items()})
    for n, o in task.optimizers.items():
        for i, s in o.state_dict()["state"].items():
            out.update({f"opt.{n}.{i}.{k}": v.clone() for k, v in s.items() if torch.is_tensor(v)})
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


@pytest.mark.parametrize("kind", ["mae", "swap"])
def test_k_steps_resume_k_steps_equals_2k_straight(kind, train_records, train_tables, tmp_path):
    k = 3
    cfg = loop(steps=2 * k, batch_size=4, checkpoint_every=k, sample_every=0, log_every=1, ema_decay=0.9)
    if kind == "mae":
        make, ds = mae_task, FaceDataset(train_records, SIZE, seed=0)
    else:
        def make():
            return swap_task(train_tables["threedmm_model"], flow_start_step=k - 1)  # flow switches on mid-run
        ds = PairDataset(train_records, SIZE, same_identity_ratio=0.25, seed=0)
    straight = make()
    r_straight = train(straight, ds, cfg, ckpt_dir=tmp_path / "a", progress=False)

    first = make()
    r1 = train(first, ds, cfg, ckpt_dir=tmp_path / "b", progress=False, stop_after=k)
    assert r1.steps == k and latest_checkpoint(tmp_path / "b").name == f"step_{k:08d}.pt"
    torch.manual_seed(999)  # the resumed process starts with unrelated RNG state
    resumed = make()
    r2 = train(resumed, ds, cfg, ckpt_dir=tmp_path / "b", progress=False)
    assert (r2.start_step, r2.steps) == (k, 2 * k)
    _assert_same(_state(straight, r_straight), _state(resumed, r2))
    # the metrics log of the resumed run equals the straight one line for line
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("a", "b")]
    strip = [[{k: v for k, v in json.loads(ln).items() if k != "samples_per_s" and not k.startswith("time/")} for ln in ls] for ls in lines]
    assert strip[0] == strip[1] and len(strip[0]) == 2 * k


def test_checkpoint_holds_everything(train_records, train_tables, tmp_path):
    task = swap_task(train_tables["threedmm_model"])
    ds = PairDataset(train_records, SIZE, seed=0)
    cfg = loop(steps=2, batch_size=2, checkpoint_every=1, keep_checkpoints=1, sample_every=0)
    train(task, ds, cfg, ckpt_dir=tmp_path, progress=False, config={"lr": 1e-3})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]  # pruned to the newest
    ck = load_checkpoint(latest_checkpoint(tmp_path))
    assert set(ck["modules"]) == set(ck["optimizers"]) == {"gen", "disc"} and set(ck["ema"]) == {"gen"}
    assert ck["step"] == 2 and ck["config"] == {"lr": 1e-3} and ck["extra"]["nonfinite"] == 0
    assert "torch" in ck["rng"] and ck["scaler"] is not None
    assert all(len(o["state"]) > 0 for o in ck["optimizers"].values())


def test_bf16_autocast_and_grad_accumulation_train(train_records, tmp_path):
    task = mae_task()
    w0 = task.modules["mae"].decoder.pred.weight.clone()
    cfg = loop(steps=2, batch_size=2, grad_accum=2, precision="bf16", sample_every=0, log_every=1)
    r = train(task, FaceDataset(train_records, SIZE), cfg, ckpt_dir=tmp_path, progress=False)
    assert r.nonfinite == 0 and r.steps == 2 and r.samples_per_s > 0
    assert torch.isfinite(torch.tensor(r.last["mae/total"]))
    assert task.modules["mae"].decoder.pred.weight.dtype == torch.float32  # weights stay fp32
    assert not torch.equal(w0, task.modules["mae"].decoder.pred.weight)


def test_too_many_nonfinite_steps_stop(train_records, tmp_path):
    task = mae_task()
    task.phases = lambda step: [Phase("mae", "mae", lambda b: {"total": task.modules["mae"](b["image"])[0] / 0.0 * 0.0})]
    cfg = loop(steps=10, batch_size=2, max_nonfinite=2, sample_every=0)
    with pytest.raises(NonFiniteLossError, match="3 non-finite"):
        train(task, FaceDataset(train_records, SIZE), cfg, ckpt_dir=tmp_path, progress=False)


def test_both_params_files_load_and_validate():
    demo = vars(params.load(ROOT / "params.yaml"))
    assert demo["pretrain_mae"].image_size == demo["train_shape"].image_size <= 128
    assert not hasattr(demo["train_swap"], "image_size")  # the swap model's size is the pretrained MAE's
    assert demo["train"].num_workers >= 1 and not demo["train"].use_gpu
    paper = vars(params.parse({**load_params(ROOT / "params.yaml"), **load_params(ROOT / "params-paper.yaml")}, "paper"))
    shape, swap = paper["train_shape"], paper["train_swap"]
    assert (shape.steps, swap.steps, swap.flow_start_step) == (250_000, 640_000, 320_000)
    for s in (shape, swap):
        assert (s.lr, s.betas, s.batch_size) == (1e-4, (0.0, 0.99), 8)
    assert shape.image_size == paper["pretrain_mae"].image_size == 256
    assert swap.same_identity_ratio == 0.25
    w = swap.weights
    assert (w.rec, w.id, w.exp, w.ldmk, w.perc, w.flow) == (10, 5, 10, 5000, 2, 3)
    assert shape.weights.ldmk == 800 and paper["pretrain_mae"].mae_config().dim == 768
    assert shape.shape_config(23).num_landmarks == 23 and shape.shape_config(23).img_size == 256


def test_skip_schedule_needs_a_skip_and_known_pair_kinds():
    """train_swap.skip_start_step / skip_reconstruction_pairs are refused without decoder.skip or with an
    unknown pair kind; with a skip they give the pair schedule the stage follows."""
    from faceswap.core.config import ConfigError

    with pytest.raises(ConfigError, match="need decoder.skip"):
        section("train_swap", skip_start_step=100).validate()
    with pytest.raises(ConfigError, match="skip_reconstruction_pairs"):
        section("train_swap", decoder={"skip": ["source"]}, skip_reconstruction_pairs="same_person").validate()
    cfg = section("train_swap", decoder={"skip": ["source"]}, skip_start_step=100, skip_reconstruction_pairs="same_identity")
    cfg.validate()
    assert cfg.pair_schedule() == ("same_image", "same_identity")
    assert section("train_swap").pair_schedule() == ("same_image", "same_image")


def test_paper_switch_replaces_only_training_sections():
    base = (ROOT / "params.yaml").read_text()
    merged = overlay_sections(base, (ROOT / "params-paper.yaml").read_text())
    import yaml

    a, b, p = yaml.safe_load(merged), yaml.safe_load(base), yaml.safe_load((ROOT / "params-paper.yaml").read_text())
    assert all(a[k] == p[k] for k in p) and all(a[k] == b[k] for k in b if k not in p)


def test_cpu_recipe_differs_from_the_demo_only_where_its_header_says():
    """params-cpu.yaml = params.yaml's training sections with a longer, faster Fswa run (docs/training.md)."""
    import yaml

    from faceswap.params import TRAINING_SECTIONS

    base, cpu = (yaml.safe_load((ROOT / f).read_text()) for f in ("params.yaml", "params-cpu.yaml"))
    assert set(cpu) == set(TRAINING_SECTIONS)
    assert all(cpu[k] == base[k] for k in TRAINING_SECTIONS if k != "train_swap")
    diff = {k: cpu["train_swap"][k] for k in cpu["train_swap"] if cpu["train_swap"][k] != base["train_swap"].get(k)}
    assert diff == {"steps": 5000, "lr": 0.001, "beta1": 0.9, "same_identity_ratio": 0.8, "val_every": 500,
                    "target_face_spare": [[0.473, 0.387, 0.05, 0.075], [0.471, 0.605, 0.05, 0.075], [0.726, 0.493, 0.08, 0.13]],
                    "skip_start_step": 4000, "skip_reconstruction_pairs": "same_identity",
                    "decoder": {"channels": [128, 64, 32], "skip": ["source"]}}


def test_recipe_switch_cli_rewrites_training_sections_and_refuses_a_bad_recipe(tmp_path):
    """`--recipe FILE` puts FILE's training sections into params.yaml; an invalid recipe leaves it untouched."""
    import yaml

    from faceswap.params import main as config_main

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    recipe = tmp_path / "recipe.yaml"
    text = (ROOT / "params-paper.yaml").read_text()
    recipe.write_text(text)
    assert config_main(["--recipe", str(recipe), "--params", str(params)]) == 0
    assert yaml.safe_load(params.read_text())["train_swap"] == yaml.safe_load(text)["train_swap"]
    before = params.read_text()
    recipe.write_text(text.replace("  steps: 640000", "  steps: -5"))
    with pytest.raises(Exception, match="steps"):
        config_main(["--recipe", str(recipe), "--params", str(params)])
    assert params.read_text() == before


def test_validate_runs_every_val_every_steps_on_the_exported_weights(train_records, train_tables, tmp_path):
    """The loop calls `validate` at every val_every-th step and at the end, with a copy of the
    generator holding the EMA weights (what is exported), and logs its metrics at that step."""
    task = swap_task(train_tables["threedmm_model"])
    ds = PairDataset(train_records, SIZE, seed=0)
    seen: list[tuple[int, torch.Tensor, bool]] = []

    def validate(gen):
        w = next(p for n, p in gen.named_parameters() if n.startswith("decoder")).detach().clone()
        seen.append((len(seen), w, gen is task.modules["gen"]))
        return {"val/score": float(len(seen))}

    cfg = loop(steps=5, batch_size=4, checkpoint_every=100, sample_every=0, log_every=1, ema_decay=0.9)
    res = train(task, ds, cfg, ckpt_dir=tmp_path / "ck", progress=False, validate=validate, val_every=2)
    assert len(seen) == 3  # steps 2, 4 and the last (5)
    assert not any(same for _, _, same in seen)  # a copy, never the training module itself
    ema_w = res.ema["gen"].shadow[next(k for k in res.ema["gen"].shadow if k.startswith("decoder"))]
    assert torch.equal(seen[-1][1], ema_w)  # the EMA weights, not the raw ones
    raw_w = next(p for n, p in task.modules["gen"].named_parameters() if n.startswith("decoder"))
    assert not torch.equal(seen[-1][1], raw_w.detach())
    rows = [json.loads(ln) for ln in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    val_rows = {r["step"]: r["val/score"] for r in rows if "val/score" in r}
    assert val_rows == {2: 1.0, 4: 2.0, 5: 3.0}
    assert len(rows) == 5  # merged into the step's log line, not an extra row


def test_select_keeps_the_best_validated_snapshot_across_resume(train_records, train_tables, tmp_path):
    """With `select`, the validated weights with the largest key are kept in best_val.pt (a tie keeps
    the earlier); a resumed run keeps ranking against it, and one from before a kept snapshot's step drops it."""
    from faceswap.training.loop import BEST_FILE, load_best_state

    task = swap_task(train_tables["threedmm_model"])
    ds = PairDataset(train_records, SIZE, seed=0)
    keys = {2: (1.0, 0.1), 4: (2.0, 0.0), 6: (2.0, 0.0), 8: (1.0, 9.0)}  # step -> key: best at step 4
    weights: dict[int, torch.Tensor] = {}
    step_of = iter(sorted(keys))

    def validate(gen):
        s = next(step_of)
        weights[s] = next(p for n, p in gen.named_parameters() if n.startswith("decoder")).detach().clone()
        return {"val/step": float(s)}

    def select(vals):
        return keys[int(vals["val/step"])]

    cfg = loop(steps=8, batch_size=4, checkpoint_every=2, sample_every=0, log_every=1, ema_decay=0.9)
    ck = tmp_path / "ck"
    first = train(task, ds, cfg, ckpt_dir=ck, progress=False, validate=validate, val_every=2, select=select,
                  stop_after=4)  # validated at 2 and 4, checkpoint at 4
    assert first.best["step"] == 4
    task2 = swap_task(train_tables["threedmm_model"])
    res = train(task2, ds, cfg, ckpt_dir=ck, progress=False, validate=validate, val_every=2, select=select)
    assert res.start_step == 4 and res.best["step"] == 4  # 6 ties, 8 passes fewer gates
    name = next(k for k in load_best_state(res.best) if k.startswith("decoder"))
    assert torch.equal(load_best_state(res.best)[name], weights[4])
    assert not torch.equal(weights[4], weights[8])
    rows = [json.loads(ln) for ln in (ck / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["val/best_step"] for r in rows if "val/best_step" in r} == {2: 2.0, 4: 4.0, 6: 4.0, 8: 4.0}
    # a kept snapshot from after the checkpoint a run resumes from is dropped (those steps run again)
    torch.save({"step": 99, "key": [9.0, 9.0], "state_dict": {}}, ck / BEST_FILE)
    again = train(swap_task(train_tables["threedmm_model"]), ds, cfg, ckpt_dir=ck, progress=False,
                  validate=validate, val_every=2, select=select)  # resumes at 8: nothing left to run
    assert again.start_step == 8 and again.best is None and not (ck / BEST_FILE).exists()


def test_fewer_steps_than_a_finished_run_resumes_below_them(train_records, tmp_path):
    """Lowering `steps` below a finished run's (same checkpoint folder) gives the shorter run's weights,
    not the longer run's: it resumes from the latest checkpoint at most `steps` and leaves the later
    ones alone (raising steps again continues from them)."""
    ds = FaceDataset(train_records, SIZE, seed=0)
    cfg = loop(steps=4, batch_size=4, checkpoint_every=2, keep_checkpoints=1, sample_every=0, ema_decay=0.9)
    straight = mae_task()
    r_straight = train(straight, ds, replace(cfg, steps=2), ckpt_dir=tmp_path / "a", progress=False)
    long = mae_task()
    train(long, ds, replace(cfg, steps=6), ckpt_dir=tmp_path / "b", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [6]  # keep 1: only the last
    short = mae_task()
    r = train(short, ds, replace(cfg, steps=2), ckpt_dir=tmp_path / "b", progress=False)
    assert (r.start_step, r.steps) == (0, 2)  # nothing at <= 2 steps kept: trained again, not the 6-step run
    _assert_same(_state(straight, r_straight), _state(short, r))
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2, 6]  # the longer run's checkpoint is left alone
    again = mae_task()
    r6 = train(again, ds, replace(cfg, steps=6), ckpt_dir=tmp_path / "b", progress=False)
    assert (r6.start_step, r6.steps) == (6, 6)
