"""FaceShifter networks, losses and configs: tiny shapes, gradients, AAD known values, paper sizes on meta."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceswap.core.config import ConfigError
from faceswap_models.faceshifter import losses as FL
from faceswap_models.faceshifter.config import (IDENTITY_ENCODER_DIMS, AEILossWeights, AEINetConfig, FaceShifterConfig,
                                                HEARLossWeights, HEARNetConfig, MultiScaleDiscConfig)
from faceswap_models.faceshifter.networks import (AADGenerator, AADLayer, AADResBlock, AEINet, HEARNet,
                                                  MultiLevelAttributesEncoder, MultiScaleDiscriminator,
                                                  parameter_counts)
from faceswap_models.losses import identity_loss

REPO = Path(__file__).resolve().parents[2]


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _images(b: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _z_id(b: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


# --------------------------------------------------------------------------- shapes
def test_tiny_shapes_and_range() -> None:
    torch.manual_seed(0)
    cfg = FaceShifterConfig.tiny()
    assert cfg.img_size == 32 and cfg.aei.num_levels == 4
    assert cfg.aei.att_channels == (32, 32, 16, 16) and cfg.aei.att_sizes == (4, 8, 16, 32)
    aei, hear = AEINet(cfg.aei), HEARNet(cfg.hear)
    disc = MultiScaleDiscriminator(MultiScaleDiscConfig.tiny())
    xt, z_id = _images(2, 32, 1), _z_id(2, 512, 2)
    y, z_att = aei(z_id, xt)
    assert y.shape == (2, 3, 32, 32)
    assert -1.0 <= y.min().item() and y.max().item() <= 1.0
    assert [tuple(z.shape) for z in z_att] == [(2, 32, 4, 4), (2, 32, 8, 8), (2, 16, 16, 16), (2, 16, 32, 32)]
    # the last level is the bilinear x2 copy of the one before
    up = F.interpolate(z_att[2], scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(z_att[3], up)
    assert isinstance(aei.encoder, MultiLevelAttributesEncoder) and isinstance(aei.generator, AADGenerator)
    assert hear(y, xt - y).shape == (2, 3, 32, 32)
    logits = disc(y)  # 4x4 convs with padding 2: 32 -> 17 -> 9 -> 10 -> 11; 16 -> 9 -> 5 -> 6 -> 7
    assert [tuple(t.shape) for t in logits] == [(2, 1, 11, 11), (2, 1, 7, 7)]
    sn = MultiScaleDiscriminator(MultiScaleDiscConfig(num_scales=2, base_channels=8, num_layers=2, max_channels=16,
                                                      spectral_norm=True))
    assert [tuple(t.shape) for t in sn(y)] == [(2, 1, 11, 11), (2, 1, 7, 7)]


def test_paper_att_levels() -> None:
    cfg = AEINetConfig.paper()
    assert cfg.att_channels == (1024, 2048, 1024, 512, 256, 128, 64, 64)
    assert cfg.att_sizes == (2, 4, 8, 16, 32, 64, 128, 256)


def test_res_block_shortcut() -> None:
    same, diff = AADResBlock(8, 8, 4, 16), AADResBlock(8, 3, 4, 16)
    assert same.aad_skip is None and same.conv_skip is None
    assert diff.aad_skip is not None and diff.conv_skip is not None
    h, z, zid = torch.randn(2, 8, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 16)
    assert same(h, z, zid).shape == (2, 8, 4, 4) and diff(h, z, zid).shape == (2, 3, 4, 4)


# --------------------------------------------------------------------------- gradients
def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    cfg = FaceShifterConfig.tiny()
    aei, hear = AEINet(cfg.aei), HEARNet(cfg.hear)
    disc = MultiScaleDiscriminator(MultiScaleDiscConfig.tiny())
    xs, xt, same = _images(2, 32, 3), _images(2, 32, 4), torch.tensor([True, False])
    xs[0] = xt[0]
    proj = torch.randn(3 * 32 * 32, 512, generator=torch.Generator().manual_seed(5))  # frozen stand-in id net

    def embed(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.flatten(1) @ proj, dim=1)

    z_src = embed(xs)
    y, z_t = aei(z_src, xt)
    w = AEILossWeights.tiny()
    loss_aei = (w.adv * FL.multiscale_g_hinge(disc(y)) + w.att * FL.attribute_loss(aei.encoder(y), z_t)
                + w.id * identity_loss(embed(y), z_src) + w.rec * FL.half_l2_reconstruction(y, xt, same))
    loss_d = FL.multiscale_d_hinge(disc(xt), disc(y.detach()))
    y_d = y.detach()
    refined = hear(y_d, xt - y_d)
    loss_hear = (identity_loss(embed(refined), z_src) + FL.change_loss(refined, y_d)
                 + FL.half_l2_reconstruction(refined, xt, same))
    (loss_aei + loss_d + loss_hear).backward()
    named = [(f"aei.{n}", p) for n, p in aei.named_parameters()] + \
            [(f"hear.{n}", p) for n, p in hear.named_parameters()] + \
            [(f"disc.{n}", p) for n, p in disc.named_parameters()]
    assert len(named) > 100
    bad = [n for n, p in named if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not bad, f"parameters without a non-zero finite gradient: {bad}"


# --------------------------------------------------------------------------- AAD known values
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_aad_mask_selects_identity_or_attribute_path(norm: str) -> None:
    torch.manual_seed(0)
    layer = AADLayer(c_h=4, c_att=3, id_dim=5, norm=norm)
    h, z_att, z_id = torch.randn(2, 4, 6, 6) * 3 + 1, torch.randn(2, 3, 6, 6), torch.randn(2, 5)
    dims = (2, 3) if norm == "instance" else (0, 2, 3)
    mean, var = h.mean(dims, keepdim=True), h.var(dims, unbiased=False, keepdim=True)
    h_bar = (h - mean) / torch.sqrt(var + 1e-5)
    ident = layer.id_gamma(z_id)[:, :, None, None] * h_bar + layer.id_beta(z_id)[:, :, None, None]
    attr = layer.att_gamma(z_att) * h_bar + layer.att_beta(z_att)
    with torch.no_grad():
        layer.mask.weight.zero_()
        layer.mask.bias.fill_(-50.0)  # M = sigmoid(-50) ~ 2e-22
        out0, m0 = layer(h, z_att, z_id, return_mask=True)
        layer.mask.bias.fill_(50.0)  # M = 1 in float32
        out1, m1 = layer(h, z_att, z_id, return_mask=True)
    assert m0.shape == (2, 1, 6, 6) and m0.max().item() < 1e-20 and (m1 == 1).all()
    torch.testing.assert_close(out0, ident, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out1, attr, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ident, attr, atol=1e-2)  # the two paths really differ
    with torch.no_grad():  # half and half: the average
        layer.mask.bias.fill_(0.0)
        torch.testing.assert_close(layer(h, z_att, z_id), (ident + attr) / 2, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- losses
def test_attribute_loss() -> None:
    a = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 4, 4)]
    b = [torch.ones(1, 2, 2, 2), torch.zeros(1, 1, 4, 4)]
    b[1][..., :2, :] = 2.0  # half of the elements differ by 2: mean 2
    assert FL.attribute_loss(a, b).item() == pytest.approx(0.5 * (1.0 + 2.0))
    assert FL.attribute_loss(b, b).item() == 0.0


def test_half_l2_reconstruction() -> None:
    a = torch.zeros(3, 1, 2, 2)
    b = torch.zeros(3, 1, 2, 2)
    b[0], b[1], b[2] = 1.0, 2.0, 3.0  # per-pair mse 1, 4, 9
    assert FL.half_l2_reconstruction(a, b, torch.tensor([True, True, False])).item() == pytest.approx(1.25)
    assert FL.half_l2_reconstruction(a, b, torch.tensor([False, False, True])).item() == pytest.approx(4.5)
    out = a.clone().requires_grad_(True)
    none = FL.half_l2_reconstruction(out, b, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert out.grad is not None and (out.grad == 0).all()
    nan = b.clone()
    nan[2] = float("nan")  # a non-selected pair cannot poison the loss
    assert FL.half_l2_reconstruction(a, nan, torch.tensor([True, False, False])).item() == pytest.approx(0.5)


def test_change_loss() -> None:
    refined = torch.tensor([1.0, -1.0, 3.0, 0.0]).view(1, 1, 2, 2)
    assert FL.change_loss(refined, torch.zeros(1, 1, 2, 2)).item() == pytest.approx(1.25)
    assert FL.change_loss(refined, refined).item() == 0.0


def test_multiscale_hinge() -> None:
    assert FL.multiscale_d_hinge([torch.ones(2, 1, 3, 3), torch.ones(2, 1, 2, 2)],
                                 [-torch.ones(2, 1, 3, 3), -torch.ones(2, 1, 2, 2)]).item() == 0.0
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.zeros(4)]  # relu(1 - x): mean 2.5/3; 1
    fake = [torch.tensor([-2.0, 0.0]), torch.zeros(4)]  # relu(1 + x): mean 0.5; 1
    assert FL.multiscale_d_hinge(real, fake).item() == pytest.approx(((2.5 / 3 + 0.5) + 2.0) / 2)
    assert FL.multiscale_g_hinge([torch.tensor([1.0, 3.0]), torch.tensor([-1.0])]).item() == pytest.approx(-0.5)
    assert FL.multiscale_g_hinge([torch.ones(3), torch.ones(2, 2)]).item() == -1.0


# --------------------------------------------------------------------------- paper sizes
def test_paper_size_parameter_counts() -> None:
    cfg = FaceShifterConfig.paper()
    with torch.device("meta"):
        aei = AEINet(cfg.aei)
        hear = HEARNet(cfg.hear)
        disc = MultiScaleDiscriminator(MultiScaleDiscConfig.paper())
        disc_sn = MultiScaleDiscriminator(MultiScaleDiscConfig(spectral_norm=True))
    counts = parameter_counts()
    for k, v in counts.items():
        print(f"{k:28s} {v / 1e6:8.2f} M")
    assert all(p.is_meta for p in aei.parameters())
    assert counts == {"AEINet": _count(aei), "AEINet.encoder": _count(aei.encoder),
                      "AEINet.generator": _count(aei.generator), "HEARNet": _count(hear),
                      "MultiScaleDiscriminator": _count(disc)}
    # encoder, by hand: bias-free 4x4 (transposed) convs, 16 c_in c_out, + BN (2 c_out) each
    enc = cfg.aei.encoder_channels
    down = sum(16 * a * b + 2 * b for a, b in zip((3,) + enc[:-1], enc))
    att = cfg.aei.att_channels
    up = sum(16 * att[j] * enc[-2 - j] + 2 * enc[-2 - j] for j in range(len(enc) - 1))
    assert counts["AEINet.encoder"] == down + up == 67_087_744
    # generator: 3x3 convs gamma/beta_att on z_att up to 2048 channels dominate (~285 M; 1x1 would be ~117 M)
    assert 280e6 < counts["AEINet.generator"] < 290e6
    assert counts["AEINet"] == counts["AEINet.encoder"] + counts["AEINet.generator"]
    assert 15e6 < counts["HEARNet"] < 18e6  # U-Net 64..512, ~16.7 M
    # pix2pixHD D (ndf 64, 3 layers) is ~2.76 M per scale
    assert 3 * 2.7e6 < counts["MultiScaleDiscriminator"] < 3 * 2.8e6
    assert _count(disc_sn) > counts["MultiScaleDiscriminator"]  # biases where instance norm removed them


# --------------------------------------------------------------------------- configs
def test_config_round_trip_and_errors() -> None:
    for cfg in (FaceShifterConfig.tiny(), FaceShifterConfig.paper()):
        assert FaceShifterConfig.from_dict(cfg.to_dict()) == cfg
    assert FaceShifterConfig.from_dict({}) == FaceShifterConfig.paper()
    assert FaceShifterConfig.from_dict({"identity_encoder": "arcface_iresnet100"}).aei == AEINetConfig.paper()
    for cls in (AEINetConfig, HEARNetConfig, MultiScaleDiscConfig, AEILossWeights, HEARLossWeights):
        assert cls.from_dict(cls.tiny().to_dict()) == cls.tiny()
        with pytest.raises(ConfigError, match="unknown key"):
            cls.from_dict({"no_such_key": 1})
    with pytest.raises(ConfigError, match="unknown key"):
        FaceShifterConfig.from_dict({"aei": {"encoder_widths": [8]}})
    with pytest.raises(ConfigError, match="hear.img_size"):
        FaceShifterConfig(aei=AEINetConfig.tiny(), hear=HEARNetConfig.paper())
    with pytest.raises(ConfigError, match="hear.img_size"):
        FaceShifterConfig.from_dict({"aei": AEINetConfig.tiny().to_dict()})
    with pytest.raises(ConfigError, match="identity_encoder"):
        FaceShifterConfig(identity_encoder="vggface")
    with pytest.raises(ConfigError, match="id_dim"):
        FaceShifterConfig(aei=AEINetConfig(id_dim=128))
    with pytest.raises(ConfigError, match="divisible"):
        AEINetConfig(img_size=96)  # 96 % 2**7
    with pytest.raises(ConfigError, match="divisible"):
        HEARNetConfig(img_size=40)
    with pytest.raises(ConfigError, match="generator_channels"):
        AEINetConfig(generator_channels=(64, 32))
    with pytest.raises(ConfigError):
        AEINetConfig.from_dict({"aad_norm": "layer"})
    assert AEINetConfig(encoder_channels=[8, 16], generator_channels=[8, 8, 8], img_size=32).encoder_channels == (8, 16)
    w, h = AEILossWeights.paper(), HEARLossWeights.paper()
    assert (w.adv, w.att, w.id, w.rec) == (1.0, 10.0, 5.0, 10.0) and (h.id, h.chg, h.rec) == (1.0, 1.0, 1.0)


def test_identity_encoder_names_match_the_registry() -> None:
    from faceswap_models.auxiliary import IDENTITY_ENCODERS

    assert set(IDENTITY_ENCODER_DIMS) == set(IDENTITY_ENCODERS)


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, faceswap_models.faceshifter.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
