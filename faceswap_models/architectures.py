"""The swap architectures the pipeline trains, evaluates, registers and serves: name -> `Architecture`.

Adding one: its networks and config in its own module, a generator subclassing
`faceswap_models.generator.SwapModel`, its training stage(s) under stages/, and one entry here.
params.yaml `architectures` selects which ones dvc.yaml trains; a bundle's "architecture" key names
the entry that loads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faceswap.core.config import ConfigError
from faceswap_models.config import SwapConfig, SwapLossWeights
from faceswap_models.facedancer.config import FaceDancerConfig, FaceDancerLossWeights
from faceswap_models.facedancer.generator import FaceDancer
from faceswap_models.faceshifter.config import AEILossWeights, FaceShifterConfig, HEARLossWeights
from faceswap_models.faceshifter.generator import FaceShifter
from faceswap_models.generator import SwapModel
from faceswap_models.hififace.config import HifiFaceConfig, HifiFaceLossWeights
from faceswap_models.hififace.generator import HifiFace
from faceswap_models.swap import SwapGenerator


@dataclass(frozen=True)
class Architecture:
    """One swap architecture, as the rest of the pipeline sees it."""

    name: str  # registry key, the bundle's "architecture", the default registered model name
    title: str  # for tables and model cards
    summary: str  # one sentence: what the generator is
    paper: str  # the source paper
    config: Any  # the generator's frozen config type (from_dict / to_dict)
    generator: type[SwapModel]
    loss_weights: tuple[Any, ...]  # the loss-weight config types of its training stages, in order
    train_stages: tuple[str, ...]  # the stages (stages/<name>.py) that make its bundle, in order
    needs: tuple[str, ...]  # upstream artifacts and tables its training reads (dvc.yaml deps)


FLOWFACEPP = Architecture(
    name="flowfacepp", title="FlowFace++",
    summary="frozen MAE encoder -> cross-attention fusion (CAFM) -> conv decoder, supervised by a shape-aware "
            "flow discriminator (Dshape)",
    paper="Zhang et al. 2023, FlowFace++: Explicit Semantic Flow-supervised End-to-End Face Swapping",
    config=SwapConfig, generator=SwapGenerator, loss_weights=(SwapLossWeights,), train_stages=("train_swap",),
    needs=("models/mae", "models/shape", "models/aux", "data/threedmm_model.npz"))

FACESHIFTER = Architecture(
    name="faceshifter", title="FaceShifter",
    summary="AEI-Net (identity embedding + multi-level attributes encoder -> AAD generator) refined by HEAR-Net "
            "(occlusion-aware, from the heuristic reconstruction error)",
    paper="Li et al. 2019, FaceShifter: Towards High Fidelity And Occlusion Aware Face Swapping",
    config=FaceShifterConfig, generator=FaceShifter, loss_weights=(AEILossWeights, HEARLossWeights),
    train_stages=("train_faceshifter", "train_hearnet"), needs=())

FACEDANCER = Architecture(
    name="facedancer", title="FaceDancer",
    summary="U-Net on the target, identity embedding injected by AdaIN ResBlks, decoder and target skips fused "
            "by learned attention (AFFA); attributes kept by the identity encoder's block features (IFSR)",
    paper="Rosberg et al. 2023, FaceDancer: Pose- and Occlusion-Aware High Fidelity Face Swapping",
    config=FaceDancerConfig, generator=FaceDancer, loss_weights=(FaceDancerLossWeights,),
    train_stages=("ifsr_margins", "train_facedancer"), needs=())

HIFIFACE = Architecture(
    name="hififace", title="HifiFace",
    summary="3D shape-aware identity (identity embedding + 3DMM shape of the source with the target's expression "
            "and pose) drives AdaIN ResBlks; Semantic Facial Fusion blends decoder and target features by a "
            "learned face mask and predicts the output's own blend mask",
    paper="Wang et al. 2021, HifiFace: 3D Shape and Semantic Prior Guided High Fidelity Face Swapping",
    config=HifiFaceConfig, generator=HifiFace, loss_weights=(HifiFaceLossWeights,), train_stages=("train_hififace",),
    needs=("models/aux", "data/threedmm_model.npz"))

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (FLOWFACEPP, FACESHIFTER, FACEDANCER, HIFIFACE)}


def architecture(name: str) -> Architecture:
    """The architecture called `name` (ConfigError listing the known ones otherwise)."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]
