"""FaceShifter as a swap model (faceswap_models/generator.py): identity network + AEI-Net + HEAR-Net.

Y_hat_st = AEI-Net(z_id(X_s), X_t); with HEAR-Net trained (`hear_on`), the output is
Y_st = HEAR-Net(Y_hat_st, Delta_Y_t), Delta_Y_t = X_t - AEI-Net(z_id(X_t), X_t) (the heuristic error).
The frozen identity network is part of the model (its weights travel in the bundle), so a bundle
swaps on a machine that has only the bundle.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from faceswap_models.faceshifter.config import FaceShifterConfig
from faceswap_models.faceshifter.networks import AEINet, HEARNet
from faceswap_models.generator import IdentityConditionedModel


class FaceShifter(IdentityConditionedModel):
    """G(X_s, X_t) for aligned faces (B, 3, S, S) in [-1, 1], S = cfg.img_size.

    Example:
        >>> g = FaceShifter(FaceShifterConfig.tiny())  # identity network with untrained weights
        >>> out = g(source, target)  # AEI-Net's output until train_hearnet sets hear_on
    """

    architecture = "faceshifter"

    def __init__(self, cfg: FaceShifterConfig, identity: nn.Module | None = None) -> None:
        """identity: the frozen identity network (None: `cfg.identity_encoder`'s, untrained, to load weights into)."""
        super().__init__(cfg.identity_encoder, identity)
        self.cfg = cfg
        self.aei = AEINet(cfg.aei)
        self.hear = HEARNet(cfg.hear)
        self.register_buffer("hear_on", torch.tensor(False))  # True once HEAR-Net is trained (saved with the weights)

    @property
    def img_size(self) -> int:
        return self.cfg.img_size

    def heuristic_error(self, target: Tensor) -> Tensor:
        """Delta_Y_t = X_t - AEI-Net(X_t, X_t), (B, 3, S, S)."""
        return target - self.aei(self.encode_source(target), target)[0]

    def swap_encoded(self, encoded: Tensor, source: Tensor, target: Tensor) -> Tensor:
        z_id = encoded.expand(target.shape[0], -1)
        y_hat = self.aei(z_id, target)[0]  # (B, 3, S, S)
        if not bool(self.hear_on):
            return y_hat
        return self.hear(y_hat, self.heuristic_error(target))

    def extras(self, source: Tensor, target: Tensor) -> dict[str, Tensor]:
        """AEI-Net's output Y_hat_st and the heuristic error Delta_Y_t (HEAR-Net's inputs)."""
        return {"aei": self.aei(self.encode_source(source), target)[0], "heuristic_error": self.heuristic_error(target)}
