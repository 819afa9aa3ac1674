"""FaceDancer as a swap model (faceswap_models/generator.py): the frozen identity network + FaceDancerNet.

X_c = G(z_id(X_s), X_t). The identity network travels in the bundle (as FaceShifter's), so a bundle swaps
on a machine that has only the bundle.
"""
from __future__ import annotations

from torch import Tensor, nn

from faceswap_models.facedancer.config import FaceDancerConfig
from faceswap_models.facedancer.networks import FaceDancerNet
from faceswap_models.generator import IdentityConditionedModel


class FaceDancer(IdentityConditionedModel):
    """G(X_s, X_t) for aligned faces (B, 3, S, S) in [-1, 1], S = cfg.img_size.

    Example:
        >>> g = FaceDancer(FaceDancerConfig.tiny())  # identity network with untrained weights
        >>> out = g(source, target)
    """

    architecture = "facedancer"

    def __init__(self, cfg: FaceDancerConfig, identity: nn.Module | None = None) -> None:
        """identity: the frozen identity network (None: `cfg.identity_encoder`'s, untrained, to load weights into)."""
        super().__init__(cfg.identity_encoder, identity)
        self.cfg = cfg
        self.net = FaceDancerNet(cfg.net)

    @property
    def img_size(self) -> int:
        return self.cfg.img_size

    def swap_encoded(self, encoded: Tensor, source: Tensor, target: Tensor) -> Tensor:
        return self.net(encoded.expand(target.shape[0], -1), target)

    def extras(self, source: Tensor, target: Tensor) -> dict[str, Tensor]:
        """AFFA's attention masks, channel-averaged and resized to the image: 'affa_<side>' (B, 1, S, S),
        1 where the decoder kept its identity-conditioned features, 0 where it took the target's."""
        _, masks = self.net(self.encode_source(source), target, return_masks=True)
        size = self.img_size
        return {f"affa_{m.shape[-1]}": nn.functional.interpolate(m.mean(dim=1, keepdim=True), size=(size, size),
                                                                   mode="nearest") for m in masks}
