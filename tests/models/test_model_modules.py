"""Per-module checks on tiny configs: shapes, finiteness, gradients reach every parameter, determinism."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from faceswap_models.config import FlowFaceConfig
from faceswap_models.decoder import ConvDecoder
from faceswap_models.discriminator import Dres, PatchDiscriminator
from faceswap_models.fusion import CrossAttentionFusion
from faceswap_models.mae import FaceMAE
from faceswap_models.shape import SemanticFlowGenerator, ShapeDiscriminator
from faceswap_models.swap import SwapGenerator

CFG = FlowFaceConfig.tiny()
S = CFG.swap.mae.img_size  # 32
N, D = CFG.swap.mae.num_patches, CFG.swap.mae.dim  # 16, 32
K = CFG.shape.num_landmarks


def _imgs(b: int = 2) -> Tensor:
    return torch.rand(b, 3, S, S) * 2 - 1


def _shape_inputs(b: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    p2 = torch.rand(b, K, 2) * (S - 1)
    p12 = p2 + torch.randn(b, K, 2)
    s2 = torch.randint(0, CFG.shape.num_classes, (b, S, S))
    return p12, p2, s2


@dataclass
class Case:
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple]
    out_shape: tuple[int, ...]
    call: Callable[[nn.Module, tuple], Tensor] = lambda m, x: m(*x)


CASES: dict[str, Case] = {
    "mae": Case(lambda: FaceMAE(CFG.swap.mae), lambda: (_imgs(),), (), lambda m, x: m(*x)[0]),
    "mae_encoder": Case(lambda: FaceMAE(CFG.swap.mae), lambda: (_imgs(),), (2, N, D),
                        lambda m, x: m.forward_encoder(*x)),
    "fusion": Case(lambda: CrossAttentionFusion(CFG.swap.fusion),
                   lambda: (torch.randn(2, N, D), torch.randn(2, N, D)), (2, N, D)),
    "conv_decoder": Case(lambda: ConvDecoder(CFG.swap.decoder), lambda: (torch.randn(2, N, D),), (2, 3, S, S)),
    "swap_generator": Case(lambda: SwapGenerator(CFG.swap), lambda: (_imgs(), _imgs()), (2, 3, S, S)),
    "patch_discriminator": Case(lambda: PatchDiscriminator(CFG.swap_disc), lambda: (_imgs(),), (2, 1, 8, 8)),
    "dres": Case(lambda: Dres(CFG.shape_disc), lambda: (_imgs(),), (2, 1, 8, 8)),
    "flow_generator": Case(lambda: SemanticFlowGenerator(CFG.shape), _shape_inputs, (2, 2, S, S)),
    "shape_discriminator": Case(lambda: ShapeDiscriminator(CFG.shape), lambda: (_imgs(), *_shape_inputs()),
                                (2, 3, S, S), lambda m, x: m(*x)[0]),
}
# frozen by design: the MAE encoder inside Fswa; the MAE encoder-only output leaves the decoder unused
FROZEN_PREFIX = {"swap_generator": "encoder.", "mae_encoder": "decoder."}


def _run(name: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    case = CASES[name]
    torch.manual_seed(seed)
    model = case.build()
    x = case.inputs()
    return model, case.call(model, x)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shape_and_finite(name: str) -> None:
    _, out = _run(name)
    assert tuple(out.shape) == CASES[name].out_shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_parameter_gets_gradient(name: str) -> None:
    model, out = _run(name)
    out.float().pow(2).mean().backward() if out.dim() else out.backward()
    frozen = FROZEN_PREFIX.get(name)
    missing = []
    for pname, p in model.named_parameters():
        if frozen and pname.startswith(frozen):
            continue
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0:
            missing.append(pname)
    assert not missing, f"{name}: no/zero/non-finite grad for {missing}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_under_seed(name: str) -> None:
    _, a = _run(name, seed=123)
    _, b = _run(name, seed=123)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_swap_encoder_frozen() -> None:
    torch.manual_seed(0)
    g = SwapGenerator(CFG.swap)
    g.train()
    assert g.fusion.training and g.decoder.training
    assert not g.encoder.training, "frozen encoder must stay in eval mode after .train()"
    assert all(not p.requires_grad for p in g.encoder.parameters())
    g(_imgs(), _imgs()).mean().backward()
    assert all(p.grad is None for p in g.encoder.parameters())


def test_swap_loads_pretrained_mae_encoder() -> None:
    torch.manual_seed(0)
    mae = FaceMAE(CFG.swap.mae)
    torch.manual_seed(1)
    g = SwapGenerator(CFG.swap)
    g.load_encoder_state(mae.state_dict())
    x = _imgs()
    torch.testing.assert_close(g.encode(x), mae.eval().forward_encoder(x))


def test_fusion_returns_attention_maps() -> None:
    torch.manual_seed(0)
    fus = CrossAttentionFusion(CFG.swap.fusion).eval()
    e_s, e_t = torch.randn(2, N, D), torch.randn(2, N, D)
    out, attn = fus(e_s, e_t, return_attn=True)
    assert attn.shape == (2, CFG.swap.fusion.heads, N, N)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, CFG.swap.fusion.heads, N))
    # the explicit-softmax path matches the scaled_dot_product_attention path
    torch.testing.assert_close(out, fus(e_s, e_t), rtol=1e-5, atol=1e-5)


def test_swap_return_attn() -> None:
    torch.manual_seed(0)
    out, attn = SwapGenerator(CFG.swap)(_imgs(), _imgs(), return_attn=True)
    assert out.shape == (2, 3, S, S) and attn.shape == (2, CFG.swap.fusion.heads, N, N)


def test_mae_masking_ratio_and_loss_only_on_masked() -> None:
    torch.manual_seed(0)
    mae = FaceMAE(CFG.swap.mae)
    x = _imgs()
    loss, pred, mask = mae(x)
    assert pred.shape == (2, N, CFG.swap.mae.patch_size**2 * 3)
    assert mask.sum(1).tolist() == [N * CFG.swap.mae.mask_ratio] * 2
    # perfect predictions on the masked patches give zero loss, whatever is predicted elsewhere
    from faceswap_models.layers import patchify
    t = patchify(x, CFG.swap.mae.patch_size)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
    fake = torch.where(mask.bool()[..., None], t, torch.full_like(t, 5.0))
    assert mae.forward_loss(x, fake, mask).item() == pytest.approx(0.0, abs=1e-10)


def test_patchify_roundtrip() -> None:
    from faceswap_models.layers import patchify, unpatchify
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(unpatchify(patchify(x, 8), 8), x)


def test_target_face_lowpass_hides_inner_face_detail_only() -> None:
    """target_face_lowpass = k: detail inside the face ellipse does not reach the encoder, detail
    outside and the k x k means do; 0 (the paper) passes the target through untouched."""
    import dataclasses

    from faceswap_models.swap import face_ellipse_mask

    mask = face_ellipse_mask(S, CFG.swap.face_ellipse)[0, 0]  # (S, S)
    assert mask[int(0.56 * S), S // 2] == 1 and mask[0, 0] == 0 and mask[-1, -1] == 0
    inner_blocks = -torch.nn.functional.max_pool2d(-mask[None, None], 4)[0, 0] == 1  # (S/4, S/4) blocks all inside
    inner = inner_blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)  # (S, S)
    outer = mask == 0
    assert inner.sum() >= 64
    torch.manual_seed(0)
    off = SwapGenerator(CFG.swap)
    t = _imgs()
    assert off.target_input(t) is t
    on = SwapGenerator(dataclasses.replace(CFG.swap, target_face_lowpass=4))
    # zero-mean detail in every 4 x 4 block, placed inside the face, then outside it
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(S // 2, S // 2) * 0.3  # (S, S)
    inside = on.target_input(t + checker * inner) - on.target_input(t)
    torch.testing.assert_close(inside, torch.zeros_like(inside), atol=1e-5, rtol=0)
    outside = on.target_input(t + checker * outer) - on.target_input(t)
    assert (outside.abs() * outer).amax() == pytest.approx(0.3)
    with pytest.raises(Exception, match="target_face_lowpass"):
        dataclasses.replace(CFG.swap, target_face_lowpass=5)


def test_target_face_spare_lets_detail_through_only_inside_its_ellipses() -> None:
    """target_face_spare: inside the spared ellipses (eyes, mouth) the target reaches the encoder
    low-passed over target_spare_lowpass pixels only (0: sharp); elsewhere in the face the k x k
    low-pass still removes detail. Malformed ellipses and non-dividing sizes are refused."""
    import dataclasses

    spare = ((0.72, 0.5, 0.1, 0.16),)  # a mouth ellipse (centre y, x, radius y, x)
    cfg = dataclasses.replace(CFG.swap, target_face_lowpass=4, target_face_spare=[list(spare[0])])
    assert cfg.target_face_spare == spare  # lists from YAML / JSON become tuples (bundle configs compare equal)
    g = SwapGenerator(cfg)
    sp = g.spare_mask[0, 0]  # (S, S)
    assert sp[int(0.72 * S), S // 2] == 1 and sp[int(0.3 * S), S // 2] == 0
    t = _imgs()
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(S // 2, S // 2) * 0.3  # (S, S), zero-mean per 2 x 2
    diff = g.target_input(t + checker) - g.target_input(t)  # (B, 3, S, S)
    assert diff[..., int(0.72 * S), S // 2].abs().min() == pytest.approx(0.3)  # spared: sharp
    assert diff[..., int(0.45 * S), S // 2].abs().max() < 1e-5  # nose between eyes and mouth: low-passed
    g2 = SwapGenerator(dataclasses.replace(cfg, target_spare_lowpass=2))
    diff2 = g2.target_input(t + checker) - g2.target_input(t)
    assert diff2[..., int(0.72 * S), S // 2].abs().max() < 1e-5  # 2 x 2 detail gone, 2 x 2 means kept
    from faceswap_models.swap import lowpass
    torch.testing.assert_close(g2.target_input(t)[..., int(0.72 * S), S // 2], lowpass(t, 2)[..., int(0.72 * S), S // 2])
    with pytest.raises(Exception, match="target_face_spare"):
        dataclasses.replace(cfg, target_face_spare=[[0.5, 0.5, 0.1]])
    with pytest.raises(Exception, match="target_spare_lowpass"):
        dataclasses.replace(cfg, target_spare_lowpass=3)


def test_cafm_position_prior_starts_local_and_learns() -> None:
    """fusion.position_prior > 0: at init a target patch attends mostly to the source patch at its own
    place (nothing like that without it, the paper's CAFM, which has no prior parameter at all)."""
    import dataclasses

    torch.manual_seed(0)
    e_s, e_t = torch.randn(2, N, D), torch.randn(2, N, D)
    plain = CrossAttentionFusion(CFG.swap.fusion)
    assert plain.cross.attn.prior_log_scale is None
    local = CrossAttentionFusion(dataclasses.replace(CFG.swap.fusion, position_prior=2.0))
    own = lambda f: f(e_s, e_t, return_attn=True)[1].diagonal(dim1=-2, dim2=-1).mean().item()  # noqa: E731
    assert own(local) > 0.4 > 2 / N > own(plain) - 0.1
    out, _ = local(e_s, e_t, return_attn=True)
    torch.testing.assert_close(out, local(e_s, e_t), rtol=1e-5, atol=1e-5)  # both attention paths use it
    local(e_s, e_t).pow(2).mean().backward()
    assert local.cross.attn.prior_log_scale.grad.abs().sum() > 0


def test_decoder_skip_starts_as_without_it_then_learns() -> None:
    """decoder.skip (not in the paper): at init the generator's output equals the same weights' output
    without the skip branches (their last conv is zero); after one optimiser step every skip parameter
    gets a gradient and the output depends on the skipped image's fine detail. Bad entries are refused."""
    import dataclasses

    from faceswap_models.config import ConfigError, DecoderConfig

    cfg = dataclasses.replace(CFG.swap, decoder=dataclasses.replace(CFG.swap.decoder, skip=["source", "target"]))
    assert cfg.decoder.skip == ("source", "target")
    torch.manual_seed(0)
    g = SwapGenerator(cfg)
    plain = SwapGenerator(CFG.swap)
    assert plain.load_state_dict(g.state_dict(), strict=False).unexpected_keys  # the skip branches only
    s, t = _imgs(), _imgs()
    torch.testing.assert_close(g(s, t), plain(s, t), rtol=0, atol=0)

    opt = torch.optim.SGD([p for p in g.parameters() if p.requires_grad], lr=0.1)
    g(s, t).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    g(s, t).pow(2).mean().backward()
    dead = [n for n, p in g.named_parameters() if "skips" in n and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, dead
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(S // 2, S // 2) * 0.3  # (S, S) 2 x 2 detail
    with torch.no_grad():  # 2 x 2 detail of the source reaches the full-resolution branch, not the coarsest
        skip = torch.cat([s, g.target_input(t)], 1)  # (B, 6, S, S)
        detail = torch.cat([checker.expand_as(s), torch.zeros_like(t)], 1)

        def moved(i: int, size: int) -> float:
            return float((g.decoder.skips[i](skip + detail, (size, size)) - g.decoder.skips[i](skip, (size, size))).abs().max())

        assert moved(-1, S) > 0 and moved(0, S // 8) < 1e-3 * moved(-1, S)
    for bad in (["src"], ["source", "source"]):
        with pytest.raises(ConfigError, match="decoder.skip"):
            DecoderConfig(skip=bad)


def test_decoder_skip_source_flow_warps_the_source() -> None:
    """skip "source_flow": zero flow at init gives the source unchanged; a constant flow of one pixel
    (2 / S in grid units) shifts it by one pixel; the flow head gets a gradient once the skip branches
    are non-zero."""
    import dataclasses

    cfg = dataclasses.replace(CFG.swap, decoder=dataclasses.replace(CFG.swap.decoder, skip=["source_flow"]))
    torch.manual_seed(0)
    g = SwapGenerator(cfg)
    s = _imgs()
    fused = torch.randn(2, N, D)
    torch.testing.assert_close(g.skip_images(s, s, fused), s, rtol=0, atol=1e-6)
    with torch.no_grad():
        g.skip_flow.bias.copy_(torch.tensor([2.0 / S, 0.0]))  # dx = one pixel
    shifted = g.skip_images(s, s, fused)
    torch.testing.assert_close(shifted[..., :-1], s[..., 1:], rtol=0, atol=1e-5)  # output x reads source x + 1
    for p in g.decoder.skips.parameters():
        torch.nn.init.normal_(p, std=0.1)
    g(s, _imgs()).pow(2).mean().backward()
    assert g.skip_flow.weight.grad is not None and g.skip_flow.weight.grad.abs().sum() > 0


def test_decoder_skip_jitter_moves_the_source_in_training_only() -> None:
    """decoder.skip_jitter: in training the skip's source is moved by a random similarity (a copy of it
    no longer matches the target of a same-image pair); in eval it is the source itself."""
    import dataclasses

    from faceswap_models.config import ConfigError, DecoderConfig
    from faceswap_models.swap import jitter

    cfg = dataclasses.replace(CFG.swap, decoder=dataclasses.replace(CFG.swap.decoder, skip=["source"], skip_jitter=0.1))
    g = SwapGenerator(cfg)
    s = torch.nn.functional.interpolate(_imgs(), scale_factor=0.25, mode="bilinear").repeat_interleave(4, -1).repeat_interleave(4, -2)
    fused = torch.randn(2, N, D)
    g.eval()
    torch.testing.assert_close(g.skip_images(s, s, fused), s, rtol=0, atol=0)
    g.train()
    torch.manual_seed(0)
    moved = g.skip_images(s, s, fused)
    assert (moved - s).abs().mean() > 0.05
    torch.manual_seed(0)
    torch.testing.assert_close(moved, jitter(s, 0.1))  # the same draw under the same seed
    assert (jitter(s, 1e-4) - s).abs().max() < 0.05  # a tiny jitter barely moves a smooth image
    with pytest.raises(ConfigError, match="skip_jitter"):
        DecoderConfig(skip_jitter=0.5)
