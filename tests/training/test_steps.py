"""Step functions on a fixed batch: losses fall, phases touch only their own parameters, NaN is skipped."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from faceswap.faces.threedmm import LinearFaceModel
from faceswap.training.contour import ContourProjector
from faceswap.data.records import FaceDataset, PairDataset
from faceswap.training.loop import run_step
from faceswap.training.steps import Phase, flow_to_rgb, sample_grid
from tinytasks import SIZE, mae_task, shape_task, swap_task
from paramsutil import loop  # noqa: E402

CPU = torch.device("cpu")
SCALER = torch.amp.GradScaler("cpu", enabled=False)


def collate(items):
    return torch.utils.data.default_collate(items)


@pytest.fixture(scope="module")
def face_batch(train_records):
    ds = FaceDataset(train_records, SIZE)
    return collate([ds[i] for i in range(8)])


@pytest.fixture(scope="module")
def pair_batch(train_records, train_tables):
    ds = PairDataset(train_records, SIZE, same_identity_ratio=0.5, threedmm_model=train_tables["threedmm_model"])
    return collate([ds[i] for i in range(4)])


def phase_total(task, name, batch, step=0, seed=0):
    torch.manual_seed(seed)
    phase = next(p for p in task.phases(step) if p.name == name)
    with torch.no_grad():
        return float(phase.loss(batch)["total"])


def run_steps(task, batch, n, cfg=loop(steps=1, batch_size=1)):
    logs = []
    for s in range(n):
        torch.manual_seed(s)
        logs.append(run_step(task, [batch], s, cfg, SCALER, CPU, 1))
    return logs


def test_contour_projector_matches_numpy(train_tables, train_records):
    model = LinearFaceModel.load(train_tables["threedmm_model"])
    proj = ContourProjector(model)
    r = train_records
    got = proj(*(torch.from_numpy(a[:5]) for a in (r.shape, r.expression, r.pose, r.camera)))  # (5, K, 2)
    want = np.stack([model.contour2d(r.coefficients(i)) for i in range(5)])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)
    np.testing.assert_allclose(got.numpy(), r.contour[:5], atol=1e-3)  # the table's own projection


def test_mae_step_reduces_loss(face_batch):
    task = mae_task()
    before = phase_total(task, "mae", face_batch)
    run_steps(task, face_batch, 25)
    after = phase_total(task, "mae", face_batch)
    assert after < 0.8 * before, (before, after)


def test_mae_validator_fixed_masks_and_tells_trained_from_init(face_batch, train_records):
    from faceswap.training.validation import MAEValidator

    val = MAEValidator.from_records(train_records, SIZE, max_images=8)
    assert val.images.shape == (8, 3, SIZE, SIZE)
    task = mae_task()
    mae = task.modules["mae"]
    init = val(mae)["val/mae_loss"]
    assert val(mae)["val/mae_loss"] == init  # the same masks every call
    assert mae.training  # left as it was
    run_steps(task, face_batch, 25)
    assert val(mae)["val/mae_loss"] < 0.8 * init
    with pytest.raises(ValueError, match="images"):
        MAEValidator(torch.zeros(0, 3, SIZE, SIZE))


def test_shape_validator_scores_the_warp_against_doing_nothing(train_records, train_tables):
    from faceswap.training.validation import ShapeValidator

    task = shape_task(train_tables["threedmm_model"])
    val = ShapeValidator.from_records(train_records, SIZE, train_tables["threedmm_model"], task.aux, pairs=4)

    class Identity(torch.nn.Module):  # a Dshape that leaves I2 as it is
        def forward(self, i2, p12, contour, parsing):
            return i2, torch.zeros(i2.shape[0], 2, *i2.shape[2:])

    class Blank(Identity):  # one that erases the face
        def forward(self, i2, p12, contour, parsing):
            return torch.zeros_like(i2), torch.zeros(i2.shape[0], 2, *i2.shape[2:])

    same = val(Identity())
    assert same["val/ldmk"] == pytest.approx(same["val/ldmk_unwarped"]) and same["val/ldmk_unwarped"] > 0
    assert val(Blank())["val/ldmk"] != pytest.approx(same["val/ldmk_unwarped"])
    m = val(task.modules["dshape"])
    assert np.isfinite(m["val/ldmk"]) and task.modules["dshape"].training


def test_shape_generator_loss_falls_and_d_phase_leaves_gres_alone(pair_batch, train_tables):
    task = shape_task(train_tables["threedmm_model"])
    before = phase_total(task, "g", pair_batch)
    gres0 = {k: v.clone() for k, v in task.modules["dshape"].state_dict().items()}
    d_only = [p for p in task.phases(0) if p.name == "d"]
    task.phases = lambda step: d_only  # one D update must not move Gres
    run_step(task, [pair_batch], 0, loop(steps=1, batch_size=1), SCALER, CPU, 1)
    assert all(torch.equal(gres0[k], v) for k, v in task.modules["dshape"].state_dict().items())
    del task.phases
    logs = run_steps(task, pair_batch, 20)
    after = phase_total(task, "g", pair_batch)
    assert after < before, (before, after)
    assert {"d/adv", "d/r1", "g/adv", "g/rec", "g/ldmk", "g/total"} <= set(logs[-1][0])


def test_swap_generator_loss_falls_with_every_term(pair_batch, train_tables):
    task = swap_task(train_tables["threedmm_model"], flow_start_step=0)
    terms = next(p for p in task.phases(0) if p.name == "g").loss(pair_batch)
    assert set(terms) == {"adv", "rec", "id", "exp", "ldmk", "perc", "flow", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert "flow" not in next(p for p in swap_task(train_tables["threedmm_model"], flow_start_step=5)
                              .phases(4) if p.name == "g").loss(pair_batch)
    before = phase_total(task, "g", pair_batch)
    run_steps(task, pair_batch, 15)
    after = phase_total(task, "g", pair_batch)
    assert after < before, (before, after)
    # the frozen MAE encoder and the frozen Dshape never change
    assert all(not p.requires_grad for p in task.aux.dshape.parameters())
    assert all(p.grad is None for p in task.modules["gen"].encoder.parameters())


def test_term_stats_known_values():
    from types import SimpleNamespace

    from faceswap.training.steps import term_stats

    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    terms = {"a": (out ** 2).sum(), "b": out.sum(), "c": out.mean()}
    st = term_stats(terms, SimpleNamespace(a=2.0, b=0.5, c=0.0), out)
    assert float(st["w_a"]) == pytest.approx(60.0) and float(st["w_b"]) == pytest.approx(5.0)
    assert float(st["gn_a"]) == pytest.approx(4 * float(out.detach().norm()))  # d(2 x²)/dx = 4x
    assert float(st["gn_b"]) == pytest.approx(0.5 * 2.0)  # 0.5 * ||ones(4)||
    assert float(st["gn_c"]) == 0.0 and float(st["w_c"]) == 0.0  # weight 0 pulls nothing
    assert out.grad is None  # stops at the output; nothing accumulated


def test_swap_task_logs_term_balance_on_log_steps(pair_batch, train_tables):
    task = swap_task(train_tables["threedmm_model"], flow_start_step=0)
    task.stats_every = 5
    quiet = next(p for p in task.phases(0) if p.name == "g").loss(pair_batch)
    assert not any(k.startswith(("w_", "gn_")) for k in quiet)
    terms = next(p for p in task.phases(4) if p.name == "g").loss(pair_batch)  # logged after step 5
    names = ("adv", "rec", "id", "exp", "ldmk", "perc", "flow")
    assert {f"w_{k}" for k in names} | {f"gn_{k}" for k in names} <= set(terms)
    total = sum(float(terms[f"w_{k}"]) for k in names)
    assert total == pytest.approx(float(terms["total"].detach()), rel=1e-4)
    assert all(float(terms[f"gn_{k}"]) >= 0 for k in names) and float(terms["gn_rec"]) > 0


def test_nonfinite_loss_skips_the_update(face_batch):
    task = mae_task()
    w0 = {k: v.clone() for k, v in task.modules["mae"].state_dict().items()}
    task.phases = lambda step: [Phase("mae", "mae", lambda b: {"total": task.modules["mae"](b["image"])[0] * float("nan")})]
    logs, skipped = run_step(task, [face_batch], 0, loop(steps=1, batch_size=1), SCALER, CPU, 1)
    assert skipped and np.isnan(logs["mae/total"])
    assert all(torch.equal(w0[k], v) for k, v in task.modules["mae"].state_dict().items())


def test_sample_grids(face_batch, pair_batch, train_tables):
    cols = mae_task().samples(face_batch)
    assert len(cols) == 3 and all(c.shape == (4, 3, SIZE, SIZE) for c in cols)
    grid = sample_grid(swap_task(train_tables["threedmm_model"]).samples(pair_batch))
    assert grid.shape == (4 * SIZE, 4 * SIZE, 3) and grid.dtype == torch.uint8
    rgb = flow_to_rgb(torch.zeros(1, 2, 4, 4))
    assert torch.allclose(rgb, torch.full_like(rgb, -1.0))  # no flow = black


def test_zero_weight_terms_cost_nothing(pair_batch, train_tables):
    """A term whose weight is 0 is neither in the terms nor computed: its network is never called."""
    import dataclasses

    task = swap_task(train_tables["threedmm_model"], flow_start_step=0)

    class Refuse(torch.nn.Module):
        def forward(self, *a, **k):
            raise AssertionError("called for a zero-weight term")

        def expression_embedding(self, *a, **k):
            raise AssertionError("called for a zero-weight term")

    task.aux.identity = Refuse()
    task.aux.regressor = Refuse()
    task.weights = dataclasses.replace(task.weights, id=0.0, exp=0.0, ldmk=0.0, flow=0.0, perc=0.0)
    terms = next(p for p in task.phases(10) if p.name == "g").loss(pair_batch)
    assert set(terms) == {"adv", "rec", "total"}


def test_ssim_perceptual_needs_no_feature_network(pair_batch, train_tables):
    """perceptual='ssim': the perc term is L1 + 1 - SSIM of output vs target, and the identity
    encoder is asked for its embedding only (no feature maps)."""
    from faceswap_models.losses import structural_loss

    task = swap_task(train_tables["threedmm_model"], flow_start_step=0)
    task.aux.perceptual = "ssim"
    calls = []
    ident = task.aux.identity
    task.aux.identity = lambda x, return_features=False: calls.append(return_features) or ident(x, return_features)
    torch.manual_seed(0)
    terms = next(p for p in task.phases(0) if p.name == "g").loss(pair_batch)
    with torch.no_grad():
        out = task.modules["gen"](pair_batch["source"]["image"], pair_batch["target"]["image"])
    assert float(terms["perc"].detach()) == pytest.approx(float(structural_loss(out, pair_batch["target"]["image"])), rel=1e-5)
    assert calls and not any(calls)


def test_identity_warm_up_and_one_generator_pass_per_step(pair_batch, train_tables):
    """Before id_start_step the identity network is not run (a reconstruction warm-up); every step
    runs the generator once: the d phase learns from the g phase's detached output."""
    task = swap_task(train_tables["threedmm_model"], flow_start_step=0)
    task.id_start_step = 3
    task.aux.perceptual = "ssim"  # ("shared" features would run the identity network for perc)
    gen = task.modules["gen"]
    calls = []
    hook = gen.register_forward_hook(lambda m, i, o: calls.append(o.detach().clone()))
    ident = task.aux.identity
    seen = []
    task.aux.identity = lambda x, return_features=False: seen.append(1) or ident(x, return_features)
    try:
        for step, want_id in ((0, False), (3, True)):
            calls.clear()
            seen.clear()
            g, d = task.phases(step)
            assert (g.name, d.name) == ("g", "d")
            terms = g.loss(pair_batch)
            assert ("id" in terms) is want_id and bool(seen) is want_id
            d_terms = d.loss(pair_batch)
            assert len(calls) == 1 and torch.isfinite(d_terms["total"])
    finally:
        hook.remove()


