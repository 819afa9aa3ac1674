"""Offline face parsing from 68 landmarks (the `landmarks` backend of stages/segment.py).

Shared by the segment stage (training parsing maps) and swap inference (the blend mask), so both
use the same face region. Labels are faceswap.faces.labels.LABELS; this parser never emits hair.
"""
from __future__ import annotations

import cv2
import numpy as np


def parse_from_landmarks(pts68: np.ndarray, size: int) -> np.ndarray:
    """(68, 2) landmarks -> (size, size) uint8 labels: skin hull with forehead, brows, eyes, nose, mouth."""
    p = pts68.astype(np.float64)
    lab = np.zeros((size, size), np.uint8)
    nose_len = np.linalg.norm(p[33] - p[27])
    up = (p[27] - p[33]) / (nose_len + 1e-9)
    forehead = p[17:27] + up * nose_len * 0.8
    hull = cv2.convexHull(np.round(np.vstack([p[0:17], forehead])).astype(np.int32))
    cv2.fillConvexPoly(lab, hull, 1)
    thick = max(2, int(round(nose_len * 0.12)))
    for brow in (p[17:22], p[22:27]):
        cv2.polylines(lab, [np.round(brow).astype(np.int32)], False, 2, thickness=thick)
    for eye in (p[36:42], p[42:48]):
        cv2.fillPoly(lab, [np.round(eye).astype(np.int32)], 3)
    nose = np.vstack([p[27] + (p[39] - p[27]) * 0.25, p[31:36], p[27] + (p[42] - p[27]) * 0.25])
    cv2.fillPoly(lab, [np.round(cv2.convexHull(nose.astype(np.float32))).astype(np.int32)], 4)
    cv2.fillPoly(lab, [np.round(p[48:60]).astype(np.int32)], 5)
    return lab
