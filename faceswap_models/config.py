"""Frozen config dataclasses for the FlowFace++ networks and their loss weights.

Every config has `paper()` (the sizes used for the paper / benchmarks), `tiny()` (32x32 images,
millisecond forward/backward, for tests) and `from_dict(d)` (nested mappings, e.g. a params.yaml
section; unknown keys raise `ConfigError`, missing keys keep the paper default).

Where the FlowFace++ paper is silent on a size, the value is marked "paper silent" and follows
the reference the paper cites (MAE ViT-B/16, StarGAN-v2 discriminator) or a plain U-Net choice.

Variants are picked through the explicit `VARIANTS` registry, never by string -> class lookup.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from faceswap.core.config import ConfigError, from_dict

T = TypeVar("T")


class _FromDict:
    @classmethod
    def from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
        """Build from a (nested) mapping; unknown keys raise ConfigError, missing keys = paper()."""
        return from_dict(cls, d, "", base=cls.paper())  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- Fswa components
@dataclass(frozen=True)
class MAEConfig(_FromDict):
    """Face MAE (ViT encoder + light ViT decoder). Paper: 256x256 input; sizes paper silent -> ViT-B/16."""

    img_size: int = 256
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 768  # L, the patch-embedding width
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} not divisible by patch_size {self.patch_size}")
        if self.dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ConfigError("dim / decoder_dim must be divisible by their head counts")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @classmethod
    def paper(cls) -> MAEConfig:
        return cls()

    @classmethod
    def tiny(cls) -> MAEConfig:
        return cls(img_size=32, patch_size=8, dim=32, depth=2, heads=2,
                   decoder_dim=16, decoder_depth=1, decoder_heads=2)


@dataclass(frozen=True)
class FusionConfig(_FromDict):
    """CAFM: one cross-attention block + `num_blocks` transformer blocks (paper: 2). Width = MAE dim."""

    dim: int = 768
    heads: int = 12  # paper silent; same as the encoder
    mlp_ratio: float = 4.0
    num_blocks: int = 2
    # Not in the paper (0 = off): a learnable locality prior on the cross-attention logits,
    # -a_h * (grid distance between target and source patch)^2 with a_h = position_prior at init,
    # so on aligned faces a target patch starts by reading the source patch at its own place.
    position_prior: float = 0.0

    def __post_init__(self) -> None:
        if self.position_prior < 0:
            raise ConfigError(f"fusion position_prior must be >= 0, got {self.position_prior}")
        if self.dim % self.heads:
            raise ConfigError(f"fusion dim {self.dim} not divisible by heads {self.heads}")

    @classmethod
    def paper(cls) -> FusionConfig:
        return cls()

    @classmethod
    def tiny(cls) -> FusionConfig:
        return cls(dim=32, heads=2, num_blocks=2)


SKIP_INPUTS = ("source", "target", "source_flow")  # DecoderConfig.skip entries


@dataclass(frozen=True)
class DecoderConfig(_FromDict):
    """Convolutional decoder Df: token grid -> image. channels[0] at the token grid, then one x2
    upsampling stage per further entry (paper silent on sizes; 16 -> 256 needs 4 stages)."""

    in_dim: int = 768
    grid_size: int = 16
    channels: tuple[int, ...] = (512, 256, 128, 64, 32)
    out_channels: int = 3
    # Not in the paper (() = off): images added at every decoder resolution (area-downsampled, through a
    # small conv branch whose last layer starts at zero): "source" = I_s, "target" = what the encoder
    # sees of I_t (SwapGenerator.target_input), "source_flow" = I_s warped by a flow the fused tokens
    # predict (zero at init). Crops are aligned, so their pixels give the decoder the thin structures
    # (eyes, brows, mouth corners) that a 16 x 16 token grid blurs.
    skip: tuple[str, ...] = ()
    # Training only: the source skip images are moved by a random similarity (shift up to skip_jitter of
    # the side, rotation up to skip_jitter * 90 degrees, scale 1 +- skip_jitter), so copying them is not
    # a reconstruction and geometry has to come from the target (or, with "source_flow", be re-aligned).
    skip_jitter: float = 0.0

    def __post_init__(self) -> None:
        skip = (self.skip,) if isinstance(self.skip, str) else tuple(self.skip)
        bad = [s for s in skip if s not in SKIP_INPUTS] + [s for i, s in enumerate(skip) if s in skip[:i]]
        if bad:
            raise ConfigError(f"decoder.skip: expected distinct entries of {list(SKIP_INPUTS)}, got {list(skip)}")
        object.__setattr__(self, "skip", skip)
        if not 0.0 <= self.skip_jitter < 0.5:
            raise ConfigError(f"decoder.skip_jitter {self.skip_jitter} must be in [0, 0.5)")

    @property
    def out_size(self) -> int:
        return self.grid_size * 2 ** (len(self.channels) - 1)

    @classmethod
    def paper(cls) -> DecoderConfig:
        return cls()

    @classmethod
    def tiny(cls) -> DecoderConfig:
        return cls(in_dim=32, grid_size=4, channels=(32, 16, 8, 8))


@dataclass(frozen=True)
class SwapConfig(_FromDict):
    """Fswa = frozen MAE encoder + CAFM + ConvDecoder."""

    mae: MAEConfig = field(default_factory=MAEConfig.paper)
    fusion: FusionConfig = field(default_factory=FusionConfig.paper)
    decoder: DecoderConfig = field(default_factory=DecoderConfig.paper)
    freeze_encoder: bool = True  # paper: "we fix the MAE encoder"
    # Not in the paper (0 = off, the paper's Fswa): the target's inner face is low-passed (average over
    # k x k pixels, upsampled back) inside a fixed soft ellipse of the aligned crop before encoding,
    # so its identity detail can only come from the source. See SwapGenerator.target_input.
    target_face_lowpass: int = 0
    face_ellipse: tuple[float, float, float, float] = (0.56, 0.5, 0.33, 0.26)  # centre y, x; radius y, x (/ side)
    # With target_face_lowpass: soft ellipses (centre y, x, radius y, x / side; e.g. eyes and mouth of the
    # aligned crop) low-passed over only target_spare_lowpass pixels (0: kept sharp), so the target's
    # expression reaches the encoder while the rest of its inner face stays coarse.
    target_face_spare: tuple[tuple[float, float, float, float], ...] = ()
    target_spare_lowpass: int = 0

    def __post_init__(self) -> None:
        try:
            spare = tuple(tuple(float(v) for v in e) for e in self.target_face_spare)
        except (TypeError, ValueError):
            spare = ((),)
        if any(len(e) != 4 for e in spare):
            raise ConfigError(f"target_face_spare: expected a list of [centre y, centre x, radius y, radius x], "
                              f"got {self.target_face_spare!r}")
        object.__setattr__(self, "target_face_spare", spare)
        for name in ("target_face_lowpass", "target_spare_lowpass"):
            k = getattr(self, name)
            if k < 0 or (k and self.mae.img_size % k):
                raise ConfigError(f"{name} {k} must be 0 or divide img_size {self.mae.img_size}")
        if not (self.mae.dim == self.fusion.dim == self.decoder.in_dim):
            raise ConfigError(f"mae.dim ({self.mae.dim}), fusion.dim ({self.fusion.dim}) and "
                              f"decoder.in_dim ({self.decoder.in_dim}) must be equal")
        if self.decoder.grid_size != self.mae.grid_size:
            raise ConfigError(f"decoder.grid_size {self.decoder.grid_size} != mae grid {self.mae.grid_size}")
        if self.decoder.out_size != self.mae.img_size:
            raise ConfigError(f"decoder output {self.decoder.out_size} != img_size {self.mae.img_size}")

    @property
    def img_size(self) -> int:
        """The swap model's side (the MAE's)."""
        return self.mae.img_size

    @classmethod
    def paper(cls) -> SwapConfig:
        return cls()

    @classmethod
    def tiny(cls) -> SwapConfig:
        return cls(mae=MAEConfig.tiny(), fusion=FusionConfig.tiny(), decoder=DecoderConfig.tiny())


@dataclass(frozen=True)
class DiscriminatorConfig(_FromDict):
    """StarGAN-v2-style residual discriminator with a patch-logit head (Dswa and Dres).
    Output logits are (B, 1, img_size / 2**num_down, ...) (paper silent on sizes)."""

    img_size: int = 256
    in_channels: int = 3
    base_channels: int = 64
    max_channels: int = 512
    num_down: int = 5  # 256 -> 8x8 patch logits

    def __post_init__(self) -> None:
        if self.img_size % (2**self.num_down):
            raise ConfigError(f"img_size {self.img_size} not divisible by 2**num_down")

    @classmethod
    def paper(cls) -> DiscriminatorConfig:
        return cls()

    @classmethod
    def tiny(cls) -> DiscriminatorConfig:
        return cls(img_size=32, base_channels=8, max_channels=16, num_down=2)


# --------------------------------------------------------------------------- Dshape components
@dataclass(frozen=True)
class ShapeConfig(_FromDict):
    """Dshape's semantic-flow generator Gres (a U-Net; paper silent on sizes).

    Inputs: K contour landmarks P12 and P2 rasterised to Gaussian heatmaps (sigma in pixels)
    and a one-hot parsing map S2 with `num_classes` channels
    (background, skin, brows, eyes, nose, mouth, hair)."""

    img_size: int = 256
    num_landmarks: int = 17  # the 17 iBUG jaw-contour points
    num_classes: int = 7
    heatmap_sigma: float = 2.0
    base_channels: int = 64
    max_channels: int = 512
    num_down: int = 5  # 256 -> 8x8 bottleneck

    def __post_init__(self) -> None:
        if self.img_size % (2**self.num_down):
            raise ConfigError(f"img_size {self.img_size} not divisible by 2**num_down")

    @property
    def in_channels(self) -> int:
        return 2 * self.num_landmarks + self.num_classes

    @classmethod
    def paper(cls) -> ShapeConfig:
        return cls()

    @classmethod
    def tiny(cls) -> ShapeConfig:
        return cls(img_size=32, heatmap_sigma=1.0, base_channels=8, max_channels=16, num_down=3)


# --------------------------------------------------------------------------- loss weights
@dataclass(frozen=True)
class SwapLossWeights(_FromDict):
    """Fswa loss weights, paper eq. (4): adv + 10 rec + 5 id + 10 exp + 5000 ldmk + 2 perc + 3 flow.
    `r1` (discriminator R1 penalty) is not in the paper; StarGAN-v2's value."""

    adv: float = 1.0
    rec: float = 10.0
    id: float = 5.0
    exp: float = 10.0
    ldmk: float = 5000.0
    perc: float = 2.0
    flow: float = 3.0
    r1: float = 1.0

    @classmethod
    def paper(cls) -> SwapLossWeights:
        return cls()

    @classmethod
    def tiny(cls) -> SwapLossWeights:
        return cls()


