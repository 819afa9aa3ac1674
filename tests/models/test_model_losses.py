"""Every loss: identical inputs -> 0, plus a hand-computed value."""
from __future__ import annotations

import math

import pytest
import torch

from faceswap_models import losses as L
from faceswap_models.config import ShapeLossWeights, SwapLossWeights


def test_paper_weights() -> None:
    w = SwapLossWeights()
    assert (w.adv, w.rec, w.id, w.exp, w.ldmk, w.perc, w.flow) == (1, 10, 5, 10, 5000, 2, 3)
    s = ShapeLossWeights()
    assert (s.adv, s.rec, s.ldmk) == (1, 10, 800)
    with pytest.raises(Exception):
        w.rec = 1.0  # type: ignore[misc]  # frozen


def test_hinge() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2 -> mean 2.5/3
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + x): 0, 1 -> mean 0.5
    assert L.d_hinge_loss(real, fake).item() == pytest.approx(2.5 / 3 + 0.5)
    assert L.d_hinge_loss(torch.ones(4), -torch.ones(4)).item() == 0.0  # perfect margin
    assert L.g_hinge_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_reconstruction_masked() -> None:
    a = torch.zeros(3, 1, 2, 2)
    b = torch.zeros(3, 1, 2, 2)
    b[0] = 1.0  # pair 0: mse 1
    b[1] = 2.0  # pair 1: mse 4
    b[2] = 3.0  # pair 2: mse 9, cross-identity -> ignored
    same = torch.tensor([True, True, False])
    assert L.reconstruction_loss(a, b, same).item() == pytest.approx(2.5)
    assert L.reconstruction_loss(a, b).item() == pytest.approx(14 / 3)
    assert L.reconstruction_loss(b, b, same).item() == 0.0
    out = a.clone().requires_grad_(True)
    none = L.reconstruction_loss(out, b, torch.zeros(3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and out.grad is not None and out.grad.abs().sum() == 0


def test_identity() -> None:
    e = torch.randn(4, 8)
    assert L.identity_loss(e, 3 * e).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    assert L.identity_loss(a, b).item() == pytest.approx((1.0 + 2.0) / 2)


def test_expression() -> None:
    e = torch.randn(3, 5, requires_grad=True)
    z = L.expression_loss(e, e.detach())
    z.backward()
    assert z.item() == 0.0 and torch.isfinite(e.grad).all()
    a, b = torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.zeros(2, 2)
    assert L.expression_loss(a, b).item() == pytest.approx(2.5)  # (5 + 0) / 2


def test_landmark_inner_51() -> None:
    t = torch.rand(2, 68, 2) * 255
    p = t.clone()
    p[:, :17] += 50.0  # contour differences are ignored
    assert L.landmark_loss(p, t, 256).item() == 0.0
    p2 = t.clone()
    p2[:, 17:, 0] += 2.56  # every inner x off by 0.01 of the image -> mse = 0.01^2 / 2
    assert L.landmark_loss(p2, t, 256).item() == pytest.approx(0.5e-4, rel=1e-4)
    assert L.landmark_loss(p2[:, 17:], t[:, 17:], 256).item() == pytest.approx(0.5e-4, rel=1e-4)
    with pytest.raises(AssertionError):
        L.landmark_loss(t[:, :17], t[:, :17], 256)


def test_landmark_mse_contour() -> None:
    t = torch.zeros(1, 17, 2)
    assert L.landmark_mse(t + 10.0, t, 10).item() == pytest.approx(1.0)


def test_perceptual() -> None:
    fa = [torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 2, 2)]
    fb = [torch.ones(1, 2, 3, 3), torch.full((1, 4, 2, 2), 2.0)]
    assert L.perceptual_loss(fa, fa).item() == 0.0
    assert L.perceptual_loss(fa, fb).item() == pytest.approx(1.0 + 4.0)
    assert L.perceptual_loss(fa, fb, kind="l1").item() == pytest.approx(1.0 + 2.0)


def test_flow() -> None:
    v = torch.zeros(2, 2, 4, 4, requires_grad=True)
    z = L.flow_loss(v)
    z.backward()
    assert z.item() == 0.0 and torch.isfinite(v.grad).all()
    w = torch.zeros(1, 2, 1, 2)
    w[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # norms 5 and 0 -> mean 2.5
    assert L.flow_loss(w).item() == pytest.approx(2.5)


def test_r1_penalty() -> None:
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    logits = (2.0 * x).flatten(1).sum(1)  # dD/dx = 2 everywhere: ||g||^2 = 4 * 4 = 16 per sample
    assert L.r1_penalty(logits, x).item() == pytest.approx(0.5 * 16)
    y = torch.randn(2, 3, requires_grad=True)
    assert L.r1_penalty(torch.zeros(2) * y.sum(), y).item() == 0.0


def test_swap_total_and_unknown_terms() -> None:
    terms = {k: torch.tensor(1.0) for k in L.SWAP_TERMS}
    out = L.swap_generator_loss(terms)
    assert out["total"].item() == pytest.approx(1 + 10 + 5 + 10 + 5000 + 2 + 3)
    assert set(out) == set(L.SWAP_TERMS) | {"total"}
    no_flow = {k: v for k, v in terms.items() if k != "flow"}  # first half of training
    assert L.swap_generator_loss(no_flow)["total"].item() == pytest.approx(5028.0)
    with pytest.raises(ValueError, match="unknown loss term"):
        L.swap_generator_loss({"adv": torch.tensor(1.0), "attr": torch.tensor(1.0)})


def test_shape_total_and_discriminator_total() -> None:
    out = L.shape_generator_loss({"adv": torch.tensor(0.5), "rec": torch.tensor(0.1), "ldmk": torch.tensor(0.01)})
    assert out["total"].item() == pytest.approx(0.5 + 1.0 + 8.0)
    d = L.discriminator_loss(torch.ones(2), -torch.ones(2), r1=torch.tensor(2.0), r1_weight=0.5)
    assert d["adv"].item() == 0.0 and d["total"].item() == pytest.approx(1.0)
    assert math.isclose(L.discriminator_loss(torch.zeros(2), torch.zeros(2))["total"].item(), 2.0)


def test_structural_loss_ranks_noise_worst() -> None:
    """L1 + (1 - SSIM): 0 for a copy, small for a slight blur, large for noise of the same colours."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some structure
    blur = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    noise = x[..., torch.randperm(32)][..., torch.randperm(32), :]  # same pixels, shuffled
    assert L.structural_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    assert L.structural_loss(blur, x).item() < 0.5 * L.structural_loss(noise, x).item()
