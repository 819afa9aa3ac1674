"""The evaluate section: pairs, gallery, recogniser and realism features (docs/evaluation.md)."""
from __future__ import annotations

from dataclasses import dataclass

from faceswap.core.config import ConfigError


@dataclass(frozen=True)
class EvaluateConfig:
    """evaluate: pairs, gallery, recogniser and realism features."""

    pairs: int
    seed: int
    batch_size: int
    gallery_distractor_images: int  # images per identity of the other splits added to the gallery (0: none)
    blended: bool  # also score the swap CLI's blended full-resolution output (needs the source photos)
    bootstrap: int  # resamples for the ID-margin 95 % interval
    recogniser: str  # dlib (offline default) | arcface_iresnet50 | arcface_iresnet100 (ArcFace/CosFace weights)
    recogniser_weights: str | None  # local weights for a non-dlib recogniser
    inception_weights: str | None  # local torchvision inception_v3 weights -> FID; else offline substitute only
    hopenet_weights: str | None  # local Hopenet weights -> pose error from Hopenet; else from the 3DMM fit
    grid_rows: int
    jaw_min_gap: float  # shape story: pairs whose source jaw is wider than the target's by more than this
    device: str

    def validate(self) -> None:
        if self.pairs < 1 or self.batch_size < 1 or self.grid_rows < 0 or self.gallery_distractor_images < 0:
            raise ConfigError("evaluate: pairs and batch_size must be >= 1, grid_rows and "
                              "gallery_distractor_images >= 0")
        if self.bootstrap < 100:
            raise ConfigError("evaluate.bootstrap: use at least 100 resamples")
        if self.recogniser != "dlib" and not self.recogniser_weights:
            raise ConfigError(f"evaluate.recogniser={self.recogniser} needs evaluate.recogniser_weights (a local file)")
