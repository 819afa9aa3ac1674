"""Checkpoints: EMA math, exact roundtrip (weights, optimizers, scaler, EMA, RNG), atomicity, pruning."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from faceswap.training import checkpoint as C
from faceswap.training.checkpoint import (
    EMA, capture_rng, latest_checkpoint, load_checkpoint, restore_checkpoint, restore_rng, save_checkpoint,
)


def _nets(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    d = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    return g, d


def _train(g, d, opt_g, opt_d, ema, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(6, 4)
        loss_d = torch.relu(1 + d(g(x).detach())).mean() + torch.relu(1 - d(x)).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = -d(g(x)).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        ema.update(g)


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_ema_hand_case():
    m = nn.BatchNorm1d(1)
    ema = EMA(m, decay=0.5)
    assert ema.shadow["weight"].dtype == torch.float32 and float(ema.shadow["weight"]) == 1.0
    with torch.no_grad():
        m.weight.fill_(3.0)
        m.running_mean.fill_(2.0)
    m.num_batches_tracked.fill_(7)
    assert ema.current_decay == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)
    ema.update(m)  # 0.1 * 1 + 0.9 * 3 = 2.8; buffer 0.1 * 0 + 0.9 * 2 = 1.8; int buffer copied
    assert float(ema.shadow["weight"]) == pytest.approx(2.8) and float(ema.shadow["running_mean"]) == pytest.approx(1.8)
    assert int(ema.shadow["num_batches_tracked"]) == 7
    with torch.no_grad():
        m.weight.fill_(5.0)
    ema.update(m)  # decay 2/11: weight 2/11 * 2.8 + 9/11 * 5; running_mean 2/11 * 1.8 + 9/11 * 2
    assert float(ema.shadow["weight"]) == pytest.approx(4.6) and float(ema.shadow["running_mean"]) == pytest.approx(21.6 / 11)
    assert ema.num_updates == 2
    ema.num_updates = 1000
    assert ema.current_decay == 0.5  # capped at the configured decay once warm
    ema.num_updates = 2
    other = nn.BatchNorm1d(1)
    ema.copy_to(other)
    assert other.weight.item() == pytest.approx(4.6)
    half = nn.BatchNorm1d(1).half()
    ema.copy_to(half)  # cast to the target's dtype
    assert half.weight.dtype == torch.float16 and half.weight.item() == pytest.approx(4.6, abs=1e-2)


@pytest.mark.parametrize("steps", [40, 60, 80])
def test_ema_init_share_after_demo_steps_is_under_one_percent(steps):
    """The exported average must be the trained weights, not the initialisation: init = 0, every
    trained value = 1, so the shadow is 1 - (the init's share). Without the warm-up, decay 0.99
    would leave 0.99**40 = 67 % init after the demo's 40 steps."""
    from faceswap.core.config import load_params

    decay = float(load_params(Path(__file__).resolve().parents[2] / "params.yaml")["train"]["ema_decay"])
    m = nn.Linear(4, 4)
    with torch.no_grad():
        m.weight.zero_()
        m.bias.zero_()
    ema = EMA(m, decay=decay)
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.bias.fill_(1.0)
    for _ in range(steps):
        ema.update(m)
    init_share = 1.0 - float(ema.shadow["weight"].mean())
    assert init_share < 0.01, init_share
    assert decay ** steps > 0.3  # the plain average would have failed this test


def test_roundtrip_restores_everything(tmp_path):
    g, d = _nets()
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-2, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-2, betas=(0.0, 0.99))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ema = EMA(g, decay=0.9)
    _train(g, d, opt_g, opt_d, ema, 3)
    scaler.scale(torch.ones(()))  # the scale tensor is created on first use
    scaler.update(512.0)
    cfg = {"lr": 1e-2, "betas": (0.0, 0.99), "out": Path("models/x"), "n": np.int64(3)}
    path = save_checkpoint(tmp_path, step=3, modules={"G": g, "D": d}, optimizers={"G": opt_g, "D": opt_d},
                           scaler=scaler, ema={"G": ema}, config=cfg, extra={"epoch": 1, "skip": 2})
    assert path == tmp_path / "step_00000003.pt"
    after_save = _draws()
    want = {k: v.clone() for k, v in g.state_dict().items()}
    want_ema = {k: v.clone() for k, v in ema.shadow.items()}
    want_opt = opt_g.state_dict()["state"][0]["exp_avg"].clone()

    _train(g, d, opt_g, opt_d, ema, 2)  # move everything away
    scaler.update(2.0)
    g2, d2 = _nets(seed=9)
    opt_g2 = torch.optim.Adam(g2.parameters(), lr=1e-2, betas=(0.0, 0.99))
    opt_d2 = torch.optim.Adam(d2.parameters(), lr=1e-2, betas=(0.0, 0.99))
    scaler2, ema2 = torch.amp.GradScaler("cpu"), EMA(g2, decay=0.5)

    ckpt = load_checkpoint(path)
    step = restore_checkpoint(ckpt, {"G": g2, "D": d2}, {"G": opt_g2, "D": opt_d2}, scaler2, {"G": ema2})
    assert step == 3
    a, b, t = _draws()  # the RNG continues exactly where it was at save time
    assert (a, b) == after_save[:2] and torch.equal(t, after_save[2])
    assert all(torch.equal(v, want[k]) for k, v in g2.state_dict().items())
    assert torch.equal(opt_g2.state_dict()["state"][0]["exp_avg"], want_opt)
    assert all(torch.equal(v, want_ema[k]) for k, v in ema2.shadow.items()) and ema2.decay == 0.9
    assert ema2.num_updates == 3 and scaler2.get_scale() == 512.0
    assert ckpt["config"] == {"lr": 1e-2, "betas": [0.0, 0.99], "out": "models/x", "n": 3}
    assert ckpt["extra"] == {"epoch": 1, "skip": 2}


