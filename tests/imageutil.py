"""Small helpers shared by the data-stage tests."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_rgb(path: Path, img: np.ndarray) -> Path:
    """Write an RGB uint8 array as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return path