def test_skip_start_step_opens_the_skip_and_switches_reconstruction_pairs(train_records, train_tables):
    """train_swap.skip_start_step / skip_reconstruction_pairs: before the step the decoder.skip branches
    are closed (the output is the generator's without them, they get no gradient) and a same-identity
    batch's reconstruction pairs become I_s = I_t; from the step on the skip is open and the pairs are
    the dataset's own (another face of the identity)."""
    import dataclasses

    from faceswap_models.config import SwapConfig
    from faceswap_models.swap import SwapGenerator
    from faceswap.training.steps import same_image_pairs

    cfg = SwapConfig.tiny()
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, skip=["source"]))
    task = swap_task(train_tables["threedmm_model"], swap_config=cfg, skip_start_step=2,
                     pair_schedule=("same_image", "same_identity"))
    ds = PairDataset(train_records, SIZE, same_identity_ratio=0.5, same="identity")
    batch = collate([ds[i] for i in range(8)])
    same = batch["same_identity"].bool()
    assert same.any() and (~same).any()
    assert not torch.equal(batch["source"]["image"][same], batch["target"]["image"][same])
    swapped = same_image_pairs(batch)
    torch.testing.assert_close(swapped["source"]["image"][same], batch["target"]["image"][same], rtol=0, atol=0)
    torch.testing.assert_close(swapped["source"]["image"][~same], batch["source"]["image"][~same], rtol=0, atol=0)
    assert torch.equal(swapped["source"]["index"][same], batch["target"]["index"][same])

    gen = task.modules["gen"]
    for p in gen.decoder.skips.parameters():  # as after training: the open skip changes the output
        torch.nn.init.normal_(p, std=0.1)
    plain = SwapGenerator(SwapConfig.tiny())
    plain.load_state_dict(gen.state_dict(), strict=False)
    s, t = batch["source"]["image"][:2], batch["target"]["image"][:2]
    seen = []
    hook = gen.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    try:
        g, _ = task.phases(1)
        gen.zero_grad()
        g.loss(batch)["total"].backward()
        assert not bool(gen.skip_open)
        torch.testing.assert_close(seen[-1][same], batch["target"]["image"][same], rtol=0, atol=0)
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in gen.decoder.skips.parameters())
        with torch.no_grad():
            torch.testing.assert_close(gen(s, t), plain(s, t), rtol=0, atol=0)
        g, _ = task.phases(2)
        g.loss(batch)["total"].backward()
        assert bool(gen.skip_open) and "skip_open" in gen.state_dict()
        torch.testing.assert_close(seen[-1], batch["source"]["image"], rtol=0, atol=0)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.decoder.skips.parameters())
        with torch.no_grad():
            assert not torch.allclose(gen(s, t), plain(s, t))
    finally:
        hook.remove()