def test_resumed_training_matches_straight_training(tmp_path):
    """K steps + save/restore + K steps == 2K steps (weights and EMA), RNG included."""

    def fresh():
        g, d = _nets()
        og = torch.optim.Adam(g.parameters(), lr=1e-2, betas=(0.0, 0.99))
        od = torch.optim.Adam(d.parameters(), lr=1e-2, betas=(0.0, 0.99))
        return g, d, og, od, EMA(g, 0.9)

    torch.manual_seed(1)
    g, d, og, od, ema = fresh()
    _train(g, d, og, od, ema, 4)
    straight = {k: v.clone() for k, v in g.state_dict().items()}

    torch.manual_seed(1)
    g, d, og, od, ema = fresh()
    _train(g, d, og, od, ema, 2)
    p = save_checkpoint(tmp_path, step=2, modules={"G": g, "D": d}, optimizers={"G": og, "D": od},
                        scaler=None, ema={"G": ema}, config={})
    torch.manual_seed(123)  # a fresh process would start from anywhere
    g, d, og, od, ema = fresh()
    restore_checkpoint(load_checkpoint(p), {"G": g, "D": d}, {"G": og, "D": od}, None, {"G": ema})
    _train(g, d, og, od, ema, 2)
    assert all(torch.equal(v, straight[k]) for k, v in g.state_dict().items())


def test_weights_only_load_and_unwrapped_names(tmp_path):
    g, _ = _nets()
    wrapped = nn.DataParallel(g)  # on CPU it only wraps; the saved names must not carry `module.`
    p = save_checkpoint(tmp_path / "c.pt", step=1, modules={"G": wrapped}, optimizers={}, scaler=None,
                        ema={"G": EMA(wrapped)}, config={"a": 1})
    raw = torch.load(p, weights_only=True)
    assert set(raw["modules"]["G"]) == set(g.state_dict())
    assert not any(k.startswith("module.") for k in raw["ema"]["G"]["shadow"])
    assert raw["rng"]["numpy"]["keys"].dtype == torch.int64


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    g, _ = _nets()
    kw = dict(modules={"G": g}, optimizers={}, scaler=None, ema={}, config={})
    p = save_checkpoint(tmp_path / "ckpt.pt", step=1, **kw)
    before = p.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(C.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(p, step=2, **kw)
    assert p.read_bytes() == before and load_checkpoint(p)["step"] == 1
    assert [q.name for q in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_keep_last_n_and_latest(tmp_path):
    g, _ = _nets()
    kw = dict(modules={"G": g}, optimizers={}, scaler=None, ema={}, config={})
    assert latest_checkpoint(tmp_path) is None and latest_checkpoint(tmp_path / "absent") is None
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / ".step_00000003.pt.abc123.tmp").write_bytes(b"half a save killed by kill -9")
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step=step, **kw)
    names = sorted(q.name for q in tmp_path.iterdir())
    assert names == ["notes.txt", "step_00000015.pt", "step_00000020.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000020.pt"
    save_checkpoint(tmp_path, step=25, keep=None, **kw)
    assert len(list(tmp_path.glob("step_*.pt"))) == 3
    save_checkpoint(tmp_path, step=100_000_000, keep=1, **kw)  # more than 8 digits still sorts by step
    assert [q.name for q in tmp_path.glob("step_*.pt")] == ["step_100000000.pt"]


def test_config_must_be_plain_and_restore_names_must_exist(tmp_path):
    @dataclasses.dataclass
    class Cfg:
        lr: float = 1e-4
        size: tuple = (8, 8)

    g, _ = _nets()
    p = save_checkpoint(tmp_path, step=1, modules={"G": g}, optimizers={}, scaler=None, ema={}, config=Cfg())
    ckpt = load_checkpoint(p)
    assert ckpt["config"] == {"lr": 1e-4, "size": [8, 8]}
    with pytest.raises(TypeError, match="config.fn"):
        save_checkpoint(tmp_path, step=2, modules={}, optimizers={}, scaler=None, ema={}, config={"fn": print})
    with pytest.raises(KeyError, match="modules"):
        restore_checkpoint(ckpt, {"D": g}, {}, None, {})


def test_capture_restore_rng_roundtrip():
    state = capture_rng()
    first = _draws()
    _draws()
    restore_rng(state)
    again = _draws()
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
