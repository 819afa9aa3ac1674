"""FlowFace++ networks: face MAE, swap generator Fswa, shape discriminator Dshape, discriminators, losses."""
from faceswap_models.config import (
    VARIANTS, ConfigError, DecoderConfig, DiscriminatorConfig, FlowFaceConfig, FusionConfig, MAEConfig, ShapeConfig,
    ShapeLossWeights, SwapConfig, SwapLossWeights, get_variant,
)
from faceswap_models.decoder import ConvDecoder
from faceswap_models.discriminator import Dres, PatchDiscriminator
from faceswap_models.fusion import CrossAttentionFusion
from faceswap_models.mae import FaceMAE, MAEEncoder
from faceswap_models.shape import FlowWarp, SemanticFlowGenerator, ShapeDiscriminator, rasterise_landmarks
from faceswap_models.swap import SwapGenerator

__all__ = [
    "VARIANTS", "ConfigError", "DecoderConfig", "DiscriminatorConfig", "FlowFaceConfig", "FusionConfig",
    "MAEConfig", "ShapeConfig", "ShapeLossWeights", "SwapConfig", "SwapLossWeights", "get_variant",
    "ConvDecoder", "Dres", "PatchDiscriminator", "CrossAttentionFusion", "FaceMAE", "MAEEncoder",
    "FlowWarp", "SemanticFlowGenerator", "ShapeDiscriminator", "rasterise_landmarks", "SwapGenerator",
]
