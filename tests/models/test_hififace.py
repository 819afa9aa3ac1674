"""HifiFace networks, losses and configs: tiny shapes, gradients, SFF fusion and shape-loss known values,
the output mask blend, the 3D shape-aware identity, paper sizes on the meta device."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from faceswap.core.config import ConfigError
from faceswap_models.config import RegressorConfig
from faceswap_models.hififace import losses as HL
from faceswap_models.hififace.config import HifiFaceConfig, HifiFaceLossWeights, HifiFaceNetConfig
from faceswap_models.hififace.generator import HifiFace, fused_coefficients, shape_aware_identity
from faceswap_models.hififace.networks import HifiFaceNet, mask_blend, parameter_counts, semantic_fusion


def _images(b: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _v_sid(b: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(b, dim, generator=torch.Generator().manual_seed(seed))


def test_tiny_generator_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    cfg = HifiFaceNetConfig.tiny()
    out = HifiFaceNet(cfg)(_v_sid(2, cfg.style_dim, 1), _images(2, 32, 2))
    assert out.image.shape == out.raw.shape == (2, 3, 32, 32) and out.mask.shape == (2, 1, 32, 32)
    assert cfg.low_size == 8 and out.low.shape == (2, 3, 8, 8) and out.low_mask.shape == (2, 1, 8, 8)
    assert out.image.abs().max() <= 1 and out.low.abs().max() <= 1
    assert all(((m > 0) & (m < 1)).all() for m in (out.mask, out.low_mask))


def test_every_generator_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    cfg = HifiFaceNetConfig.tiny()
    net = HifiFaceNet(cfg)
    out = net(_v_sid(2, cfg.style_dim, 1), _images(2, 32, 2))
    (out.image.square().mean() + out.low.square().mean() + out.low_mask.mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_sff_fusion_and_output_blend_known_values() -> None:
    """z_fuse = M_low z_dec + (1 - M_low) sigma(z_enc); I_r = M_r I_out + (1 - M_r) I_t."""
    dec, enc = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), -1.0)
    m = torch.tensor([[[[0.0, 1.0], [0.25, 0.5]]]])  # (1, 1, 2, 2), one mask for every channel
    fused = semantic_fusion(dec, enc, m)
    torch.testing.assert_close(fused[0, :, 0, 0], enc[0, :, 0, 0])  # outside the face: the target's features
    torch.testing.assert_close(fused[0, :, 0, 1], dec[0, :, 0, 1])  # inside: the decoder's
    torch.testing.assert_close(fused[0, :, 1, 0], torch.full((4,), 0.25 * 3 - 0.75))
    raw, tgt = torch.ones(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(mask_blend(raw, tgt, m), (2 * m - 1).expand(1, 3, 2, 2))


def test_a_zero_output_mask_returns_the_target_exactly() -> None:
    torch.manual_seed(0)
    cfg = HifiFaceNetConfig.tiny()
    net = HifiFaceNet(cfg)
    with torch.no_grad():
        net.out_head[-1].bias[3] = -100.0
        t = _images(2, 32, 2)
        out = net(_v_sid(2, cfg.style_dim, 1), t)
    assert torch.equal(out.image, t) and not torch.allclose(out.raw, t)


def test_shape_loss_known_values() -> None:
    """(1/N) sum_n ||q_fuse - q_n||_1 for I_r and I_low; 0 when both land on c_fuse's landmarks."""
    q = torch.tensor([[[0.0, 0.0], [2.0, 2.0]]])  # (1, 2, 2)
    r = q + torch.tensor([[[1.0, -1.0], [0.0, 0.0]]])  # point 0 off by (1, -1): L1 2, mean over 2 points 1
    low = q + 3.0  # every point off by (3, 3): 6
    torch.testing.assert_close(HL.landmark_l1(r, q), torch.tensor(1.0))
    torch.testing.assert_close(HL.shape_loss(q, r, low), torch.tensor(7.0))
    assert float(HL.shape_loss(q, q, q)) == 0.0


