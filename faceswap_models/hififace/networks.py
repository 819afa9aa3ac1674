"""HifiFace's generator networks (Wang et al., IJCAI 2021): an encoder on the target, a decoder of AdaIN
ResBlks conditioned on the 3D shape-aware identity v_sid, and the Semantic Facial Fusion (SFF) module.
Images are (B, 3, H, W) in [-1, 1]; the frozen identity network and 3DMM regressor that make v_sid are not
part of these modules (faceswap_models/hififace/generator.py holds them).

SFF, at level `sff_level` (S/4 in the paper):
    M_low = sigmoid(conv(z_dec))                                  (B, 1, S/4, S/4)
    z_fuse = M_low * z_dec + (1 - M_low) * sigma(z_enc)            sigma: a residual block
    I_low = tanh(conv(z_fuse))                                    (B, 3, S/4, S/4)
    h = F_up(AdaINResBlk(z_fuse, v_sid))                          F_up: x4 (one x2 ResBlk per level)
    I_out, M_r = tanh / sigmoid of conv(h)                        (B, 3 | 1, S, S)
    I_r = M_r * I_out + (1 - M_r) * I_t

The discriminator is the project's StarGAN-v2-style one (faceswap_models.discriminator.PatchDiscriminator).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.config import DiscriminatorConfig, RegressorConfig
from faceswap_models.discriminator import PatchDiscriminator
from faceswap_models.hififace.config import HifiFaceNetConfig
from faceswap_models.layers import AdaINResBlock, ConvResBlock, EncoderResBlock

__all__ = ["SFFOutput", "semantic_fusion", "mask_blend", "UpResBlock", "HifiFaceNet", "parameter_counts"]


class SFFOutput(NamedTuple):
    """What the generator returns for one swap."""

    image: Tensor  # I_r (B, 3, S, S): the blended result
    raw: Tensor  # I_out (B, 3, S, S): before the blend
    mask: Tensor  # M_r (B, 1, S, S)
    low: Tensor  # I_low (B, 3, S/4, S/4)
    low_mask: Tensor  # M_low (B, 1, S/4, S/4)


def semantic_fusion(z_dec: Tensor, z_enc: Tensor, m_low: Tensor) -> Tensor:
    """z_fuse = M_low * z_dec + (1 - M_low) * z_enc: (B, C, s, s) twice, mask (B, 1, s, s) -> (B, C, s, s)."""
    assert z_dec.shape == z_enc.shape and m_low.shape[1] == 1, f"{tuple(z_dec.shape)}, {tuple(z_enc.shape)}"
    return m_low * z_dec + (1 - m_low) * z_enc


def mask_blend(raw: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """I_r = M_r * I_out + (1 - M_r) * I_t: (B, 3, S, S) twice, mask (B, 1, S, S)."""
    return mask * raw + (1 - mask) * target


class UpResBlock(nn.Module):
    """x2 nearest up-sampling followed by a residual block: (B, c_in, s, s) -> (B, c_out, 2s, 2s) (F_up's step)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.block = ConvResBlock(c_in, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(F.interpolate(x, scale_factor=2, mode="nearest"))


class HifiFaceNet(nn.Module):
    """G(v_sid, I_t): v_sid (B, coeff_dim + id_dim), I_t (B, 3, S, S) -> SFFOutput.

    Encoder: 3x3 stem then one EncoderResBlock per level (z_enc^l at each level). Decoder: `bottleneck_blocks`
    AdaIN ResBlks at the bottleneck, then up-sampling AdaIN ResBlks to the SFF level; SFF as the module docstring.
    """

    def __init__(self, cfg: HifiFaceNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc, w, lv = cfg.encoder_channels, cfg.style_dim, cfg.sff_level
        self.stem = nn.Conv2d(3, enc[0], 3, padding=1)
        self.down = nn.ModuleList(EncoderResBlock(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.bottleneck = nn.ModuleList(AdaINResBlock(enc[-1], enc[-1], w) for _ in range(cfg.bottleneck_blocks))
        self.up = nn.ModuleList(AdaINResBlock(enc[k + 1], enc[k], w, upsample=True)
                                for k in range(len(enc) - 2, lv - 1, -1))  # bottleneck -> SFF level
        c = enc[lv]
        self.low_mask_head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 1))
        self.enc_residual = ConvResBlock(c, c)  # sigma(z_enc)
        self.low_rgb = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(c, 3, 3, padding=1))
        self.fused_block = AdaINResBlock(c, c, w)
        self.upsampler = nn.ModuleList(UpResBlock(enc[k + 1], enc[k]) for k in range(lv - 1, -1, -1))  # F_up
        self.out_head = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(enc[0], 4, 3, padding=1))  # RGB + mask logit

    def encode_target(self, target: Tensor) -> list[Tensor]:
        """I_t (B, 3, S, S) -> [z_enc^0 (B, e_0, S, S), ..., z_enc^(E-1)]."""
        size = self.cfg.img_size
        assert target.dim() == 4 and tuple(target.shape[1:]) == (3, size, size), \
            f"expected (B, 3, {size}, {size}), got {tuple(target.shape)}"
        feats = [self.stem(target)]
        for block in self.down:
            feats.append(block(feats[-1]))
        return feats

    def forward(self, v_sid: Tensor, target: Tensor) -> SFFOutput:
        assert v_sid.dim() == 2 and v_sid.shape[1] == self.cfg.style_dim, \
            f"v_sid: expected (B, {self.cfg.style_dim}), got {tuple(v_sid.shape)}"
        feats = self.encode_target(target)
        h = feats[-1]
        for block in self.bottleneck:
            h = block(h, v_sid)
        for block in self.up:
            h = block(h, v_sid)  # ends (B, e_sff, S/4, S/4): z_dec
        z_enc = feats[self.cfg.sff_level]
        m_low = torch.sigmoid(self.low_mask_head(h))  # (B, 1, S/4, S/4)
        z_fuse = semantic_fusion(h, self.enc_residual(z_enc), m_low)
        low = torch.tanh(self.low_rgb(z_fuse))  # (B, 3, S/4, S/4)
        h = self.fused_block(z_fuse, v_sid)
        for block in self.upsampler:
            h = block(h)  # ends (B, e_0, S, S)
        out = self.out_head(h)
        raw, mask = torch.tanh(out[:, :3]), torch.sigmoid(out[:, 3:])
        return SFFOutput(image=mask_blend(raw, target, mask), raw=raw, mask=mask, low=low, low_mask=m_low)


def parameter_counts() -> dict[str, int]:
    """Parameter counts of the paper-size generator, the 3DMM regressor and the discriminator (meta device)."""
    from faceswap_models.auxiliary.regressor import FaceAttributeRegressor

    with torch.device("meta"):
        net = HifiFaceNet(HifiFaceNetConfig.paper())
        regressor = FaceAttributeRegressor(RegressorConfig.paper())
        disc = PatchDiscriminator(DiscriminatorConfig.paper())

    def count(*mods: nn.Module) -> int:
        return sum(p.numel() for m in mods for p in m.parameters())

    return {"HifiFaceNet": count(net), "HifiFaceNet.encoder": count(net.stem, net.down),
            "HifiFaceNet.decoder": count(net.bottleneck, net.up),
            "HifiFaceNet.sff": count(net.low_mask_head, net.enc_residual, net.low_rgb, net.fused_block, net.upsampler,
                                     net.out_head),
            "Regressor": count(regressor), "Discriminator": count(disc)}
