"""HifiFace's training: the generator / discriminator objectives on tiny networks (the weighted paper terms,
where each applies, gradients, what stays frozen), the 3DMM point projection behind L_shape, and
`faceswap train hififace` end to end on the tiny tables with train_aux's regressor."""
from __future__ import annotations

import json

import pytest
import torch

from faceswap.artifacts import load_aux_regressor, load_bundle, save_bundle
from faceswap.training.contour import ContourProjector, projected_points
from faceswap.training.hififace import HifiFaceTask, hififace_generator_terms
from faceswap_models.auxiliary.regressor import FaceAttributeRegressor
from faceswap_models.config import DiscriminatorConfig, RegressorConfig
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.hififace.config import HifiFaceConfig, HifiFaceLossWeights, HifiFaceNetConfig
from faceswap_models.hififace.generator import HifiFace
from paramsutil import section  # noqa: E402
from training.conftest import N_EXP, N_SHAPE, N_VERT, tiny_face_model  # noqa: E402
from training.test_facedancer_training import TinyIdentity  # noqa: E402
from training.test_faceshifter_training import batch as image_batch  # noqa: E402
from training.test_stages import data_args, data_paths, write_params  # noqa: E402

REGRESSOR = RegressorConfig(image_size=32, width=8, hidden=32, n_shape=N_SHAPE, n_exp=N_EXP)
OPTIONS = {"crop_size": 64, "mask_dilation": 0.05}


def batch(same: list[bool], seed: int = 0) -> dict:
    """32 px pairs (I_s = I_t where same) with a target parsing: a face square in the middle."""
    b = image_batch(same, seed)
    parsing = torch.zeros(len(same), 32, 32, dtype=torch.long)
    parsing[:, 8:24, 10:22] = 1
    b["target"]["parsing"] = parsing
    return b


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = HifiFaceNetConfig(img_size=32, encoder_channels=(8, 16, 32, 32), bottleneck_blocks=1,
                            coeff_dim=N_SHAPE + N_EXP + 3)
    cfg = HifiFaceConfig(net=net, regressor=REGRESSOR)
    return HifiFace(cfg, TinyIdentity(), FaceAttributeRegressor(REGRESSOR))


def terms(model, w, b, disc=None):
    disc = disc or PatchDiscriminator(DiscriminatorConfig.tiny())
    points = ContourProjector(tiny_face_model(), "mesh")
    return hififace_generator_terms(model.net, disc, model.identity, model.regressor, points, "ssim", b, w,
                                    **OPTIONS)


def test_generator_terms_are_the_weighted_paper_losses(model):
    w = HifiFaceLossWeights.paper()
    t = terms(model, w, batch([True, False]))
    assert set(t) == {"shape", "id", "adv", "seg", "rec", "cycle", "perc", "total"}
    expected = (0.5 * t["shape"] + 5 * t["id"] + t["adv"] + 100 * t["seg"] + 20 * t["rec"] + t["cycle"]
                + 5 * t["perc"])
    torch.testing.assert_close(t["total"].detach(), expected)
    v = {k: float(x.detach()) for k, x in t.items()}
    assert v["shape"] > 0 and 0 < v["id"] < 4 and 0 < v["seg"] < 2 and v["rec"] > 0 and v["cycle"] > 0
    none_same = terms(model, w, batch([False, False]))
    assert float(none_same["rec"].detach()) == float(none_same["perc"].detach()) == 0.0  # only where I_s = I_t
    off = terms(model, HifiFaceLossWeights(shape=1, id=0, adv=0, seg=0, rec=0, cycle=0, perc=0), batch([True]))
    assert set(off) == {"shape", "total"}  # a term with weight 0 is not computed


def test_projected_points_use_the_source_shape_and_rescale_the_camera():
    """q_fuse: the source's shape with the target's expression, pose and camera; the camera scale is in the
    units of the regressor's training crops and is rescaled to the image side."""
    model = tiny_face_model()
    points = ContourProjector(model, "mesh")
    assert points.num_points == N_VERT and ContourProjector(model).num_points == 6
    pred = {"shape": torch.zeros(1, N_SHAPE), "expression": torch.zeros(1, N_EXP), "pose": torch.zeros(1, 3),
            "camera": torch.tensor([[10.0, 16.0, 16.0]])}
    q = projected_points(points, pred, size=32, crop_size=64)
    expected = 5.0 * torch.as_tensor(model.mean[:, :2], dtype=torch.float32) + 16.0  # scale 10 * 32 / 64
    torch.testing.assert_close(q[0], expected)
    shape = torch.ones(1, N_SHAPE)
    moved = projected_points(points, pred, size=32, crop_size=64, shape=shape)
    basis = torch.as_tensor(model.id_basis, dtype=torch.float32).sum(0)[:, :2]  # (V, 2)
    torch.testing.assert_close(moved[0] - q[0], 5.0 * basis)


