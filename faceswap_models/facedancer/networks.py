"""FaceDancer's generator (Rosberg et al., WACV 2023): a U-Net-style encoder on the target, a mapping
network on the source's identity embedding, AdaIN ResBlks conditioned on it, and Adaptive Feature Fusion
Attention (AFFA) joining the decoder to the encoder's skips. Images are (B, 3, H, W) in [-1, 1]; the
frozen identity network is not part of these modules (the caller passes its embedding).

The discriminator is the project's StarGAN-v2-style one (faceswap_models.discriminator.PatchDiscriminator,
the paper's choice "as StarGAN-v2 and HifiFace"). Where the levels sit: faceswap_models/facedancer/config.py.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from faceswap_models.config import DiscriminatorConfig
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.facedancer.config import FaceDancerNetConfig
from faceswap_models.layers import AdaIN, AdaINResBlock, EncoderResBlock
from faceswap_models.swap import face_ellipse_mask, lowpass

__all__ = ["AdaIN", "AdaINResBlock", "EncoderResBlock", "AFFA", "MappingNetwork", "FaceDancerNet",
           "parameter_counts"]


class AFFA(nn.Module):
    """Adaptive Feature Fusion Attention: m = sigmoid(conv3x3(LeakyReLU(conv3x3(concat(h, z_a))))) with h's
    channel count; output m * h + (1 - m) * z_a. h: the identity-conditioned decoder map, z_a: the target's
    encoder skip of the same shape. m = 1 keeps h (identity), m = 0 keeps z_a (target)."""

    def __init__(self, channels: int, hidden: int = 0) -> None:
        super().__init__()
        hidden = hidden or channels
        self.attention = nn.Sequential(nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.LeakyReLU(0.2),
                                       nn.Conv2d(hidden, channels, 3, padding=1))

    def mask(self, h: Tensor, z_a: Tensor) -> Tensor:
        """(B, C, S, S) twice -> m (B, C, S, S) in (0, 1)."""
        return torch.sigmoid(self.attention(torch.cat([h, z_a], dim=1)))

    @staticmethod
    def fuse(h: Tensor, z_a: Tensor, m: Tensor) -> Tensor:
        return m * h + (1 - m) * z_a

    def forward(self, h: Tensor, z_a: Tensor) -> tuple[Tensor, Tensor]:
        """h, z_a (B, C, S, S) -> (fused (B, C, S, S), m (B, C, S, S))."""
        assert h.shape == z_a.shape, f"AFFA: {tuple(h.shape)} vs {tuple(z_a.shape)}"
        m = self.mask(h, z_a)
        return self.fuse(h, z_a, m), m


class MappingNetwork(nn.Module):
    """M: identity embedding (B, id_dim) -> style w (B, mapping_dim); Linear + LeakyReLU(0.2) layers, the last linear."""

    def __init__(self, id_dim: int, dim: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for k in range(layers):
            mods.append(nn.Linear(id_dim if k == 0 else dim, dim))
            if k < layers - 1:
                mods.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*mods)

    def forward(self, z_id: Tensor) -> Tensor:
        return self.net(z_id)


class FaceDancerNet(nn.Module):
    """G(z_id, X_t): z_id (B, id_dim) the source's identity embedding, X_t (B, 3, H, W) -> (B, 3, H, W) in [-1, 1].

    Encoder: [the target's inner face low-passed, cfg.target_face_lowpass] 3x3 stem (level 0) then one EncoderResBlock per further level (skips z_a^0..z_a^(E-1)).
    Decoder: `bottleneck_blocks` AdaIN ResBlks at level E-1, then per level l = E-2..0 an up-sampling AdaIN
    ResBlk to e_l channels, fused with z_a^l by AFFA (l >= 1) or by concatenation + 3x3 conv (l = 0);
    then LeakyReLU + 1x1 conv to RGB and tanh.
    """

    def __init__(self, cfg: FaceDancerNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc, w = cfg.encoder_channels, cfg.mapping_dim
        self.stem = nn.Conv2d(3, enc[0], 3, padding=1)
        self.down = nn.ModuleList(EncoderResBlock(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.mapping = MappingNetwork(cfg.id_dim, w, cfg.mapping_layers)
        self.bottleneck = nn.ModuleList(AdaINResBlock(enc[-1], enc[-1], w) for _ in range(cfg.bottleneck_blocks))
        levels = range(len(enc) - 2, -1, -1)  # decoder levels, coarse to fine
        self.up = nn.ModuleList(AdaINResBlock(enc[lv + 1], enc[lv], w, upsample=True) for lv in levels)
        self.affa = nn.ModuleList(AFFA(enc[lv], cfg.affa_hidden) for lv in levels if lv >= 1)
        self.concat_fuse = nn.Conv2d(2 * enc[0], enc[0], 3, padding=1)  # level 0: plain concatenation
        # no normalisation before RGB: an instance norm there (StarGAN-v2's to_rgb) erases each image's mean
        # colour, which here must come from the target (a first run drew every background in one hue)
        self.to_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(enc[0], 3, 1))
        self.register_buffer("face_mask", face_ellipse_mask(cfg.img_size, cfg.face_ellipse), persistent=False)

    def target_input(self, target: Tensor) -> Tensor:
        """What the encoder sees of the target: itself (paper), or with cfg.target_face_lowpass = k its inner
        face replaced by a k x k low-pass (pose, lighting and coarse expression stay; identity detail goes)."""
        k = self.cfg.target_face_lowpass
        return target if not k else target + self.face_mask * (lowpass(target, k) - target)

    def encode_target(self, target: Tensor) -> list[Tensor]:
        """X_t (B, 3, H, W) -> [z_a^0 (B, e_0, H, W), ..., z_a^(E-1) (B, e_(E-1), H/2^(E-1), ...)]."""
        size = self.cfg.img_size
        assert target.dim() == 4 and tuple(target.shape[1:]) == (3, size, size), \
            f"expected (B, 3, {size}, {size}), got {tuple(target.shape)}"
        skips = [self.stem(self.target_input(target))]
        for block in self.down:
            skips.append(block(skips[-1]))
        return skips

    def forward(self, z_id: Tensor, target: Tensor, return_masks: bool = False
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """-> X_c (B, 3, H, W) [, AFFA masks coarse to fine, each (B, e_l, S_l, S_l)]."""
        assert z_id.dim() == 2 and z_id.shape[1] == self.cfg.id_dim, f"z_id: expected (B, {self.cfg.id_dim})"
        w = self.mapping(z_id)  # (B, mapping_dim)
        skips = self.encode_target(target)
        h = skips[-1]
        for block in self.bottleneck:
            h = block(h, w)
        masks = []
        affa = iter(self.affa)
        for k, block in enumerate(self.up):
            level = len(skips) - 2 - k
            h = block(h, w)  # (B, e_level, S_level, S_level)
            if level >= 1:
                h, m = next(affa)(h, skips[level])
                masks.append(m)
            else:
                h = self.concat_fuse(torch.cat([h, skips[0]], dim=1))
        out = torch.tanh(self.to_rgb(h))  # (B, 3, H, W)
        return (out, masks) if return_masks else out


def parameter_counts() -> dict[str, int]:
    """Parameter counts of the paper-size generator and discriminator, built on the meta device."""
    cfg = FaceDancerNetConfig.paper()
    with torch.device("meta"):
        net = FaceDancerNet(cfg)
        disc = PatchDiscriminator(DiscriminatorConfig.paper())

    def count(*mods: nn.Module) -> int:
        return sum(p.numel() for m in mods for p in m.parameters())

    return {"FaceDancerNet": count(net), "FaceDancerNet.encoder": count(net.stem, net.down),
            "FaceDancerNet.mapping": count(net.mapping), "FaceDancerNet.decoder": count(net.bottleneck, net.up),
            "FaceDancerNet.affa": count(net.affa), "Discriminator": count(disc)}
