"""HifiFace loss terms as pure functions (identity 1 - cos: `faceswap_models.losses.identity_loss`; the
reconstruction and cycle L1s and the logistic adversarial losses: faceswap_models/facedancer/losses.py).

L_sid = 0.5 L_shape + 5 L_id; L_real = L_adv + 100 L_seg + 20 L_rec + L_cyc + 5 L_lpips. L1 norms of images
and masks are means per element; landmark distances are per point (|dx| + |dy|) averaged over the points.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["landmark_l1", "shape_loss", "segmentation_loss", "dilated_face_mask", "FACE_LABELS"]

#: The parsing labels (faceswap.faces.labels.LABELS) of the face region M_tar: skin, brows, eyes, nose, mouth.
FACE_LABELS = (1, 2, 3, 4, 5)


def landmark_l1(a: Tensor, b: Tensor) -> Tensor:
    """(1 / N) sum_n ||a_n - b_n||_1 averaged over the batch: (B, N, 2) twice -> scalar."""
    assert a.shape == b.shape and a.dim() == 3 and a.shape[-1] == 2, f"{tuple(a.shape)} vs {tuple(b.shape)}"
    return (a - b).abs().sum(-1).mean()


def shape_loss(q_fuse: Tensor, q_r: Tensor, q_low: Tensor) -> Tensor:
    """L_shape = landmark L1 of (q_fuse, q_r) + of (q_fuse, q_low): the projected 3DMM landmarks of c_fuse
    against those regressed from I_r and from I_low, (B, N, 2) each."""
    return landmark_l1(q_r, q_fuse) + landmark_l1(q_low, q_fuse)


def segmentation_loss(m_low: Tensor, m_r: Tensor, m_tar: Tensor) -> Tensor:
    """L_seg = |R(M_tar) - M_low|_1 + |M_tar - M_r|_1: masks (B, 1, s, s), (B, 1, S, S), (B, 1, S, S)."""
    assert m_r.shape == m_tar.shape, f"{tuple(m_r.shape)} vs {tuple(m_tar.shape)}"
    small = F.interpolate(m_tar, size=m_low.shape[-2:], mode="area")
    return (small - m_low).abs().mean() + (m_tar - m_r).abs().mean()


def dilated_face_mask(parsing: Tensor, radius: int) -> Tensor:
    """M_tar: the face labels of a parsing map (B, S, S) integer, dilated by a (2r + 1)^2 square -> (B, 1, S, S)
    float in {0, 1}."""
    assert parsing.dim() == 3, f"parsing must be (B, S, S) labels, got {tuple(parsing.shape)}"
    face = torch.zeros_like(parsing, dtype=torch.bool)
    for label in FACE_LABELS:
        face |= parsing == label
    m = face[:, None].float()
    return F.max_pool2d(m, 2 * radius + 1, stride=1, padding=radius) if radius > 0 else m