def test_input_sensitivity_tells_copy_from_paste():
    """bench.train.input_sensitivity: a copy of the target ignores the source (0), a paste follows it (1)."""
    from bench.train import input_sensitivity

    torch.manual_seed(0)
    s, t = torch.rand(6, 3, 8, 8) * 2 - 1, torch.rand(6, 3, 8, 8) * 2 - 1

    class Fixed(torch.nn.Module):
        def __init__(self, which):
            super().__init__()
            self.which = which

        def forward(self, a, b):
            return b if self.which == "target" else a

    assert input_sensitivity(Fixed("target"), s, t, "source") == 0.0
    assert input_sensitivity(Fixed("source"), s, t, "source") == pytest.approx(1.0)
    assert input_sensitivity(Fixed("target"), s, t, "target") == pytest.approx(1.0)


def test_ssim_term_ignores_inner_face_detail_when_fswa_lowpasses_the_target(pair_batch):
    """With target_face_lowpass the structural term compares, on cross-identity pairs, only what Fswa
    keeps of the target: detail added inside the face ellipse does not change it, detail outside
    does; on reconstruction pairs (the target is the answer) all of it counts."""
    import dataclasses

    from faceswap_models.config import SwapConfig, SwapLossWeights
    from faceswap_models.swap import SwapGenerator
    from faceswap.training.steps import SwapAux, swap_generator_terms

    class Fixed(SwapGenerator):  # outputs a given image, keeps SwapGenerator.target_input
        def forward(self, source, target):
            return self.out

    aux = SwapAux(identity=None, perceptual="ssim", regressor=None, dshape=None, contour=None, crop_size=64)
    w = SwapLossWeights(adv=0, rec=0, id=0, exp=0, ldmk=0, perc=1, flow=0)
    tgt = pair_batch["target"]["image"]
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(SIZE // 2, SIZE // 2) * 0.2  # zero mean per 4x4

    def perc(k: int, detail: torch.Tensor, same: bool = False) -> float:
        g = Fixed(dataclasses.replace(SwapConfig.tiny(), target_face_lowpass=k))
        g.out = tgt + detail
        batch = {**pair_batch, "same_identity": torch.full((len(tgt),), same)}
        return float(swap_generator_terms(g, None, aux, batch, w, use_flow=False)["perc"])

    m = Fixed(dataclasses.replace(SwapConfig.tiny(), target_face_lowpass=4)).face_mask[0, 0]
    inner_blocks = -torch.nn.functional.max_pool2d(-m[None, None], 4)[0, 0] == 1
    inner = inner_blocks.repeat_interleave(4, 0).repeat_interleave(4, 1).float()
    assert perc(4, 0 * checker) == pytest.approx(0, abs=1e-6)
    assert perc(4, checker * inner) == pytest.approx(0, abs=1e-5)  # inner detail: not the target's to keep
    assert perc(4, checker * (m == 0)) > 0.01 and perc(0, checker * inner) > 0.01  # outside / paper: counted
    assert perc(4, checker * inner, same=True) > 0.01  # reconstruction pairs: counted


def test_source_embeddings_are_computed_once_per_face():
    """With a cache, a face's source embedding is computed on its first sight and reused (the network
    sees only the misses); without one, or without row indices, every call embeds every image."""
    from faceswap.training.steps import SwapAux

    seen = []

    def identity(x):
        seen.append(len(x))
        return torch.nn.functional.normalize(x.flatten(1)[:, :8], dim=1)

    torch.manual_seed(0)
    imgs = torch.rand(4, 3, 8, 8) * 2 - 1
    aux = SwapAux(identity=identity, perceptual="ssim", regressor=None, dshape=None, contour=None,
                  crop_size=8, source_cache_size=10)
    first = aux.source_identity(imgs, torch.tensor([0, 1, 2, 0]))
    assert seen == [4]  # the first call embeds its misses (row 0 twice in one batch: both computed)
    torch.testing.assert_close(first, identity(imgs))
    seen.clear()
    again = aux.source_identity(-imgs, torch.tensor([2, 1, 5, 0]))  # new pixels, rows 0-2 cached
    assert seen == [1]  # only row 5 is new
    torch.testing.assert_close(again[[0, 1, 3]], first[[2, 1, 0]])  # cached: the first views' embeddings
    torch.testing.assert_close(again[2], identity(-imgs)[2])
    off = SwapAux(identity=identity, perceptual="ssim", regressor=None, dshape=None, contour=None, crop_size=8)
    seen.clear()
    off.source_identity(imgs, torch.tensor([0, 1, 2, 3])), off.source_identity(imgs, torch.tensor([0, 1, 2, 3]))
    assert seen == [4, 4]
