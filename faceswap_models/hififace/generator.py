"""HifiFace as a swap model (faceswap_models/generator.py): the 3D shape-aware identity extractor (a frozen
identity network for v_id and the frozen 3DMM regressor for c_s, c_t) + HifiFaceNet.

v_sid = concat(c_fuse, v_id), c_fuse = (shape of the source, expression and pose of the target). Both
frozen networks travel in the bundle, so a bundle swaps on a machine that has only the bundle. The output
carries its own blend mask M_r, which the swap CLI blends with (`output_mask`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.auxiliary.regressor import FaceAttributeRegressor
from faceswap_models.generator import IdentityConditionedModel
from faceswap_models.hififace.config import HifiFaceConfig
from faceswap_models.hififace.networks import HifiFaceNet, SFFOutput


def fused_coefficients(shape_src: Tensor, expression_tgt: Tensor, pose_tgt_deg: Tensor) -> Tensor:
    """c_fuse (B, n_shape + n_exp + 3): the source's shape, the target's expression and pose (in radians, so
    all parts are of order 1; the regressor's shape and expression coefficients are unit-variance)."""
    return torch.cat([shape_src, expression_tgt, pose_tgt_deg * (math.pi / 180.0)], dim=1)


def shape_aware_identity(v_id: Tensor, shape_src: Tensor, target_pred: dict[str, Tensor]) -> Tensor:
    """v_sid = concat(c_fuse, v_id) (B, coeff_dim + id_dim): v_id (1 or B, id_dim) and shape_src (1 or B, n_shape)
    of the source, `target_pred` the 3DMM regressor's output on the B targets."""
    n = target_pred["expression"].shape[0]
    c_fuse = fused_coefficients(shape_src.expand(n, -1), target_pred["expression"], target_pred["pose"])
    return torch.cat([c_fuse, v_id.expand(n, -1)], dim=1)


class HifiFace(IdentityConditionedModel):
    """G(I_s, I_t) for aligned faces (B, 3, S, S) in [-1, 1], S = cfg.img_size; forward returns I_r.

    Example:
        >>> g = HifiFace(HifiFaceConfig.tiny())  # untrained identity network and regressor, to load into
        >>> out = g(source, target)
    """

    architecture = "hififace"
    has_output_mask = True
    frozen_parts = ("identity", "regressor")

    def __init__(self, cfg: HifiFaceConfig, identity: nn.Module | None = None,
                 regressor: FaceAttributeRegressor | None = None) -> None:
        """identity / regressor: the trained frozen networks (None: untrained ones of cfg's architecture)."""
        super().__init__(cfg.identity_encoder, identity)
        if regressor is None:
            regressor = FaceAttributeRegressor(cfg.regressor)
        self.regressor = regressor.requires_grad_(False).eval()
        self.cfg = cfg
        self.net = HifiFaceNet(cfg.net)

    @property
    def img_size(self) -> int:
        return self.cfg.img_size

    def encode_source(self, source: Tensor) -> Tensor:
        """(v_id, source shape) of the source: (B, 3, S, S) -> (B, id_dim + n_shape), no graph."""
        with torch.no_grad():
            return torch.cat([self.identity(source), self.regressor(source)["shape"]], dim=1)

    def v_sid(self, encoded: Tensor, target: Tensor) -> Tensor:
        """v_sid (B, coeff_dim + id_dim) from `encode_source`'s output (1 or B) and the target (B, 3, S, S);
        gradients flow through the regressor to the target image (the cycle term's target is a generated one)."""
        v_id, shape = encoded.split([self.cfg.net.id_dim, self.cfg.regressor.n_shape], dim=1)
        return shape_aware_identity(v_id, shape, self.regressor(target))

    def outputs(self, encoded: Tensor, target: Tensor) -> SFFOutput:
        """Every output of one swap (I_r, I_out, M_r, I_low, M_low)."""
        return self.net(self.v_sid(encoded, target), target)

    def swap_encoded(self, encoded: Tensor, source: Tensor, target: Tensor) -> Tensor:
        return self.outputs(encoded, target).image

    def output_mask(self, encoded: Tensor, source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(I_r (B, 3, S, S), M_r (B, 1, S, S)): the swap and the mask it was blended with."""
        out = self.outputs(encoded, target)
        return out.image, out.mask

    def extras(self, source: Tensor, target: Tensor) -> dict[str, Tensor]:
        """M_r ('mask', (B, 1, S, S)), M_low and I_low resized to the image ('low_mask', 'low'), I_out ('raw')."""
        out = self.outputs(self.encode_source(source), target)
        up = (self.img_size,) * 2
        return {"mask": out.mask, "low_mask": F.interpolate(out.low_mask, size=up, mode="nearest"),
                "low": F.interpolate(out.low, size=up, mode="bilinear", align_corners=False), "raw": out.raw}
