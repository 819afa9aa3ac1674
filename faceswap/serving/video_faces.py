"""Which face of a target is swapped (`--target-face`), and that face followed through a video.

`FaceChooser` picks one of the faces a detector found:
- `largest` (the default): the largest box;
- an index `0`, `1`, ...: faces numbered **left to right** by the centre of their box;
- a reference photo: the face whose identity embedding is nearest (Euclidean) to the reference's
  largest face. The embedding is the evaluation's recogniser (dlib's 128-d ResNet,
  faceswap.evaluation.features.DlibRecogniser: trained, offline, the same for every architecture;
  a swap bundle's own identity network exists for only some architectures and FlowFace++ has none).

`FaceTrack` follows the chosen face through a clip (params.yaml `video`): the detector runs every
`detect_every` frames; in between the 5 landmarks are tracked with pyramidal Lucas-Kanade flow
(faceswap.faces.tracking.track_points), re-detecting at once when a point is lost, its
forward-backward error exceeds `max_track_error` inter-ocular distances (iod), or the 5 points drift
from the detected shape by more than that. At a detection the face overlapping the followed one is
kept (IoU >= 0.3); the chooser's rule applies again only when none does. The 5 points (alignment) and
the 68 (blend mask) are smoothed with One-Euro filters (`smooth`).
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from faceswap.faces.detectors import Face, FaceDetector, NoFaceError, transform_points, umeyama_similarity
from faceswap.faces.tracking import OneEuroFilter, track_points
from faceswap.serving.config import VideoConfig

MIN_IOU_SAME_FACE = 0.3  # a detection overlapping the followed face this much is that face
TARGET_FACE_HELP = ("which target face is swapped: largest (default), an index 0, 1, ... counting faces left to "
                    "right, or a reference photo (the face most like that photo's largest face, by dlib's identity "
                    "embedding); in a video the face chosen at the first detection is then tracked")


def iod(landmarks5: np.ndarray) -> float:
    """Inter-ocular distance of (5, 2) ArcFace-order points, pixels (at least 1)."""
    return max(1.0, float(np.linalg.norm(landmarks5[1] - landmarks5[0])))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (4,) x0, y0, x1, y1 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def map_box(box: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """A face box (4,) -> the upright box (4,) whose centre is mapped by the similarity `matrix` (2, 3)
    and whose sides are scaled by its scale."""
    box = np.asarray(box, np.float64)
    c = transform_points(((box[:2] + box[2:]) / 2)[None], matrix)[0]
    half = (box[2:] - box[:2]) * np.sqrt(abs(np.linalg.det(matrix[:, :2]))) / 2
    return np.concatenate([c - half, c + half])


class FaceChooser:
    """`--target-face`: picks the swapped face among those detected in a frame (module docstring)."""

    def __init__(self, rule: str | int = "largest", reference: np.ndarray | None = None,
                 embed: Callable[[np.ndarray, list[Face]], np.ndarray] | None = None) -> None:
        """rule: "largest", an index (left to right) or "reference" (then `reference`, the (D,) embedding of
        the reference face, and `embed`, (rgb, faces) -> (len(faces), D) embeddings, are required)."""
        if rule == "reference" and (reference is None or embed is None):
            raise ValueError("FaceChooser('reference') needs the reference embedding and an embed function")
        if not (rule in ("largest", "reference") or (isinstance(rule, int) and rule >= 0)):
            raise ValueError(f"target face rule must be 'largest', 'reference' or an index >= 0, got {rule!r}")
        self.rule, self.reference, self.embed = rule, reference, embed

    @classmethod
    def from_reference(cls, photo_rgb: np.ndarray, detector: FaceDetector) -> FaceChooser:
        """Choose by likeness to the largest face of `photo_rgb` (H, W, 3) uint8; ValueError when it has none."""
        from faceswap.evaluation.features import DlibRecogniser

        faces = detector.detect(photo_rgb)
        if not faces:
            raise ValueError("the --target-face photo shows no face the detector finds")
        recogniser = DlibRecogniser()

        def embed(rgb: np.ndarray, fs: list[Face]) -> np.ndarray:
            return recogniser.embed([rgb] * len(fs), [f.landmarks5 for f in fs])  # (N, 128)

        return cls("reference", embed(photo_rgb, [max(faces, key=lambda f: f.area)])[0], embed)

    def __call__(self, rgb: np.ndarray, faces: list[Face]) -> Face:
        """One of `faces` (non-empty) detected in `rgb` (H, W, 3) uint8; NoFaceError when an index asks for
        more faces than there are."""
        if self.rule == "largest":
            return max(faces, key=lambda f: f.area)
        if self.rule == "reference":
            dist = np.linalg.norm(self.embed(rgb, faces) - self.reference, axis=1)  # (N,)
            return faces[int(np.argmin(dist))]
        left_to_right = sorted(faces, key=lambda f: (f.box[0] + f.box[2]) / 2)
        if self.rule >= len(left_to_right):
            raise NoFaceError("target", f"--target-face {self.rule} asks for face {self.rule + 1} from the left, "
                                        f"but {len(faces)} face(s) were found")
        return left_to_right[self.rule]


class FaceTrack:
    """The chosen target face through a video, frame by frame (module docstring); `locate` per frame in
    order, then `landmarks68` for the same frame when the blend needs them."""

    def __init__(self, detector: FaceDetector, cfg: VideoConfig, choose: FaceChooser | None = None) -> None:
        self.detector, self.cfg = detector, cfg
        self.choose = choose or FaceChooser()
        euro = dict(min_cutoff=cfg.min_cutoff, beta=cfg.beta, d_cutoff=cfg.d_cutoff)
        self.filter5, self.filter68 = OneEuroFilter(**euro), OneEuroFilter(**euro)
        self.detections = self.tracked = self.redetections = 0  # frames by how their face was found
        self._reset()

    def _reset(self) -> None:
        self.anchor: Face | None = None  # the last detection of the followed face
        self.points: np.ndarray | None = None  # (5, 2) raw (unsmoothed) points in the last frame
        self.gray: np.ndarray | None = None
        self.since_detection = 0
        self.t = 0.0
        self.filter5.reset()
        self.filter68.reset()

    def _detect(self, rgb: np.ndarray) -> Face | None:
        self.detections += 1
        faces = self.detector.detect(rgb)
        if not faces:
            return None
        if self.anchor is not None:
            best = max(faces, key=lambda f: iou(f.box, self.anchor.box))
            if iou(best.box, self.anchor.box) >= MIN_IOU_SAME_FACE:
                return best
        try:
            return self.choose(rgb, faces)
        except NoFaceError:  # an index beyond the faces of this frame
            return None

    def _track(self, gray: np.ndarray) -> np.ndarray | None:
        """The 5 points LK-tracked from the previous frame, None when lost or drifted."""
        scale = iod(self.points)
        window = int(np.clip(round(self.cfg.track_window * scale), 9, 61)) | 1
        pts = track_points(self.gray, gray, self.points, window=window, max_error=self.cfg.max_track_error * scale)
        if pts is None:
            return None
        fit = umeyama_similarity(self.anchor.landmarks5, pts)  # shape drift against the detection
        drift = np.linalg.norm(self.anchor.landmarks5 @ fit[:, :2].T + fit[:, 2] - pts, axis=1).max()
        return pts if drift <= self.cfg.max_track_error * iod(pts) else None

    def locate(self, rgb: np.ndarray, t: float) -> Face | None:
        """The followed face in frame `rgb` (H, W, 3) uint8 at time `t` seconds: box and 5 smoothed points
        in frame pixels, or None when no face is found (the track restarts at the next frame)."""
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        pts = None
        if self.cfg.track and self.anchor is not None and self.since_detection < self.cfg.detect_every:
            pts = self._track(gray)
            if pts is None:
                self.redetections += 1
            else:
                self.tracked += 1
        if pts is None:
            face = self._detect(rgb)
            if face is None:
                self._reset()
                return None
            if self.anchor is not None and iou(face.box, self.anchor.box) < MIN_IOU_SAME_FACE:
                self.filter5.reset()  # another face (or the same one far away): no smoothing across
                self.filter68.reset()
            self.anchor, pts, self.since_detection = face, face.landmarks5, 0
        self.points, self.gray, self.t = pts, gray, t
        self.since_detection += 1
        smooth = self.filter5(pts, t, iod(pts)) if self.cfg.smooth else pts
        box = map_box(self.anchor.box, umeyama_similarity(self.anchor.landmarks5, smooth))
        return Face(box=box, score=self.anchor.score, landmarks5=smooth)

    def landmarks68(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """The detector's 68-point landmarker in `box` of the frame last located, smoothed: (68, 2) pixels."""
        pts = self.detector.landmarker(rgb, box)  # type: ignore[attr-defined]
        return self.filter68(pts, self.t, iod(self.points)) if self.cfg.smooth else pts