@dataclass(frozen=True)
class ShapeLossWeights(_FromDict):
    """Dshape loss weights, paper eq. (19): adv + 10 rec + 800 ldmk. `r1` as in SwapLossWeights."""

    adv: float = 1.0
    rec: float = 10.0
    ldmk: float = 800.0
    r1: float = 1.0

    @classmethod
    def paper(cls) -> ShapeLossWeights:
        return cls()

    @classmethod
    def tiny(cls) -> ShapeLossWeights:
        return cls()


# --------------------------------------------------------------------------- whole family
@dataclass(frozen=True)
class FlowFaceConfig(_FromDict):
    """Everything the FlowFace++ networks need: Fswa + its discriminator, Dshape + Dres."""

    swap: SwapConfig = field(default_factory=SwapConfig.paper)
    swap_disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig.paper)
    shape: ShapeConfig = field(default_factory=ShapeConfig.paper)
    shape_disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig.paper)
    swap_weights: SwapLossWeights = field(default_factory=SwapLossWeights.paper)
    shape_weights: ShapeLossWeights = field(default_factory=ShapeLossWeights.paper)

    def __post_init__(self) -> None:
        size = self.swap.mae.img_size
        for name, s in (("swap_disc", self.swap_disc.img_size), ("shape", self.shape.img_size),
                        ("shape_disc", self.shape_disc.img_size)):
            if s != size:
                raise ConfigError(f"{name}.img_size {s} != swap.mae.img_size {size}")

    @classmethod
    def paper(cls) -> FlowFaceConfig:
        return cls()

    @classmethod
    def tiny(cls) -> FlowFaceConfig:
        return cls(swap=SwapConfig.tiny(), swap_disc=DiscriminatorConfig.tiny(), shape=ShapeConfig.tiny(),
                   shape_disc=DiscriminatorConfig.tiny(), swap_weights=SwapLossWeights.tiny(),
                   shape_weights=ShapeLossWeights.tiny())


