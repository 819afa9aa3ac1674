"""FaceAttributeRegressor: shapes, gradients, determinism, training on a synthetic table, weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceswap.core.schemas import ALIGNED, THREEDMM, write_table
from faceswap_models.auxiliary import WeightsError
from faceswap_models.auxiliary.regressor import FaceAttributeRegressor, RegressorConfig, load_regressor, regressor_loss
from faceswap.training.regressor import FaceTableDataset, train_regressor
from paramsutil import regressor_augment  # noqa: E402

CFG = RegressorConfig.tiny()


def _model(seed: int = 0) -> FaceAttributeRegressor:
    torch.manual_seed(seed)
    return FaceAttributeRegressor(CFG)


def _x(b: int = 2, s: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_and_finite() -> None:
    out = _model()(_x(s=48))
    shapes = {"landmarks": (2, 68, 2), "shape": (2, CFG.n_shape), "expression": (2, CFG.n_exp),
              "pose": (2, 3), "camera": (2, 3)}
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    assert all(torch.isfinite(v).all() for v in out.values())
    # landmarks are in input pixels: an untrained model sits near the input centre
    assert abs(float(out["landmarks"].detach().mean()) - 24.0) < 12.0
    emb = _model().expression_embedding(_x(s=48))
    assert torch.allclose(emb, out["expression"], atol=1e-6)


def _targets(b: int, size: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"landmarks": torch.rand(b, 68, 2, generator=g) * size,
            "shape": torch.randn(b, CFG.n_shape, generator=g),
            "expression": torch.randn(b, CFG.n_exp, generator=g),
            "pose": torch.randn(b, 3, generator=g) * 20,
            "camera": torch.cat([torch.rand(b, 1, generator=g), torch.rand(b, 2, generator=g) * size], 1)}


def test_every_parameter_and_input_gets_gradient() -> None:
    m = _model()
    x = _x(s=32).requires_grad_(True)
    terms = regressor_loss(m(x), _targets(2, 32.0), image_size=32.0)
    assert set(terms) == {"landmarks", "shape", "expression", "pose", "camera", "total"}
    terms["total"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_gradient_through_internal_resize_and_expression_embedding() -> None:
    m = _model()
    x = _x(s=64).requires_grad_(True)  # 64 -> 32 inside, antialiased
    m.expression_embedding(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_deterministic_under_seed() -> None:
    a, b = _model(7)(_x()), _model(7)(_x())
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = _model(8)(_x())
    assert not torch.equal(a["shape"], c["shape"])


@pytest.fixture()
def table(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    crops = tmp_path / "aligned"
    (crops / "id0").mkdir(parents=True)
    al, tm = [], []
    for i in range(8):
        sha = f"{i:064x}"
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        assert cv2.imwrite(str(crops / "id0" / f"{i}.png"), img)
        al.append({"sha256": sha, "identity": "id0", "path": f"src/{i}.jpg", "crop": f"id0/{i}.png",
                   "size": 32, "template_scale": 1.4, "matrix": [1, 0, 0, 0, 1, 0],
                   "landmarks5": rng.uniform(0, 32, 10).tolist(),
                   "landmarks68": rng.uniform(4, 28, 136).tolist()})
        tm.append({"sha256": sha, "identity": "id0",
                   "shape": rng.normal(size=CFG.n_shape).tolist(),
                   "expression": rng.normal(size=CFG.n_exp).tolist(),
                   "pose": rng.normal(0, 15, 3).tolist(),
                   "camera": [float(rng.uniform(0.5, 1.5)), *rng.uniform(12, 20, 2).tolist()],
                   "contour2d": rng.uniform(0, 32, 24).tolist(), "fit_rmse": 0.5})
    tm.append({**tm[0], "sha256": "f" * 64})  # fit without an aligned row: dropped by the join
    write_table(al, tmp_path / "aligned.parquet", ALIGNED)
    write_table(tm, tmp_path / "threedmm.parquet", THREEDMM)
    return tmp_path / "aligned.parquet", crops, tmp_path / "threedmm.parquet"


def test_dataset_join(table: tuple[Path, Path, Path]) -> None:
    ds = FaceTableDataset(*table)
    assert len(ds) == 8
    img, tgt = ds[3]
    assert img.shape == (3, 32, 32) and img.min() >= -1 and img.max() <= 1
    assert tgt["landmarks"].shape == (68, 2) and tgt["shape"].shape == (CFG.n_shape,)


def test_train_reduces_loss_and_round_trips(table: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "w" / "regressor.safetensors"
    m = train_regressor(*table, CFG, steps=30, batch_size=8, lr=3e-3, seed=0, out_path=out,
                        device="cpu")
    assert m["steps"] == 30 and m["n_rows"] == 8
    assert m["final_total"] < m["initial_total"], m
    loaded = load_regressor(out, CFG)
    again = load_regressor(out, CFG)
    x = _x(s=32)
    a, b = loaded(x), again(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_r_squared_known_values() -> None:
    from faceswap.training.regressor import r_squared

    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 4))
    assert r_squared(y, y) == 1.0
    assert r_squared(np.repeat(y.mean(0, keepdims=True), 50, 0), y) == pytest.approx(0.0, abs=1e-12)  # the mean
    assert r_squared(y + rng.normal(size=y.shape) * 2, y) < 0  # noise worse than the mean
    assert 0.7 < r_squared(y + rng.normal(size=y.shape) * 0.3, y) < 0.99


def test_evaluate_regressor_separates_trained_from_random(table: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Held-out figures on the training rows themselves: a model trained on them beats a random one
    on landmark NME and shape R² (a sanity check that the numbers can tell)."""
    from faceswap_models.auxiliary.regressor import FaceAttributeRegressor
    from faceswap.training.regressor import evaluate_regressor

    out = tmp_path / "w" / "regressor.safetensors"
    train_regressor(*table, CFG, steps=60, batch_size=8, lr=3e-3, seed=0, out_path=out, device="cpu")
    trained = evaluate_regressor(load_regressor(out, CFG), *table)
    torch.manual_seed(1)
    random = evaluate_regressor(FaceAttributeRegressor(CFG), *table)
    assert set(trained) == {"landmark_nme_side", "landmark_nme_iod", "shape_r2", "expression_r2", "pose_mae_deg", "rows"}
    assert trained["rows"] == 8
    assert trained["landmark_nme_side"] < random["landmark_nme_side"]
    assert trained["shape_r2"] > random["shape_r2"] and random["shape_r2"] < 0.1