def test_task_trains_the_generator_and_disc_never_the_frozen_extractor(model):
    disc = PatchDiscriminator(DiscriminatorConfig.tiny())
    task = HifiFaceTask(model, disc, ContourProjector(tiny_face_model(), "mesh"), "ssim", HifiFaceLossWeights(),
                        lr=1e-3, betas=(0.0, 0.99), **OPTIONS)
    frozen = {k: v.clone() for k, v in {**model.identity.state_dict(), **model.regressor.state_dict()}.items()}
    b = batch([True, False, False])
    g_phase, d_phase = task.phases(0)
    g_phase.loss(b)["total"].backward(inputs=list(model.net.parameters()))
    missing = [n for n, p in model.net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing  # encoder, decoder, every part of SFF
    d_terms = d_phase.loss(b)
    assert set(d_terms) == {"adv", "r1", "total"}
    torch.testing.assert_close(d_terms["total"].detach(), (d_terms["adv"] + 1 * d_terms["r1"]).detach())
    assert all(p.grad is None for p in [*model.identity.parameters(), *model.regressor.parameters()])
    after = {**model.identity.state_dict(), **model.regressor.state_dict()}
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    grid = task.samples(b)
    assert len(grid) == 5 and all(c.shape == (3, 3, 32, 32) for c in grid)


def test_faceswap_train_hififace_end_to_end(train_tables, tmp_path):
    """`faceswap train hififace` (dvc.yaml's train@hififace) with train_aux's regressor: one bundle that holds
    both frozen networks, swaps with them alone and blends with its own mask."""
    from faceswap.cli import main
    from stages import train_aux

    params = write_params(tmp_path / "params.yaml", train_hififace={
        "steps": 2, "batch_size": 2, "image_size": 32, "val_every": 0,
        "model": {"encoder_channels": [8, 16, 32, 32], "bottleneck_blocks": 1, "sff_level": 2},
        "disc": {"base_channels": 8, "max_channels": 16, "num_down": 2}})
    train_aux.run(data_paths(train_tables), tmp_path / "aux", params)
    out = tmp_path / "models" / "hififace"
    assert main(["train", "hififace", "--out-dir", str(out), "--metrics", str(tmp_path / "m.json"),
                 "--params", str(params), "--checkpoint-root", str(tmp_path / "ckpt"),
                 "--aux-dir", str(tmp_path / "aux"), *data_args(train_tables)]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["train_hififace"]
    assert metrics["steps"] == 2
    assert {"g_shape", "g_id", "g_seg", "g_rec", "g_cycle", "g_adv", "d_adv", "d_r1"} <= set(metrics)
    b = load_bundle(out)
    assert b.architecture.name == "hififace" and b.img_size == 32 and b.align_size == 64
    assert b.generator.cfg.net.coeff_dim == N_SHAPE + N_EXP + 3
    aux = load_aux_regressor(tmp_path / "aux", 64)
    assert all(torch.equal(v, b.generator.regressor.state_dict()[k]) for k, v in aux.state_dict().items())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        image, mask = b.generator.output_mask(b.generator.encode_source(x), x, x)
    assert image.shape == (1, 3, 32, 32) and mask.shape == (1, 1, 32, 32)


def test_train_hififace_refuses_a_bundle_of_another_architecture_or_config(train_tables, tmp_path):
    from faceswap_models.facedancer.config import FaceDancerConfig
    from faceswap_models.facedancer.generator import FaceDancer
    from stages import train_aux, train_hififace

    params = write_params(tmp_path / "params.yaml")
    train_aux.run(data_paths(train_tables), tmp_path / "aux", params)
    detect = section("detect")
    other = save_bundle(tmp_path / "fd", FaceDancer(FaceDancerConfig.tiny()), align_size=64, template_scale=1.4,
                        detect=detect)
    cfg = section("train_hififace", image_size=32, model={"encoder_channels": [8, 16, 32, 32], "bottleneck_blocks": 1})
    with pytest.raises(ValueError, match="a FaceDancer bundle, train_hififace needs a HifiFace one"):
        train_hififace.build_model(cfg, tmp_path / "aux", 64, seed=0, init_bundle=other)
    tiny = save_bundle(tmp_path / "hf", HifiFace(HifiFaceConfig.tiny()), align_size=64, template_scale=1.4,
                       detect=detect)
    with pytest.raises(ValueError, match="its generator config differs from train_hififace's"):
        train_hififace.build_model(cfg, tmp_path / "aux", 64, seed=0, init_bundle=tiny)
    with pytest.raises(ValueError, match="re-run train_aux"):  # a regressor of another crop size
        train_hififace.build_model(cfg, tmp_path / "aux", 128, seed=0)
