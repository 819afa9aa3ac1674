"""The data layer's config: photometric augmentation of training faces (the `augment` key of the
training sections of params.yaml). Kept free of heavy imports: the params tree imports it."""
from __future__ import annotations

from dataclasses import dataclass

from faceswap.core.config import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Photometric jitter as in the papers (FaceShifter/FlowFace: colour, brightness, contrast).

    Factors are drawn uniformly: brightness/contrast/saturation in [1 - x, 1 + x], hue shift in
    [-hue, hue] turns of the colour wheel (<= 0.5). Geometry is untouched, so landmarks, parsing and
    3DMM stay valid. hflip mirrors image, parsing, landmarks (iBUG re-indexed), contour (and its
    left-to-right order), yaw/roll and camera tx exactly; shape/expression coefficients are kept
    as they are (a mirrored face is taken to have the same identity and expression), so for a
    flipped item the 3DMM contour is an approximation. Off by default.
    """

    brightness: float
    contrast: float
    saturation: float
    hue: float
    hflip: bool

    def validate(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"augment.{name}: must be in [0, 1), got {v}")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue: must be in [0, 0.5], got {self.hue}")

    @property
    def is_identity(self) -> bool:
        return not (self.brightness or self.contrast or self.saturation or self.hue or self.hflip)
