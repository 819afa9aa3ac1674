"""Landmark rasterisation and flow warping."""
from __future__ import annotations

import torch

from faceswap_models.shape import FlowWarp, parsing_to_onehot, rasterise_landmarks


def test_rasterise_peak_and_values() -> None:
    pts = torch.tensor([[[3.0, 5.0], [0.0, 0.0]]])  # (1, 2, 2): (x, y)
    h = rasterise_landmarks(pts, (8, 10), sigma=1.0)
    assert h.shape == (1, 2, 8, 10)
    assert h[0, 0, 5, 3] == 1.0 and h[0, 0].argmax() == 5 * 10 + 3  # row y=5, col x=3
    torch.testing.assert_close(h[0, 0, 5, 4], torch.exp(torch.tensor(-0.5)))  # 1 px away
    torch.testing.assert_close(h[0, 0, 6, 4], torch.exp(torch.tensor(-1.0)))  # sqrt(2) px away


def test_rasterise_is_differentiable_in_points() -> None:
    pts = torch.tensor([[[3.3, 4.6]]], requires_grad=True)
    (rasterise_landmarks(pts, 8, 1.5) * torch.arange(64.0).view(1, 1, 8, 8)).sum().backward()
    assert pts.grad is not None and torch.isfinite(pts.grad).all() and pts.grad.abs().sum() > 0


def test_onehot() -> None:
    lab = torch.tensor([[[0, 6], [2, 1]]])
    oh = parsing_to_onehot(lab, 7)
    assert oh.shape == (1, 7, 2, 2) and oh.sum(1).eq(1).all() and oh[0, 6, 0, 1] == 1


def test_zero_flow_is_identity() -> None:
    img = torch.randn(2, 3, 9, 11)
    out = FlowWarp()(img, torch.zeros(2, 2, 9, 11))
    torch.testing.assert_close(out, img)


def test_integer_flow_is_translation_with_border_padding() -> None:
    img = torch.randn(1, 3, 8, 10)
    flow = torch.zeros(1, 2, 8, 10)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # out[y, x] = img[y - 1, x + 2]
    out = FlowWarp()(img, flow)
    torch.testing.assert_close(out[..., 1:, :-2], img[..., :-1, 2:])
    # outside samples repeat the border: row 0 samples y=-1 -> row 0; last cols sample x>=W -> col W-1
    torch.testing.assert_close(out[..., 0, :-2], img[..., 0, 2:])
    torch.testing.assert_close(out[..., 1:, -1], img[..., :-1, -1])


def test_warp_gradients_reach_flow_and_image() -> None:
    img = torch.randn(1, 3, 8, 8, requires_grad=True)
    flow = (torch.randn(1, 2, 8, 8) * 0.3).requires_grad_(True)
    FlowWarp()(img, flow).pow(2).sum().backward()
    assert img.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0


def test_frozen_dshape_flow_passes_gradient_to_p12() -> None:
    """Fswa's flow loss reaches I_o only through P12: the frozen Dshape must pass gradients to it."""
    from faceswap_models.config import ShapeConfig
    from faceswap_models.losses import flow_loss
    from faceswap_models.shape import ShapeDiscriminator

    torch.manual_seed(0)
    cfg = ShapeConfig.tiny()
    d = ShapeDiscriminator(cfg).eval().requires_grad_(False)
    p2 = torch.rand(2, cfg.num_landmarks, 2) * (cfg.img_size - 1)
    p12 = (p2 + torch.randn_like(p2)).requires_grad_(True)
    s2 = torch.randint(0, cfg.num_classes, (2, cfg.img_size, cfg.img_size))
    flow_loss(d.flow(p12, p2, s2)).backward()
    assert p12.grad is not None and torch.isfinite(p12.grad).all() and p12.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())
