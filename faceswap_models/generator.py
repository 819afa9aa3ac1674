"""The seam every swap architecture plugs into: the generator interface inference, evaluation,
registration, the pyfunc, the swap CLI and the retraining flow use, and nothing more.

An architecture (faceswap_models/architectures.py) names its generator class, its typed config, its
loss weights and the training stages that make its bundle; its generator subclasses `SwapModel`.
Everything outside the architecture's own modules talks to a `SwapModel` only.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from faceswap_models.auxiliary.registry import identity_architecture


class SwapModel(nn.Module):
    """A swap generator G(source, target) -> the source's identity on the target's attributes.

    Subclasses set `architecture` (the registry key, written into the bundle) and `cfg` (a frozen
    config with `to_dict()`), and implement `img_size`, `forward`, `encode_source`, `swap_encoded`.
    Images are aligned faces (B, 3, img_size, img_size) in [-1, 1].
    """

    architecture: ClassVar[str]
    cfg: Any
    has_output_mask: ClassVar[bool] = False  # True: `output_mask` gives the mask the output was blended with

    @property
    def img_size(self) -> int:
        raise NotImplementedError

    def forward(self, source: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_source(self, source: Tensor) -> Any:
        """The per-source work, done once when one source is swapped onto many targets (video frames)."""
        raise NotImplementedError

    def swap_encoded(self, encoded: Any, source: Tensor, target: Tensor) -> Tensor:
        """`forward` with `encoded = encode_source(source)` (1 or B sources, B targets) -> (B, 3, H, W)."""
        raise NotImplementedError

    def output_mask(self, encoded: Any, source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(`swap_encoded`'s output (B, 3, H, W), its blend mask (B, 1, H, W) in [0, 1]) for generators that
        predict one (`has_output_mask`); the swap CLI pastes with that mask (blend `model`)."""
        raise NotImplementedError(f"{type(self).__name__} predicts no blend mask")

    def extras(self, source: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Named extra outputs of one swap (masks, intermediate images), for grids and reports; none by default."""
        return {}


class IdentityConditionedModel(SwapModel):
    """A swap model conditioned on a frozen identity network's embedding of the source (FaceShifter,
    FaceDancer, HifiFace). The network is part of the model, so its weights travel in the bundle and a bundle
    swaps on a machine that has only the bundle; it stays frozen and in eval mode (gradients reach the image
    only), as do the other pretrained parts a subclass names in `frozen_parts`."""

    frozen_parts: ClassVar[tuple[str, ...]] = ("identity",)  # submodules `train()` keeps in eval mode

    def __init__(self, identity_encoder: str, identity: nn.Module | None = None) -> None:
        """identity: the trained network (L2-normalised (B, id_dim) embeddings); None builds `identity_encoder`'s
        architecture untrained, to load a saved state dict into."""
        super().__init__()
        if identity is None:
            identity = identity_architecture(identity_encoder)
        self.identity = identity.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> IdentityConditionedModel:
        super().train(mode)
        for name in self.frozen_parts:
            getattr(self, name).eval()
        return self

    def encode_source(self, source: Tensor) -> Tensor:
        """The identity embedding of the source: (B, 3, S, S) -> (B, id_dim), no graph."""
        with torch.no_grad():
            return self.identity(source)

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        return self.swap_encoded(self.encode_source(source), source, target)
