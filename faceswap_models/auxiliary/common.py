"""Shared pieces of the frozen auxiliary networks: the encoder base class and input checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrozenEncoder", "check_rgb", "resize_to"]


def check_rgb(x: torch.Tensor) -> None:
    """Assert ``x`` is a float (B, 3, H, W) batch."""
    assert x.ndim == 4 and x.shape[1] == 3, f"expected (B, 3, H, W) RGB, got {tuple(x.shape)}"
    assert x.is_floating_point(), f"expected a float tensor, got {x.dtype}"


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable bilinear resize of (B, C, H, W) to (B, C, size, size); antialiased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class FrozenEncoder(nn.Module):
    """Base for pretrained auxiliary networks used inside losses.

    Parameters never train (``requires_grad=False``) and the module always stays in eval mode
    (BatchNorm uses running statistics), but gradients still flow to the *input* image.
    Subclasses set ``embed_dim`` / ``input_size`` and implement ``forward`` and ``forward_features``.
    """

    embed_dim: int
    input_size: int

    def freeze(self) -> "FrozenEncoder":
        """Turn off parameter gradients and switch to eval mode; returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":
        """Always stays in eval mode: a frozen loss network must not update BN statistics."""
        return super().train(False)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
