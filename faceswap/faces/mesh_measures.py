"""Geometric measures of a mediapipe face mesh (468 points), in units of the outer-eye-corner distance so they
compare faces of any crop scale: expression (`mesh_expression`, `EXPRESSION_MEASURES`) and the lower-face
width. Shared by the demo corpus builder, the 3DMM cross-validation and the evaluation (re-exported by
`faceswap.evaluation.features`).
"""
from __future__ import annotations

import numpy as np

# mediapipe FaceMesh indices of the 5 alignment points, in the ArcFace template's order (image-left
# eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner).
_MESH_EYE_LEFT, _MESH_EYE_RIGHT, _MESH_NOSE, _MESH_MOUTH = (33, 133), (362, 263), 1, (61, 291)
# Face-oval point pairs (image-left, image-right) of the lower face: mandible angles, below them, mouth level.
_MESH_JAW_PAIRS = ((172, 397), (136, 365), (58, 288))


def outer_eye_corners(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(468, 2) mesh points -> image-left and image-right outer eye corners and their distance (>= 1e-6),
    the unit of the mesh measures."""
    left, right = m[_MESH_EYE_LEFT[0]], m[_MESH_EYE_RIGHT[1]]
    return left, right, max(float(np.linalg.norm(right - left)), 1e-6)


def mesh_jaw_width(mesh: np.ndarray) -> float:
    """(468, 3) face-mesh points -> lower-face width (mean over `_MESH_JAW_PAIRS`) in units of the
    outer-eye-corner distance, so it compares faces of any crop scale."""
    m = np.asarray(mesh, np.float64)[:, :2]
    width = np.mean([np.linalg.norm(m[a] - m[b]) for a, b in _MESH_JAW_PAIRS])
    return float(width / outer_eye_corners(m)[2])


# mediapipe FaceMesh indices of the expression measures: inner-lip centres (upper, lower), mouth corners
# (image-left, image-right), eyelid centres (upper, lower) of each eye, brow points above each eye.
_MESH_INNER_LIPS = (13, 14)
_MESH_LIDS = ((159, 145), (386, 374))
_MESH_BROWS = (105, 334)
EXPRESSION_MEASURES = ("mouth_open", "mouth_width", "corner_lift", "eye_open_left", "eye_open_right",
                       "brow_left", "brow_right")


def mesh_expression(mesh: np.ndarray) -> np.ndarray:
    """(468, 3) face-mesh points -> (7,) geometric expression measures (`EXPRESSION_MEASURES`) in units
    of the outer-eye-corner distance, in the frame whose x axis is the eye line (so in-plane rotation,
    translation and scale do not change them): mouth opening, mouth width, lift of the mouth corners
    above the upper lip's centre (a smile; unchanged when only the jaw opens), each eye's opening,
    each brow's height above its upper lid."""
    m = np.asarray(mesh, np.float64)[:, :2]
    left, right, d = outer_eye_corners(m)
    u = (right - left) / d  # eye line
    v = np.array([-u[1], u[0]])  # perpendicular, pointing down the face (image y) for an upright face
    p = (m - (left + right) / 2) @ np.stack([u, v], 1) / d  # (468, 2) in the eye-line frame
    up, low = _MESH_INNER_LIPS
    c0, c1 = _MESH_MOUTH
    return np.array([
        p[low, 1] - p[up, 1],
        p[c1, 0] - p[c0, 0],
        p[up, 1] - (p[c0, 1] + p[c1, 1]) / 2,
        *(p[lo, 1] - p[hi, 1] for hi, lo in _MESH_LIDS),
        *(p[lid, 1] - p[brow, 1] for brow, (lid, _) in zip(_MESH_BROWS, _MESH_LIDS)),
    ])
