"""Tiny tasks over the `train_tables` fixture (32 px, millisecond steps) for the training tests."""
from __future__ import annotations

import torch
from torch import nn

from faceswap_models.auxiliary.regressor import FaceAttributeRegressor, RegressorConfig
from faceswap_models.config import (
    DiscriminatorConfig, MAEConfig, ShapeConfig, ShapeLossWeights, SwapConfig, SwapLossWeights,
)
from faceswap_models.discriminator import Dres, PatchDiscriminator
from faceswap_models.mae import FaceMAE
from faceswap_models.shape import ShapeDiscriminator
from faceswap_models.swap import SwapGenerator
from faceswap.training.contour import ContourProjector
from faceswap.training.steps import MAETask, ShapeAux, ShapeTask, SwapAux, SwapTask

SIZE = 32


class TinyIdentity(nn.Module):
    """Stand-in identity encoder with the FrozenEncoder call convention: (B, 3, H, W) -> (B, 16) [, feats]."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, 2, 1)
        self.c2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.requires_grad_(False)

    def forward(self, x, return_features: bool = False):
        f1 = torch.relu(self.c1(x))
        f2 = torch.relu(self.c2(f1))
        emb = nn.functional.normalize(f2.mean((2, 3)), dim=1)
        return (emb, [f1, f2]) if return_features else emb


def frozen_regressor(n_shape: int = 3, n_exp: int = 2) -> FaceAttributeRegressor:
    torch.manual_seed(123)
    return FaceAttributeRegressor(RegressorConfig(image_size=SIZE, width=8, hidden=32, n_shape=n_shape,
                                                  n_exp=n_exp)).eval().requires_grad_(False)


def mae_task(seed: int = 0) -> MAETask:
    torch.manual_seed(seed)
    return MAETask(FaceMAE(MAEConfig.tiny()), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)


def shape_task(model_path: str, seed: int = 0) -> ShapeTask:
    contour = ContourProjector.load(model_path)
    aux = ShapeAux(frozen_regressor(), contour, crop_size=64)
    torch.manual_seed(seed)
    cfg = ShapeConfig.from_dict({**ShapeConfig.tiny().to_dict(), "num_landmarks": contour.num_points})
    return ShapeTask(ShapeDiscriminator(cfg), Dres(DiscriminatorConfig.tiny()), aux, ShapeLossWeights(),
                     lr=1e-3, betas=(0.0, 0.99))


def swap_task(model_path: str, seed: int = 0, flow_start_step: int = 0, swap_config: SwapConfig | None = None,
              **task_kwargs) -> SwapTask:
    contour = ContourProjector.load(model_path)
    torch.manual_seed(seed + 1)
    dcfg = ShapeConfig.from_dict({**ShapeConfig.tiny().to_dict(), "num_landmarks": contour.num_points})
    dshape = ShapeDiscriminator(dcfg).eval().requires_grad_(False)
    aux = SwapAux(identity=TinyIdentity(), perceptual=None, regressor=frozen_regressor(), dshape=dshape,
                  contour=contour, crop_size=64, perceptual_layers=2)
    torch.manual_seed(seed)
    return SwapTask(SwapGenerator(swap_config or SwapConfig.tiny()), PatchDiscriminator(DiscriminatorConfig.tiny()), aux,
                    SwapLossWeights(), lr=1e-3, betas=(0.0, 0.99), flow_start_step=flow_start_step, **task_kwargs)