#: Explicit variant registry: name -> factory.
VARIANTS: dict[str, Callable[[], FlowFaceConfig]] = {
    "paper": FlowFaceConfig.paper,
    "tiny": FlowFaceConfig.tiny,
}


def get_variant(name: str) -> FlowFaceConfig:
    """The named config variant; raises ConfigError listing the known names."""
    try:
        return VARIANTS[name]()
    except KeyError:
        raise ConfigError(f"unknown model variant {name!r}; known: {sorted(VARIANTS)}") from None


# --------------------------------------------------------------------------- auxiliary networks
@dataclass(frozen=True)
class RegressorConfig:
    """Regressor size. ``n_shape``/``n_exp`` must match threedmm.parquet (pipeline default 20/10)."""

    image_size: int = 256  # internal working resolution (input is resized to this)
    width: int = 32  # channels of the first stage; stages use width * (1, 2, 4, 8)
    n_landmarks: int = 68
    n_shape: int = 20
    n_exp: int = 10
    hidden: int = 512  # shared FC trunk before the heads
    dropout: float = 0.0  # on the trunk features during training

    @classmethod
    def paper(cls) -> RegressorConfig:
        return cls()

    @classmethod
    def tiny(cls) -> RegressorConfig:
        return cls(image_size=32, width=8, hidden=64)
