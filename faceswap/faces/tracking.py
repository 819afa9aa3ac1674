"""Landmarks followed through a video: the One-Euro filter and Lucas-Kanade point tracking.

`OneEuroFilter` (Casiez, Roussel, Vogel, "1 Euro Filter", CHI 2012) is a first-order low-pass
filter whose cutoff rises with the signal's speed: a still face is smoothed hard (jitter removed),
a moving one lightly (little lag). `track_points` follows points from one frame to the next with
pyramidal Lucas-Kanade optical flow and a forward-backward check.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of a first-order low-pass at `cutoff` Hz for a sample period of `dt` s."""
    tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter over an array of any shape (e.g. (5, 2) landmarks), element by element.

    Per sample x_t at time t (seconds), with dt the time since the previous sample:
        dx = (x_t - x̂_{t-1}) / dt,  d̂x = lowpass(dx, d_cutoff)
        cutoff = min_cutoff + beta * |d̂x| / scale,  x̂_t = lowpass(x_t, cutoff)
    Args:
        min_cutoff: Hz; the cutoff at rest (lower: less jitter, more lag at slow speeds).
        beta: speed coefficient, Hz per (scale unit per second); higher: less lag when moving.
        d_cutoff: Hz; the cutoff of the speed estimate.
    `scale` (per call, e.g. the face's inter-ocular distance in pixels) makes beta independent of the
    image size. The first sample (and the first after `reset`) is passed through unchanged.
    """

    def __init__(self, *, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"OneEuroFilter: min_cutoff and d_cutoff must be > 0 and beta >= 0, got "
                             f"{min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self.x: np.ndarray | None = None  # last filtered value
        self.dx: np.ndarray | None = None  # last filtered speed, units per second
        self.t: float | None = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """x: the new sample (same shape every call), t: its time in seconds -> the filtered sample."""
        x = np.asarray(x, np.float64)
        if self.x is None or self.t is None or t <= self.t:
            if self.x is not None and self.x.shape != x.shape:
                raise ValueError(f"OneEuroFilter: sample shape {x.shape} != {self.x.shape}")
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x.copy()
        if x.shape != self.x.shape:
            raise ValueError(f"OneEuroFilter: sample shape {x.shape} != {self.x.shape}")
        dt = t - self.t
        a_d = _alpha(self.d_cutoff, dt)
        self.dx = self.dx + a_d * ((x - self.x) / dt - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx) / max(scale, 1e-9)
        self.x = self.x + _alpha(cutoff, dt) * (x - self.x)
        self.t = t
        return self.x.copy()


def track_points(prev_gray: np.ndarray, next_gray: np.ndarray, points: np.ndarray, *, window: int,
                 max_error: float) -> np.ndarray | None:
    """Points (N, 2) in `prev_gray` -> their positions (N, 2) in `next_gray`, or None when any point
    is lost: not found by the flow, or tracked back to more than `max_error` pixels from where it
    started (forward-backward check). Pyramidal Lucas-Kanade, `window` px square, 3 pyramid levels.
    Both images (H, W) uint8."""
    p0 = np.ascontiguousarray(points, np.float32).reshape(-1, 1, 2)
    win = (int(window), int(window))
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    p1, ok1, _ = cv2.calcOpticalFlowPyrLK(prev_gray, next_gray, p0, None, winSize=win, maxLevel=3, criteria=crit)
    if p1 is None or not ok1.all():
        return None
    back, ok2, _ = cv2.calcOpticalFlowPyrLK(next_gray, prev_gray, p1, None, winSize=win, maxLevel=3, criteria=crit)
    if back is None or not ok2.all():
        return None
    if np.linalg.norm((back - p0).reshape(-1, 2), axis=1).max() > max_error:
        return None
    return p1.reshape(-1, 2).astype(np.float64)
