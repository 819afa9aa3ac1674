"""FaceShifter's training: the AEI-Net and HEAR-Net objectives on tiny networks (known values, gradients,
what stays frozen) and `faceswap train faceshifter` end to end on the tiny tables."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from faceswap.artifacts import load_bundle
from faceswap.training.config import OcclusionConfig
from faceswap.training.faceshifter import AEITask, HEARTask, aei_generator_terms, hear_terms, occlude_targets
from faceswap_models.faceshifter.config import (
    AEILossWeights, AEINetConfig, HEARLossWeights, HEARNetConfig, MultiScaleDiscConfig,
)
from faceswap_models.faceshifter.networks import AEINet, HEARNet, MultiScaleDiscriminator
from training.test_stages import data_args, write_params  # noqa: E402


class TinyIdentity(nn.Module):
    """A frozen stand-in identity network: (B, 3, H, W) -> L2-normalised (B, 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 512))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=1)


def batch(same: list[bool], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    src, tgt = (torch.rand(len(same), 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    flags = torch.tensor(same)
    src = torch.where(flags.view(-1, 1, 1, 1), tgt, src)  # PairDataset same="image": X_s = X_t
    return {"source": {"image": src}, "target": {"image": tgt}, "same_identity": flags}


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return AEINet(AEINetConfig.tiny()), MultiScaleDiscriminator(MultiScaleDiscConfig.tiny()), TinyIdentity()


def test_aei_terms_are_the_weighted_paper_losses(nets):
    aei, disc, ident = nets
    w = AEILossWeights(adv=1.0, att=10.0, id=5.0, rec=10.0)
    t = aei_generator_terms(aei, disc, ident, batch([True, False]), w)
    assert set(t) == {"adv", "att", "id", "rec", "total"}
    expected = t["adv"] + 10 * t["att"] + 5 * t["id"] + 10 * t["rec"]
    torch.testing.assert_close(t["total"].detach(), expected)
    assert float(t["rec"].detach()) > 0 and 0 < float(t["id"].detach()) < 2
    none_same = aei_generator_terms(aei, disc, ident, batch([False, False]), w)
    assert float(none_same["rec"].detach()) == 0.0  # L_rec only where X_s = X_t
    off = aei_generator_terms(aei, disc, ident, batch([True, False]), AEILossWeights(adv=0.0, att=0.0, id=1.0, rec=0.0))
    assert set(off) == {"id", "total"}  # a term with weight 0 is not computed


def test_aei_task_trains_aei_and_disc_never_the_identity_network(nets):
    aei, disc, ident = nets
    task = AEITask(aei, disc, ident, AEILossWeights(), lr=1e-3, betas=(0.0, 0.999))
    frozen = {k: v.clone() for k, v in ident.state_dict().items()}
    b = batch([True, False, False])
    g_phase, d_phase = task.phases(0)
    g_phase.loss(b)["total"].backward(inputs=list(aei.parameters()))  # as the loop: the phase's own parameters
    missing = [n for n, p in aei.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing  # every AEI-Net parameter (encoder and AAD generator) learns
    d_phase.loss(b)["total"].backward(inputs=list(disc.parameters()))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    assert all(torch.equal(v, ident.state_dict()[k]) for k, v in frozen.items())
    assert all(p.grad is None for p in ident.parameters())


def test_hear_task_trains_hear_only(nets):
    aei, _, ident = nets
    torch.manual_seed(1)
    hear = HEARNet(HEARNetConfig.tiny())
    task = HEARTask(hear, aei, ident, HEARLossWeights(), OcclusionConfig(p=1.0, max_area=0.2), lr=1e-3,
                    betas=(0.0, 0.999))
    before = {k: v.clone() for k, v in aei.state_dict().items()}
    (phase,) = task.phases(0)
    terms = phase.loss(batch([True, False]))
    assert set(terms) == {"id", "chg", "rec", "total"}
    torch.testing.assert_close(terms["total"].detach(), terms["id"] + terms["chg"] + terms["rec"])
    terms["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hear.parameters())
    assert all(p.grad is None for p in aei.parameters())
    assert all(torch.equal(v, aei.state_dict()[k]) for k, v in before.items())


def test_change_loss_is_zero_when_hear_returns_aei_output(nets):
    """L'_chg = |Y - Y_hat|: a HEAR-Net that passes Y_hat through scores 0 on it."""
    aei, _, ident = nets

    class PassThrough(nn.Module):
        def forward(self, y_hat, delta):
            return y_hat

    t = hear_terms(PassThrough(), aei, ident, batch([False, False]), HEARLossWeights())
    assert float(t["chg"]) == 0.0 and float(t["rec"]) == 0.0


def test_occluded_targets_keep_x_s_equal_x_t_on_reconstruction_pairs():
    b = batch([True, False, True], seed=3)
    torch.manual_seed(0)
    o = occlude_targets(b, OcclusionConfig(p=1.0, max_area=0.25))
    changed = (o["target"]["image"] != b["target"]["image"]).flatten(1).any(1)
    assert changed.all()  # p = 1: every target got an occluder
    assert torch.equal(o["source"]["image"][0], o["target"]["image"][0])
    assert torch.equal(o["source"]["image"][2], o["target"]["image"][2])
    assert torch.equal(o["source"]["image"][1], b["source"]["image"][1])  # a swap pair's source is untouched


def test_faceswap_train_faceshifter_runs_aei_then_hear(train_tables, tmp_path):
    """`faceswap train faceshifter` (dvc.yaml's train@faceshifter): AEI-Net, then HEAR-Net on it; one
    bundle any consumer loads, HEAR-Net on, AEI-Net and the identity network as the first stage left them."""
    from faceswap.cli import main

    params = write_params(tmp_path / "params.yaml", train_faceshifter={
        "steps": 2, "batch_size": 2, "image_size": 32, "val_every": 0,
        "model": {"encoder_channels": [8, 16, 32], "generator_channels": [32, 32, 16, 8]},
        "disc": {"num_scales": 2, "base_channels": 8, "num_layers": 2, "max_channels": 16}},
        train_hearnet={"steps": 2, "batch_size": 2, "val_every": 0, "model": {"channels": [8, 16]}})
    out = tmp_path / "models" / "faceshifter"
    assert main(["train", "faceshifter", "--out-dir", str(out), "--metrics", str(tmp_path / "m.json"),
                 "--plots-dir", str(tmp_path / "plots"), "--params", str(params),
                 "--checkpoint-root", str(tmp_path / "ckpt"), *data_args(train_tables)]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert list(metrics) == ["train_faceshifter", "train_hearnet"]
    assert metrics["train_faceshifter"]["steps"] == metrics["train_hearnet"]["steps"] == 2
    assert {"g_att", "g_id", "g_adv", "d_hinge"} <= set(metrics["train_faceshifter"])
    assert {"hear_id", "hear_chg"} <= set(metrics["train_hearnet"])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["train_faceshifter_steps.csv",
                                                                      "train_hearnet_steps.csv"]
    aei_only, final = load_bundle(out / "train_faceshifter"), load_bundle(out)
    assert final.architecture.name == "faceshifter" and bool(final.generator.hear_on)
    assert not bool(aei_only.generator.hear_on) and final.img_size == 32 and final.align_size == 64
    assert final.config.hear.channels == (8, 16)
    for part in ("aei", "identity"):
        a, f = getattr(aei_only.generator, part).state_dict(), getattr(final.generator, part).state_dict()
        assert all(torch.equal(v, f[k]) for k, v in a.items()), part
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(final.generator(x, x), aei_only.generator(x, x))  # HEAR-Net refines


def test_hear_validation_scores_the_trained_aei_net(tmp_path):
    """train_hearnet's val scorer runs the snapshot of HEAR-Net on the AEI-Net it was trained on (a bug scored a
    random AEI-Net: val detection 0 at every step); train_faceshifter's keeps HEAR-Net off."""
    from faceswap.artifacts import save_bundle
    from faceswap_models.faceshifter.config import FaceShifterConfig
    from faceswap_models.faceshifter.generator import FaceShifter
    from paramsutil import section
    from stages import train_faceshifter, train_hearnet

    torch.manual_seed(0)
    aei_model = FaceShifter(FaceShifterConfig.tiny())
    folder = save_bundle(tmp_path / "aei", aei_model, align_size=64, template_scale=1.4, detect=section("detect"))
    cfg = section("train_hearnet", model={"channels": [8, 16]})
    model, _ = train_hearnet.build_model(cfg, folder, seed=1)
    seen = []
    scorer = train_hearnet.part_validator(lambda g: seen.append(g) or {"x": 1.0}, model)
    snapshot = HEARNet(model.cfg.hear)
    assert scorer(snapshot) == {"x": 1.0}
    g = seen[0]
    assert g.hear is snapshot and bool(g.hear_on)
    assert all(torch.equal(v, aei_model.aei.state_dict()[k]) for k, v in g.aei.state_dict().items())
    assert g is not model and not bool(model.hear_on)  # the training model itself is untouched
    seen.clear()
    aei_scorer = train_faceshifter.part_validator(lambda g: seen.append(g) or {}, aei_model)
    aei_scorer(AEINet(AEINetConfig.tiny()))
    assert not bool(seen[0].hear_on) and seen[0].identity is not aei_model.identity


def test_faceshifter_stages_refuse_bundles_they_cannot_build_on(tmp_path, monkeypatch):
    """train_hearnet needs a FaceShifter AEI-Net bundle; fine-tuning needs the same network sizes. Each
    refusal names the bundle and the reason."""
    from faceswap.artifacts import save_bundle
    from faceswap_models.config import SwapConfig
    from faceswap_models.faceshifter.config import FaceShifterConfig
    from faceswap_models.faceshifter.generator import FaceShifter
    from faceswap_models.swap import SwapGenerator
    from paramsutil import section
    from stages import train_faceshifter, train_hearnet

    torch.manual_seed(0)
    flowface = save_bundle(tmp_path / "ff", SwapGenerator(SwapConfig.tiny()), align_size=64, template_scale=1.4,
                           detect=section("detect"))
    aei = save_bundle(tmp_path / "fs", FaceShifter(FaceShifterConfig.tiny()), align_size=64, template_scale=1.4,
                      detect=section("detect"))
    hear_cfg = section("train_hearnet", model={"channels": [8, 16]})
    with pytest.raises(ValueError, match="a FlowFace\\+\\+ bundle, train_hearnet needs a FaceShifter one"):
        train_hearnet.build_model(hear_cfg, flowface, seed=0)
    with pytest.raises(ValueError, match="its HEAR-Net config differs from train_hearnet's"):
        train_hearnet.build_model(section("train_hearnet", model={"channels": [4, 8]}), aei, seed=0,
                                  init_bundle=aei)
    aei_cfg = section("train_faceshifter", image_size=32, identity_weights=None,
                      model={"encoder_channels": [8, 16], "generator_channels": [16, 16, 8]})
    # no FaceNet weights needed to see the refusal
    monkeypatch.setattr(train_faceshifter, "build_identity_encoder",
                        lambda *a: FaceShifter(FaceShifterConfig.tiny()).identity)
    with pytest.raises(ValueError, match="its AEI-Net config differs from train_faceshifter's"):
        train_faceshifter.build_model(aei_cfg, HEARNetConfig.tiny(), seed=0, init_bundle=aei)
