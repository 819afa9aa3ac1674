"""Each size reaches a model by one route, with no silent fallback: the alignment from the aligned
table, the swap image size from the trained MAE (Dshape checked against it)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from faceswap import artifacts
from faceswap.core.schemas import ALIGNED, write_table
from faceswap.data.records import alignment
from faceswap_models.config import MAEConfig, ShapeConfig
from faceswap_models.mae import FaceMAE
from faceswap_models.shape import ShapeDiscriminator
from paramsutil import section


def _aligned(path, sizes, scales):
    rows = [{"sha256": f"{i:064x}", "identity": "a", "path": "x.jpg", "crop": f"{i}.png", "size": s,
             "template_scale": sc, "matrix": [1, 0, 0, 0, 1, 0], "landmarks5": [0.0] * 10,
             "landmarks68": [0.0] * 136} for i, (s, sc) in enumerate(zip(sizes, scales))]
    write_table(rows, path, ALIGNED)
    return path


def test_alignment_comes_from_the_aligned_table(tmp_path):
    assert alignment(_aligned(tmp_path / "a.parquet", [128, 128], [1.4, 1.4])) == (128, 1.4)
    with pytest.raises(ValueError, match="one crop size and template scale"):
        alignment(_aligned(tmp_path / "b.parquet", [128, 256], [1.4, 1.4]))
    with pytest.raises(ValueError, match="re-run the align stage"):  # a table from before the column existed
        alignment(_aligned(tmp_path / "c.parquet", [128, 128], [None, None]))


def test_train_swap_refuses_a_dshape_of_another_size_than_the_mae(tmp_path):
    from stages import train_swap

    torch.manual_seed(0)
    mae = FaceMAE(MAEConfig.tiny())  # 32 px
    artifacts.save_network(tmp_path / "mae", artifacts.MAE, mae, mae.cfg)
    dshape = ShapeDiscriminator(dataclasses.replace(ShapeConfig.tiny(), img_size=64))
    artifacts.save_network(tmp_path / "shape", artifacts.DSHAPE, dshape, dshape.cfg)
    cfg = section("train_swap", fusion={"heads": 2, "num_blocks": 1}, decoder={"channels": [16, 8, 8, 8]})
    with pytest.raises(ValueError, match="train_shape.image_size must equal pretrain_mae.image_size"):
        train_swap.build_task(cfg, mae_dir=tmp_path / "mae", shape_dir=tmp_path / "shape", aux_dir=tmp_path / "aux",
                              threedmm_model=tmp_path / "none.npz", crop_size=64, seed=0)


def test_a_regressor_trained_on_other_crops_is_refused(tmp_path):
    """The regressor's landmarks / camera are in the pixels of its training crops: one trained on 64 px
    crops cannot score 128 px crops."""
    from faceswap_models.auxiliary.regressor import RegressorConfig

    artifacts.write_config(tmp_path, artifacts.REGRESSOR, RegressorConfig.paper(), crop_size=64)
    with pytest.raises(ValueError, match="trained on 64 px crops, the aligned table holds 128 px crops"):
        artifacts.load_aux_regressor(tmp_path, 128)
