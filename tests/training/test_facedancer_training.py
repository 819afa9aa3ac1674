"""FaceDancer's training: the generator / discriminator objectives on tiny networks (known values, gradients,
what stays frozen), the IFSR margins' stand-in swap and its sanity values, and `faceswap train facedancer`
end to end on the tiny tables."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from faceswap.artifacts import load_bundle, save_bundle
from faceswap.training.facedancer import (
    MARGINS_FILE, FaceDancerTask, blended_swap,
    facedancer_generator_terms, ifsr_margin_stats, load_margins,
)
from faceswap.training.steps import discriminator_terms
from faceswap_models.config import DiscriminatorConfig
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.facedancer.config import FaceDancerLossWeights, FaceDancerNetConfig
from faceswap_models.facedancer.losses import d_logistic
from faceswap_models.facedancer.networks import FaceDancerNet
from faceswap_models.swap import face_ellipse_mask
from paramsutil import section  # noqa: E402
from training.test_faceshifter_training import batch  # noqa: E402  (32 px pairs, X_s = X_t where same)
from training.test_stages import data_args, write_params  # noqa: E402

LAYERS = (0, 1)


class TinyIdentity(nn.Module):
    """A frozen stand-in identity network with two intermediate blocks: (B, 3, H, W) -> L2-normalised
    (B, 512) [, block features]."""

    def __init__(self) -> None:
        super().__init__()
        self.b0 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8, 512)
        self.requires_grad_(False)

    def forward(self, x, return_features=False):
        f0 = torch.tanh(self.b0(x))
        f1 = torch.tanh(self.b1(f0))
        emb = nn.functional.normalize(self.head(f1.mean(dim=(2, 3))), dim=1)
        return (emb, [f0, f1]) if return_features else emb


@pytest.fixture
def nets():
    torch.manual_seed(0)
    disc = PatchDiscriminator(DiscriminatorConfig.tiny())
    return FaceDancerNet(FaceDancerNetConfig.tiny()), disc, TinyIdentity()


def test_generator_terms_are_the_weighted_paper_losses(nets):
    net, disc, ident = nets
    w = FaceDancerLossWeights.paper()
    t = facedancer_generator_terms(net, disc, ident, "ssim", batch([True, False]), w, torch.tensor([0.9, 0.9]), LAYERS)
    assert set(t) == {"adv", "id", "rec", "perc", "cycle", "ifsr", "total"}
    expected = t["adv"] + 10 * t["id"] + 5 * t["rec"] + 0.2 * t["perc"] + t["cycle"] + t["ifsr"]
    torch.testing.assert_close(t["total"].detach(), expected)
    v = {k: float(x.detach()) for k, x in t.items()}
    assert v["rec"] > 0 and v["perc"] > 0 and 0 < v["id"] < 2 and v["cycle"] > 0
    none_same = facedancer_generator_terms(net, disc, ident, "ssim", batch([False, False]), w,
                                           torch.tensor([0.9, 0.9]), LAYERS)
    assert float(none_same["rec"].detach()) == float(none_same["perc"].detach()) == 0.0  # L_r, L_p only where X_s = X_t
    lenient = facedancer_generator_terms(net, disc, ident, "ssim", batch([True, False]), w,
                                         torch.tensor([-1.0, -1.0]), LAYERS)
    assert float(lenient["ifsr"].detach()) == 0.0  # no block can be less similar than -1
    off = facedancer_generator_terms(net, disc, ident, "ssim", batch([True]),
                                     FaceDancerLossWeights(adv=0, id=1, rec=0, perc=0, cycle=0, ifsr=0),
                                     torch.tensor([0.9, 0.9]), LAYERS)
    assert set(off) == {"id", "total"}  # a term with weight 0 is not computed


def test_task_trains_generator_and_disc_never_the_identity_network(nets):
    net, disc, ident = nets
    task = FaceDancerTask(net, disc, ident, "ssim", FaceDancerLossWeights(), [0.9, 0.9], LAYERS, lr=1e-3,
                          betas=(0.0, 0.99))
    frozen = {k: v.clone() for k, v in ident.state_dict().items()}
    b = batch([True, False, False])
    g_phase, d_phase = task.phases(0)
    g_phase.loss(b)["total"].backward(inputs=list(net.parameters()))
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing  # encoder, mapping, AdaIN decoder, every AFFA
    d_terms = d_phase.loss(b)
    assert set(d_terms) == {"adv", "r1", "total"}
    torch.testing.assert_close(d_terms["total"].detach(), (d_terms["adv"] + 10 * d_terms["r1"]).detach())
    d_terms["total"].backward(inputs=list(disc.parameters()))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    assert all(torch.equal(v, ident.state_dict()[k]) for k, v in frozen.items())
    assert all(p.grad is None for p in ident.parameters())


def test_discriminator_is_logistic_with_r1_on_the_reals():
    """A discriminator linear in its input has R1 = 0.5 ||w||^2 per image; gp = 0 leaves it out. Zero logits
    cost 2 log 2 under the logistic loss (2 under hinge)."""
    lin = nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([1.0, 2.0, 2.0]).view(1, 3, 1, 1))
    real, fake = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    t = discriminator_terms(lin, real, fake, 10.0, d_logistic)
    torch.testing.assert_close(t["r1"], torch.tensor(0.5 * 9 * 4))  # |w|^2 = 9 per pixel, 4 pixels
    torch.testing.assert_close(t["adv"], torch.tensor(2 * math.log(2)))
    assert "r1" not in discriminator_terms(lin, real, fake, 0.0, d_logistic)


def test_face_mask_and_stand_in_swap_known_values():
    mask = face_ellipse_mask(32, (0.5, 0.5, 0.3, 0.3), edge=0.2)
    assert mask.shape == (1, 1, 32, 32) and float(mask[0, 0, 16, 16]) == 1.0 and float(mask[0, 0, 0, 0]) == 0.0
    src, tgt = torch.full((1, 3, 32, 32), 0.8), torch.linspace(-0.5, 0.5, 32).expand(1, 3, 32, 32).contiguous()
    swap = blended_swap(src, tgt, mask)
    assert torch.equal(swap[..., 0, 0], tgt[..., 0, 0])  # outside the ellipse: the target
    assert abs(float(swap[0, 0, 16, 16]) - float((tgt * mask).sum() / (3 * mask.sum()))) < 1e-4  # colour-matched
    torch.testing.assert_close(blended_swap(tgt, tgt, mask), tgt)  # the target onto itself: unchanged


def test_margins_of_a_copy_are_one_and_of_a_stand_in_swap_lower():
    """Sanity of the margin statistic: the target as its own 'swap' is maximally similar in every block;
    a different face blended in is less so, and a margin must be a similarity in (-1, 1]."""
    torch.manual_seed(0)
    ident = TinyIdentity()
    g = torch.Generator().manual_seed(1)
    faces = [torch.rand(3, 32, 32, generator=g) * 2 - 1 for _ in range(8)]
    copies = [{"source": {"image": f}, "target": {"image": f}} for f in faces]
    others = [{"source": {"image": a}, "target": {"image": b}} for a, b in zip(faces, faces[1:] + faces[:1])]
    same = ifsr_margin_stats(ident, copies, LAYERS, (0.5, 0.5, 0.3, 0.3), 0.3, batch_size=3)
    assert same.pairs == 8 and all(abs(m - 1) < 1e-5 for m in same.margins)
    swap = ifsr_margin_stats(ident, others, LAYERS, (0.5, 0.5, 0.3, 0.3), 0.3, batch_size=3)
    assert all(-1 < m < 0.999 for m in swap.margins) and all(lo <= m <= hi for lo, m, hi in
                                                             zip(swap.q10, swap.margins, swap.q90))
    with pytest.raises(ValueError, match="no pairs"):
        ifsr_margin_stats(ident, [], LAYERS, (0.5, 0.5, 0.3, 0.3), 0.3)


def test_margins_of_another_config_are_refused(tmp_path):
    cfg = section("train_facedancer")
    with pytest.raises(ValueError, match="no IFSR margins"):
        load_margins(tmp_path, cfg)
    doc = {"identity_encoder": cfg.identity_encoder, "image_size": cfg.image_size, "layers": list(cfg.ifsr.layers),
           "margins": [0.5] * len(cfg.ifsr.layers)}
    (tmp_path / MARGINS_FILE).write_text(json.dumps(doc))
    assert load_margins(tmp_path, cfg)["margins"] == doc["margins"]
    (tmp_path / MARGINS_FILE).write_text(json.dumps({**doc, "image_size": 128, "identity_encoder": "arcface_iresnet50"}))
    with pytest.raises(ValueError, match="identity_encoder 'arcface_iresnet50' .* image_size 128"):
        load_margins(tmp_path, cfg)
    (tmp_path / MARGINS_FILE).write_text(json.dumps({**doc, "margins": [0.5]}))
    with pytest.raises(ValueError, match="1 margins for"):
        load_margins(tmp_path, cfg)


def test_faceswap_train_facedancer_measures_margins_then_trains(train_tables, tmp_path):
    """`faceswap train facedancer` (dvc.yaml's train@facedancer): ifsr_margins, then train_facedancer with
    those margins; one bundle any consumer loads, the margins it was trained with beside it."""
    from faceswap.cli import main

    params = write_params(tmp_path / "params.yaml", train_facedancer={
        "steps": 2, "batch_size": 2, "image_size": 32, "val_every": 0,
        "ifsr": {"layers": [0, 1], "pairs": 6, "batch_size": 4, "face_ellipse": [0.55, 0.5, 0.3, 0.26],
                 "feather": 0.3},
        "model": {"encoder_channels": [8, 16, 16], "bottleneck_blocks": 1, "mapping_dim": 16, "mapping_layers": 2},
        "disc": {"base_channels": 8, "max_channels": 16, "num_down": 2}})
    out = tmp_path / "models" / "facedancer"
    assert main(["train", "facedancer", "--out-dir", str(out), "--metrics", str(tmp_path / "m.json"),
                 "--plots-dir", str(tmp_path / "plots"), "--params", str(params),
                 "--checkpoint-root", str(tmp_path / "ckpt"), *data_args(train_tables)]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert list(metrics) == ["ifsr_margins", "train_facedancer"]
    assert metrics["ifsr_margins"]["pairs"] == 6 and set(metrics["ifsr_margins"]) == {"pairs", "seconds", "margin_block0",
                                                                                      "margin_block1"}
    assert metrics["train_facedancer"]["steps"] == 2
    assert {"g_id", "g_ifsr", "g_cycle", "g_adv", "d_adv", "d_r1"} <= set(metrics["train_facedancer"])
    margins = json.loads((out / "ifsr_margins" / MARGINS_FILE).read_text())
    assert json.loads((out / MARGINS_FILE).read_text())["margins"] == margins["margins"]
    assert all(-1 < m < 1 for m in margins["margins"]) and margins["layers"] == [0, 1]
    assert (out / "ifsr_margins" / "ifsr_margins_examples.png").stat().st_size > 0
    b = load_bundle(out)
    assert b.architecture.name == "facedancer" and b.img_size == 32 and b.align_size == 64
    assert b.meta["ifsr_margins"] == margins["margins"]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert b.generator(x, x).shape == (1, 3, 32, 32)


def test_train_facedancer_refuses_a_bundle_of_another_architecture_or_size(tmp_path):
    from faceswap_models.facedancer.config import FaceDancerConfig
    from faceswap_models.facedancer.generator import FaceDancer
    from faceswap_models.faceshifter.config import FaceShifterConfig
    from faceswap_models.faceshifter.generator import FaceShifter
    from stages import train_facedancer

    detect = section("detect")
    other = save_bundle(tmp_path / "fs", FaceShifter(FaceShifterConfig.tiny()), align_size=64, template_scale=1.4,
                        detect=detect)
    cfg = section("train_facedancer", image_size=32,
                  model={"encoder_channels": [8, 16, 16], "bottleneck_blocks": 1, "mapping_dim": 16,
                         "mapping_layers": 2})
    with pytest.raises(ValueError, match="a FaceShifter bundle, train_facedancer needs a FaceDancer one"):
        train_facedancer.build_model(cfg, seed=0, init_bundle=other)
    tiny = save_bundle(tmp_path / "fd", FaceDancer(FaceDancerConfig.tiny()), align_size=64, template_scale=1.4,
                       detect=detect)
    with pytest.raises(ValueError, match="its generator config differs from train_facedancer's"):
        train_facedancer.build_model(cfg, seed=0, init_bundle=tiny)
    same = save_bundle(tmp_path / "same", train_facedancer.build_model(cfg, seed=3), align_size=64,
                       template_scale=1.4, detect=detect)
    tuned = train_facedancer.build_model(cfg, seed=0, init_bundle=same)
    fresh = train_facedancer.build_model(cfg, seed=0)
    assert not torch.equal(next(tuned.net.parameters()), next(fresh.net.parameters()))