def test_segmentation_loss_and_dilated_face_mask() -> None:
    parsing = torch.zeros(1, 8, 8, dtype=torch.long)
    parsing[0, 3:5, 3:5] = 1  # skin
    parsing[0, 0, 0] = 6  # hair: not face
    m = HL.dilated_face_mask(parsing, 1)
    assert m.shape == (1, 1, 8, 8) and m.sum() == 16 and m[0, 0, 2:6, 2:6].min() == 1 and m[0, 0, 0, 0] == 0
    assert HL.dilated_face_mask(parsing, 0).sum() == 4
    assert float(HL.segmentation_loss(F.interpolate(m, size=(4, 4), mode="area"), m, m)) == 0.0
    # all-zero masks miss the face: L1 = its share of the image, at both resolutions
    torch.testing.assert_close(HL.segmentation_loss(torch.zeros(1, 1, 4, 4), torch.zeros_like(m), m),
                               torch.tensor(2 * 16 / 64))


def test_shape_aware_identity_takes_the_source_shape_and_the_target_expression_and_pose() -> None:
    v_id, shape = torch.ones(1, 4), torch.full((1, 2), 7.0)
    pred = {"expression": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
            "pose": torch.tensor([[180.0, 0.0, -90.0], [0.0, 0.0, 0.0]])}
    v = shape_aware_identity(v_id, shape, pred)  # one source, two targets
    assert v.shape == (2, 2 + 3 + 3 + 4)
    torch.testing.assert_close(v[0], torch.tensor([7, 7, 1, 2, 3, math.pi, 0, -math.pi / 2, 1, 1, 1, 1]))
    torch.testing.assert_close(v[1, 2:5], pred["expression"][1])
    torch.testing.assert_close(fused_coefficients(shape, pred["expression"][:1], pred["pose"][:1]), v[:1, :8])


def test_generator_swaps_with_its_frozen_extractor_and_exposes_its_mask() -> None:
    torch.manual_seed(0)
    g = HifiFace(HifiFaceConfig.tiny()).eval()
    s, t = _images(2, 32, 1), _images(2, 32, 2)
    with torch.no_grad():
        out = g(s, t)
        image, mask = g.output_mask(g.encode_source(s), s, t)
        extras = g.extras(s, t)
        other = g(_images(2, 32, 7), t)
    assert torch.equal(out, image) and mask.shape == (2, 1, 32, 32)
    assert set(extras) == {"mask", "low_mask", "low", "raw"} and all(v.shape[-1] == 32 for v in extras.values())
    assert not torch.allclose(out, other, atol=1e-4)  # the source matters
    g.train()
    assert not g.identity.training and not g.regressor.training
    frozen = [n for n, p in g.named_parameters() if p.requires_grad and not n.startswith("net.")]
    assert not frozen, frozen


def test_config_checks_and_paper_weights() -> None:
    w = HifiFaceLossWeights.paper()
    assert (w.shape, w.id, w.adv, w.seg, w.rec, w.cycle, w.perc) == (0.5, 5.0, 1.0, 100.0, 20.0, 1.0, 5.0)
    with pytest.raises(ConfigError, match="not divisible"):
        HifiFaceNetConfig(img_size=100)
    with pytest.raises(ConfigError, match="sff_level"):
        HifiFaceNetConfig(sff_level=5)
    with pytest.raises(ConfigError, match="coeff_dim"):
        HifiFaceConfig(regressor=RegressorConfig(n_shape=40))
    with pytest.raises(ConfigError, match="id_dim 128"):
        HifiFaceConfig(net=HifiFaceNetConfig(id_dim=128))
    cfg = HifiFaceConfig.from_dict({"net": {"img_size": 64}, "regressor": {"width": 16}})
    assert cfg.net.encoder_channels == (64, 128, 256, 512, 512, 512) and cfg.regressor.width == 16


def test_paper_size_parameter_counts() -> None:
    """The 256 px generator on the meta device (README "Model sizes")."""
    c = parameter_counts()
    assert c["HifiFaceNet"] == c["HifiFaceNet.encoder"] + c["HifiFaceNet.decoder"] + c["HifiFaceNet.sff"]
    assert round(c["HifiFaceNet"] / 1e6, 2) == 42.15
    assert round(c["Discriminator"] / 1e6, 2) == 14.30
    assert HifiFaceNetConfig.paper().low_size == 64


def test_lpips_form_of_the_perceptual_loss_known_values() -> None:
    """LPIPS (uniform weights): unit-normalised features per pixel, squared distance summed over channels."""
    from faceswap_models.losses import perceptual_loss

    a, b = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1), torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(perceptual_loss([a], [b], kind="lpips"), torch.tensor(2.0))
    torch.testing.assert_close(perceptual_loss([a, a], [5 * a, b], kind="lpips"), torch.tensor(2.0))  # scale-free
