"""FaceAttributeRegressor: shapes, gradients, determinism, training on a synthetic table, weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from faceswap_common.schemas import ALIGNED, THREEDMM, write_table
from faceswap_models.auxiliary import WeightsError
from faceswap_models.auxiliary.regressor import (FaceAttributeRegressor, FaceTableDataset,
                                                 RegressorConfig, load_regressor, regressor_loss,
                                                 train_regressor)

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
                   "size": 32, "matrix": [1, 0, 0, 0, 1, 0],
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
    from faceswap_models.auxiliary.regressor import r_squared

    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 4))
    assert r_squared(y, y) == 1.0
    assert r_squared(np.repeat(y.mean(0, keepdims=True), 50, 0), y) == pytest.approx(0.0, abs=1e-12)  # the mean
    assert r_squared(y + rng.normal(size=y.shape) * 2, y) < 0  # noise worse than the mean
    assert 0.7 < r_squared(y + rng.normal(size=y.shape) * 0.3, y) < 0.99


def test_evaluate_regressor_separates_trained_from_random(table: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Held-out figures on the training rows themselves: a model trained on them beats a random one
    on landmark NME and shape R² (a sanity check that the numbers can tell)."""
    from faceswap_models.auxiliary.regressor import FaceAttributeRegressor, evaluate_regressor

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