def test_bad_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors header at all")
    with pytest.raises(WeightsError, match="corrupt.safetensors"):
        load_regressor(bad, CFG)
    from faceswap_models.auxiliary import save_safetensors_atomic
    other = tmp_path / "paper.safetensors"  # right format, wrong architecture
    save_safetensors_atomic(FaceAttributeRegressor(RegressorConfig(width=16)).state_dict(), other)
    with pytest.raises(WeightsError, match="paper.safetensors"):
        load_regressor(other, CFG)


def _stats(cfg: RegressorConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-head (mean, std) in normalised units, like train_regressor computes from the rows."""
    g = torch.Generator().manual_seed(5)
    n = cfg.n_landmarks
    return {"landmarks": (0.3 + 0.4 * torch.rand(n, 2, generator=g), torch.full((n, 2), 0.02)),
            "shape": (torch.randn(cfg.n_shape, generator=g), 0.5 + torch.rand(cfg.n_shape, generator=g)),
            "expression": (torch.randn(cfg.n_exp, generator=g), 0.5 + torch.rand(cfg.n_exp, generator=g)),
            "pose": (torch.tensor([5.0, -3.0, 1.0]), torch.tensor([18.0, 10.0, 3.0])),
            "camera": (torch.tensor([48.0, 0.5, 0.6]), torch.tensor([2.7, 0.01, 0.01]))}


def test_outputs_are_destandardised_into_the_callers_units() -> None:
    """Heads predict standardised values; forward returns landmarks / tx, ty in input pixels and the
    rest in target units (the units of steps.regressed_contour, swap_flow and expression loss)."""
    m = _model()
    st = _stats(CFG)
    m.set_target_stats(st)
    with torch.no_grad():
        for k in ("shape", "expression", "pose", "camera"):
            getattr(m, f"head_{k}").weight.zero_()  # z = 0: every 3DMM head returns its mean
    x = _x(b=2, s=48)
    with torch.no_grad():
        out, big = m(x), m(torch.nn.functional.interpolate(x, size=(96, 96), mode="bilinear", align_corners=False))
    assert torch.allclose(out["shape"], st["shape"][0].expand(2, -1), atol=1e-5)
    assert torch.allclose(out["pose"], st["pose"][0].expand(2, -1), atol=1e-5)
    assert torch.allclose(out["camera"], (st["camera"][0] * torch.tensor([1.0, 48, 48])).expand(2, -1), atol=1e-4)
    assert torch.allclose(m.expression_embedding(x), out["expression"], atol=1e-6)
    # landmarks: the soft-argmax starts at the prior around the mean point (within a heatmap cell)
    assert (out["landmarks"] / 48 - st["landmarks"][0]).abs().max() < 1 / 16
    # twice the input size: pixel outputs double (same internal image), unit-free ones do not change
    assert float((big["landmarks"] - 2 * out["landmarks"]).abs().mean()) < 1.0  # px of 96
    assert torch.allclose(big["camera"][:, 1:], 2 * out["camera"][:, 1:], atol=1e-3)
    assert torch.allclose(big["camera"][:, 0], out["camera"][:, 0], atol=1e-4)


def test_loss_terms_start_near_one_when_predicting_the_mean() -> None:
    """With the target std, a mean prediction scores each head about 1: no head dominates."""
    st = _stats(CFG)
    g = torch.Generator().manual_seed(0)
    tgt = {k: m + s * torch.randn(512, *m.shape, generator=g) for k, (m, s) in st.items()}
    pred = {k: m.expand_as(tgt[k]) for k, (m, _) in st.items()}
    terms = regressor_loss(pred, tgt, image_size=1.0, std={k: s for k, (_, s) in st.items()})
    for k in ("shape", "expression", "pose", "camera"):
        assert 0.85 < float(terms[k]) < 1.15, (k, terms[k])
    assert 1.1 < float(terms["landmarks"]) < 1.4  # mean of a 2-D standard normal's length: 1.25


def test_augmentation_moves_3dmm_and_landmark_targets_with_the_pixels() -> None:
    """Warping the crop and the targets together stays exact: the 3DMM projection with the new camera
    and roll lands on the moved points, and a drawn dot moves to the moved landmark."""
    from faceswap.faces.threedmm import Coefficients, LinearFaceModel
    from faceswap.training.regressor import augment_sample

    rng = np.random.default_rng(0)
    fm = LinearFaceModel(mean=rng.normal(size=(30, 3)), id_basis=0.05 * rng.normal(size=(3, 30, 3)),
                         exp_basis=0.03 * rng.normal(size=(2, 30, 3)), contour_idx=np.arange(6))
    side, b = 64.0, 4
    cs = [Coefficients(shape=rng.normal(size=3), expression=rng.normal(size=2),
                       pose=np.array([rng.uniform(-20, 20), rng.uniform(-10, 10), rng.uniform(-5, 5)]),
                       camera=np.array([12.0, 30 + rng.normal(), 33 + rng.normal()])) for _ in range(b)]
    pts = torch.tensor(np.stack([fm.project(c) for c in cs]), dtype=torch.float32) / side  # (B, 30, 2)
    pts[:, 0] = torch.tensor([0.3, 0.6])  # one drawn dot, placed by hand
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    dot = torch.exp(-((xx - 0.3 * side) ** 2 + (yy - 0.6 * side) ** 2) / 8.0)
    img = (2 * dot - 1).expand(b, 3, 64, 64).contiguous()
    tgt = {"landmarks": pts, "pose": torch.tensor(np.stack([c.pose for c in cs]), dtype=torch.float32),
           "camera": torch.tensor(np.stack([c.camera for c in cs]), dtype=torch.float32)
           / torch.tensor([1, side, side]),
           "shape": torch.zeros(b, 3), "expression": torch.zeros(b, 2)}
    aug = regressor_augment(scale=0.1, shift=0.05, rotate=10.0, brightness=0.0, contrast=0.0, saturation=0.0)
    img2, t2 = augment_sample(img, tgt, aug, torch.Generator().manual_seed(3))
    assert not torch.allclose(t2["landmarks"], tgt["landmarks"])
    for i, c in enumerate(cs):
        moved = c.replace(pose=t2["pose"][i].double().numpy(), camera=(t2["camera"][i].double() * torch.tensor(
            [1, side, side], dtype=torch.float64)).numpy())
        np.testing.assert_allclose(fm.project(moved)[1:], t2["landmarks"][i, 1:].double().numpy() * side, atol=1e-3)
        w = (img2[i, 0] + 1) / 2
        w = w / w.sum()
        centre = torch.stack([(w * xx).sum(), (w * yy).sum()]) / side
        assert torch.allclose(centre, t2["landmarks"][i, 0], atol=2e-3), (centre, t2["landmarks"][i, 0])


def test_target_stats_travel_with_the_weights(table: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "regressor.safetensors"
    train_regressor(*table, CFG, steps=2, batch_size=4, seed=0, out_path=out, device="cpu")
    m = load_regressor(out, CFG)
    ds = FaceTableDataset(*table)
    cams = torch.stack([ds[i][1]["camera"] for i in range(len(ds))])
    assert torch.allclose(m.camera_mean[0], cams[:, 0].mean(), atol=1e-5)
    assert torch.allclose(m.camera_mean[1:], cams[:, 1:].mean(0) / 32, atol=1e-5)  # / crop side


def test_params_yaml_augment_names_the_library_defaults() -> None:
    import yaml


    root = Path(__file__).resolve().parents[2]
    aug = yaml.safe_load((root / "params.yaml").read_text())["train_aux"]["augment"]
    assert aug == {k: v for k, v in regressor_augment().__dict__.items()}
