"""Frozen pretrained auxiliary networks (identity encoders, perceptual features), offline-first.

See docs/auxiliary.md for backends, input conventions, provenance and measured checks.
"""

from faceswap.core.weights import WeightsError, load_state_dict_file, read_state_dict, save_safetensors_atomic

from .arcface import ArcFaceEncoder, IResNet, iresnet50, iresnet100
from .common import FrozenEncoder
from .facenet import FaceNetEncoder, InceptionResnetV1
from .facenet_convert import convert_facenet_graph, default_cache_dir, ensure_facenet_weights
from .perceptual import PERCEPTUAL_BACKENDS, PerceptualFeatures, VGG16Features, build_perceptual
from .registry import IDENTITY_ENCODERS, build_identity_encoder

__all__ = [
    "ArcFaceEncoder", "IResNet", "iresnet50", "iresnet100", "FrozenEncoder", "FaceNetEncoder",
    "InceptionResnetV1", "convert_facenet_graph", "default_cache_dir", "ensure_facenet_weights",
    "PERCEPTUAL_BACKENDS", "PerceptualFeatures", "VGG16Features", "build_perceptual",
    "IDENTITY_ENCODERS", "build_identity_encoder", "WeightsError", "load_state_dict_file",
    "read_state_dict", "save_safetensors_atomic",
]
from .regressor import FaceAttributeRegressor, RegressorConfig, load_regressor, regressor_loss  # noqa: E402,F401

__all__ += ["FaceAttributeRegressor", "RegressorConfig", "load_regressor", "regressor_loss"]
