"""Face-parsing label sets (torch-free: the segment stage's workers import this, not the network)."""
from __future__ import annotations

import numpy as np

# The pipeline's parsing labels; a label map stores the index (0..6).
LABELS: tuple[str, ...] = ("background", "skin", "brows", "eyes", "nose", "mouth", "hair")

# CelebAMask-HQ classes in face-parsing.PyTorch's output order.
CELEBAMASK19: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)

# 19 -> 7 lookup. Ears, earrings, neck, necklace, cloth and hat -> background; inner mouth and
# both lips -> mouth. Eyeglasses (6) -> eyes: in CelebAMask-HQ the glasses mask is painted over
# the eye masks, so for glasses wearers the eyes themselves are labelled eye_g, and mapping it to
# eyes keeps an eye region (lenses + frame) instead of losing the eyes altogether.
CELEBAMASK19_TO_LABELS: np.ndarray = np.array(
    [0, 1, 2, 2, 3, 3, 3, 0, 0, 0, 4, 5, 5, 5, 0, 0, 0, 6, 0], dtype=np.uint8
)
