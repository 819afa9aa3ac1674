"""FaceDancer networks, losses and configs: tiny shapes, gradients, AFFA gating and the IFSR hinge known
values, the cycle / reconstruction / adversarial terms, paper sizes on the meta device."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faceswap.core.config import ConfigError
from faceswap_models.facedancer import losses as DL
from faceswap_models.facedancer.config import FaceDancerConfig, FaceDancerLossWeights, FaceDancerNetConfig
from faceswap_models.facedancer.networks import AFFA, AdaIN, FaceDancerNet, parameter_counts


def _images(b: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _z_id(b: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_tiny_generator_shapes_masks_and_range() -> None:
    torch.manual_seed(0)
    cfg = FaceDancerNetConfig.tiny()
    net = FaceDancerNet(cfg)
    out, masks = net(_z_id(2, 512, 1), _images(2, 32, 2), return_masks=True)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    # AFFA at every decoder level but the bottleneck and the full-resolution one (a concatenation there)
    assert cfg.affa_levels == (1, 2) and len(net.affa) == 2
    assert [tuple(m.shape) for m in masks] == [(2, 32, 8, 8), (2, 16, 16, 16)]
    assert all(((m > 0) & (m < 1)).all() for m in masks)


def test_every_generator_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    net = FaceDancerNet(FaceDancerNetConfig.tiny())
    out = net(_z_id(2, 512, 1), _images(2, 32, 2))
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_the_identity_embedding_changes_the_output() -> None:
    torch.manual_seed(0)
    net = FaceDancerNet(FaceDancerNetConfig.tiny()).eval()
    t = _images(2, 32, 2)
    with torch.no_grad():
        assert not torch.allclose(net(_z_id(2, 512, 1), t), net(_z_id(2, 512, 9), t), atol=1e-4)


def test_affa_mask_zero_keeps_the_target_and_one_keeps_the_identity_features() -> None:
    """m = 0 -> z_a (target skip), m = 1 -> h (identity-conditioned); in between, the convex mix."""
    h, z = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), -1.0)
    assert torch.equal(AFFA.fuse(h, z, torch.zeros_like(h)), z)
    assert torch.equal(AFFA.fuse(h, z, torch.ones_like(h)), h)
    assert torch.equal(AFFA.fuse(h, z, torch.full_like(h, 0.25)), torch.full_like(h, 0.25 * 3 - 0.75))
    affa = AFFA(4)
    with torch.no_grad():  # drive the attention to saturation through its last conv's bias
        last = affa.attention[-1]
        last.weight.zero_()
        last.bias.fill_(-50.0)
        out, m = affa(h, z)
        assert m.shape == h.shape and torch.allclose(out, z)
        last.bias.fill_(50.0)
        assert torch.allclose(affa(h, z)[0], h)


def test_adain_known_values() -> None:
    """(1 + gamma) * IN(x) + beta: zero style weights give plain instance norm, a bias gives the shift."""
    a = AdaIN(2, 3)
    with torch.no_grad():
        a.fc.weight.zero_()
        a.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.5, -2.0]))  # gamma (1, 0), beta (0.5, -2)
    x = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]]])  # (1, 2, 1, 2)
    out = a(x, torch.zeros(1, 3))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([-2.0, 2.0]) + 0.5, atol=1e-3, rtol=0)
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([-2.0, -2.0]))


def test_ifsr_hinge_known_values() -> None:
    """sum over blocks of E_b max(0, m_i - cos_i): zero when every block is at least as similar as its margin."""
    a = [torch.tensor([[1.0, 0.0]]).view(1, 2, 1, 1), torch.tensor([[1.0, 1.0]]).view(1, 2, 1, 1)]
    b = [torch.tensor([[0.0, 1.0]]).view(1, 2, 1, 1), torch.tensor([[1.0, 1.0]]).view(1, 2, 1, 1)]
    cos = DL.block_cosines(a, b)
    torch.testing.assert_close(cos, torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(DL.ifsr_loss(a, b, [0.6, 0.9]), torch.tensor(0.6))  # 0.6 - 0 + max(0, 0.9 - 1)
    torch.testing.assert_close(DL.ifsr_loss(a, b, [-0.1, 0.5]), torch.tensor(0.0))
    torch.testing.assert_close(DL.ifsr_loss(b, b, [0.99, 0.99]), torch.tensor(0.0))  # a copy of the target
    with pytest.raises(AssertionError, match="margins"):
        DL.ifsr_loss(a, b, [0.5])


def test_ifsr_pulls_the_output_features_towards_the_target() -> None:
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    t = torch.randn(2, 8, 3, 3)
    loss = DL.ifsr_loss([x], [t], [0.99])
    loss.backward()
    stepped = x.detach() - 0.5 * x.grad
    assert DL.block_cosines([stepped], [t]).mean() > DL.block_cosines([x.detach()], [t]).mean()


def test_reconstruction_cycle_and_adversarial_known_values() -> None:
    out, tgt = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    assert float(DL.masked_l1(out, tgt, torch.tensor([True, False]))) == 1.0
    assert float(DL.masked_l1(out, tgt, torch.tensor([False, False]))) == 0.0
    assert float(DL.cycle_loss(tgt, tgt)) == 0.0 and float(DL.cycle_loss(out, tgt)) == 1.0
    log2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(DL.g_logistic(torch.zeros(3)), log2)
    torch.testing.assert_close(DL.d_logistic(torch.zeros(3), torch.zeros(3)), 2 * log2)
    # a discriminator that is sure and right scores near 0; a fooled one high
    assert float(DL.d_logistic(torch.full((3,), 20.0), torch.full((3,), -20.0))) < 1e-6
    assert float(DL.g_logistic(torch.full((3,), -20.0))) > 19


def test_config_checks_and_paper_weights() -> None:
    w = FaceDancerLossWeights.paper()
    assert (w.id, w.rec, w.perc, w.cycle, w.ifsr, w.gp) == (10.0, 5.0, 0.2, 1.0, 1.0, 10.0)
    with pytest.raises(ConfigError, match="not divisible"):
        FaceDancerNetConfig(img_size=100)
    with pytest.raises(ConfigError, match="at least two levels"):
        FaceDancerNetConfig(encoder_channels=(8,))
    with pytest.raises(ConfigError, match="unknown identity_encoder"):
        FaceDancerConfig(identity_encoder="vggface")
    with pytest.raises(ConfigError, match="id_dim 128"):
        FaceDancerConfig(net=FaceDancerNetConfig(id_dim=128))
    assert FaceDancerConfig.from_dict({"net": {"img_size": 64}}).net.encoder_channels == (64, 128, 256, 512, 512, 512)


def test_paper_size_parameter_counts() -> None:
    """The 256 px generator on the meta device (README "Model sizes")."""
    c = parameter_counts()
    assert c["FaceDancerNet"] == c["FaceDancerNet.encoder"] + c["FaceDancerNet.mapping"] + \
        c["FaceDancerNet.decoder"] + c["FaceDancerNet.affa"] + sum(
            p.numel() for m in (nn.Conv2d(128, 64, 3, padding=1), nn.Conv2d(64, 3, 1))
            for p in m.parameters())  # + the level-0 concatenation's conv + to_rgb
    assert round(c["FaceDancerNet"] / 1e6, 2) == 56.39
    assert round(c["Discriminator"] / 1e6, 2) == 14.30
    cfg = FaceDancerNetConfig.paper()
    assert cfg.level_sizes == (256, 128, 64, 32, 16, 8) and cfg.affa_levels == (1, 2, 3, 4)


def test_target_face_lowpass_blurs_only_the_inner_face() -> None:
    """Not in the paper (0 = off): the target's inner face is low-passed before the encoder, so a detail
    there cannot reach the output; outside the face the encoder sees the target as is."""
    import dataclasses

    from faceswap_models.swap import lowpass

    torch.manual_seed(0)
    cfg = FaceDancerNetConfig.tiny()
    t = _images(2, 32, 3)
    assert torch.equal(FaceDancerNet(cfg).target_input(t), t)  # the paper's G
    net = FaceDancerNet(dataclasses.replace(cfg, target_face_lowpass=4)).eval()
    seen = net.target_input(t)
    assert torch.equal(seen[..., 0, 0], t[..., 0, 0])  # a corner: untouched
    torch.testing.assert_close(seen[..., 17, 16], lowpass(t, 4)[..., 17, 16])  # the face centre: low-passed
    detail = t.clone()
    detail[..., 16:18, 16:18] += torch.tensor([[0.2, -0.2], [-0.2, 0.2]])  # zero-mean within a 4 x 4 block
    z = _z_id(2, 512, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(z, detail), net(z, t))
    with pytest.raises(ConfigError, match="target_face_lowpass 5"):
        dataclasses.replace(cfg, target_face_lowpass=5)
