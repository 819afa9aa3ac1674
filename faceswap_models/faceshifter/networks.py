"""FaceShifter networks (Li et al. 2019): AEI-Net (attributes encoder + AAD generator), HEAR-Net and the
pix2pixHD-style multi-scale discriminator. Images are (B, 3, H, W) in [-1, 1]; the frozen identity network
is not part of these modules (the caller passes its L2-normalised embedding z_id).

Where z_att levels sit: see faceswap_models/faceshifter/config.py (bottleneck first, the last one at
img_size / 1 as a bilinear x2 copy of the img_size / 2 decoder map).

Biases: a conv whose output is normalised (BN / instance norm) before it is used has no bias, since the
normalisation removes it exactly (a bias there would only ever get a zero gradient).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceswap_models.faceshifter.config import AEINetConfig, FaceShifterConfig, HEARNetConfig, MultiScaleDiscConfig

__all__ = [
    "MultiLevelAttributesEncoder", "AADLayer", "AADResBlock", "AADGenerator", "AEINet", "HEARNet",
    "MultiScaleDiscriminator", "parameter_counts",
]


def _down(c_in: int, c_out: int) -> nn.Sequential:
    """Stride-2 4x4 conv + BN + LeakyReLU(0.1): (B, c_in, S, S) -> (B, c_out, S/2, S/2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Stride-2 4x4 transposed conv + BN + LeakyReLU(0.1): (B, c_in, S, S) -> (B, c_out, 2S, 2S)."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1))


# --------------------------------------------------------------------------- AEI-Net
class MultiLevelAttributesEncoder(nn.Module):
    """U-Net on the target: (B, 3, H, W) -> [z_att^1, ..., z_att^n], coarsest first.

    Shapes (AEINetConfig.att_channels / att_sizes): z_att^1 (B, e_L, H/2^L, W/2^L) is the bottleneck,
    z_att^k the decoder map (transposed conv ++ encoder skip) at H/2^(L-k+1), z_att^n = z_att^(n-1)
    bilinearly upsampled to (H, W).
    """

    def __init__(self, cfg: AEINetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc = cfg.encoder_channels
        self.down = nn.ModuleList(_down(a, b) for a, b in zip((3,) + enc[:-1], enc))
        att = cfg.att_channels
        # decoder step j: z_att^(j+1) (att[j] ch) -> enc[L-2-j] ch, concatenated with the skip of that width
        self.up = nn.ModuleList(_up(att[j], enc[-2 - j]) for j in range(len(enc) - 1))

    def forward(self, target: Tensor) -> list[Tensor]:
        B, C, H, W = target.shape
        assert C == 3 and H == W == self.cfg.img_size, \
            f"expected (B, 3, {self.cfg.img_size}, {self.cfg.img_size}), got {tuple(target.shape)}"
        skips = []
        x = target
        for layer in self.down:
            x = layer(x)
            skips.append(x)  # (B, e_i, H/2^i, W/2^i)
        z = [x]  # bottleneck
        for k, layer in enumerate(self.up, start=1):
            z.append(torch.cat([layer(z[-1]), skips[-1 - k]], dim=1))  # (B, 2 e, 2S, 2S)
        z.append(F.interpolate(z[-1], scale_factor=2, mode="bilinear", align_corners=False))  # (B, c, H, W)
        return z


class AADLayer(nn.Module):
    """Adaptive Attentional Denormalization.

    h_bar = norm(h); A = gamma_id(z_id) h_bar + beta_id(z_id) (linear layers on z_id, per channel);
    I = gamma_att(z_att) h_bar + beta_att(z_att) (convs on z_att, per pixel, SPADE-like);
    M = sigmoid(conv3x3(h_bar)) (1 channel); out = (1 - M) A + M I.

    Normalisation: the paper uses batch norm; the default here is affine-free instance norm. The modulation
    is per sample (z_id and z_att belong to one pair), so per-sample statistics keep a swap independent of
    the other pairs in the batch; training batches of 256 px pairs are small (noisy batch statistics) and
    inference runs at batch 1 with no train/eval (running statistics) gap. `norm="batch"` gives the paper's.
    """

    def __init__(self, c_h: int, c_att: int, id_dim: int, norm: str = "instance", att_kernel: int = 3) -> None:
        super().__init__()
        self.norm = (nn.InstanceNorm2d(c_h, affine=False) if norm == "instance"
                     else nn.BatchNorm2d(c_h, affine=False))
        self.id_gamma = nn.Linear(id_dim, c_h)
        self.id_beta = nn.Linear(id_dim, c_h)
        self.att_gamma = nn.Conv2d(c_att, c_h, att_kernel, padding=att_kernel // 2)
        self.att_beta = nn.Conv2d(c_att, c_h, att_kernel, padding=att_kernel // 2)
        self.mask = nn.Conv2d(c_h, 1, 3, padding=1)

    def forward(self, h: Tensor, z_att: Tensor, z_id: Tensor,
                return_mask: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """h (B, c_h, S, S), z_att (B, c_att, S, S), z_id (B, id_dim) -> (B, c_h, S, S) [, M (B, 1, S, S)]."""
        h_bar = self.norm(h)
        a = self.id_gamma(z_id)[:, :, None, None] * h_bar + self.id_beta(z_id)[:, :, None, None]
        i = self.att_gamma(z_att) * h_bar + self.att_beta(z_att)
        m = torch.sigmoid(self.mask(h_bar))
        out = (1 - m) * a + m * i
        return (out, m) if return_mask else out


class AADResBlock(nn.Module):
    """Two AAD + ReLU + 3x3 conv units (c_in -> c_in -> c_out); the shortcut is identity when c_in == c_out,
    else a third AAD + ReLU + 3x3 conv unit. `bias`: biases on the output convs (only the last block's output
    is used un-normalised, see the module docstring)."""

    def __init__(self, c_in: int, c_out: int, c_att: int, id_dim: int, norm: str = "instance",
                 att_kernel: int = 3, bias: bool = False) -> None:
        super().__init__()
        self.aad1 = AADLayer(c_in, c_att, id_dim, norm, att_kernel)
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1, bias=False)
        self.aad2 = AADLayer(c_in, c_att, id_dim, norm, att_kernel)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
        if c_in != c_out:
            self.aad_skip: AADLayer | None = AADLayer(c_in, c_att, id_dim, norm, att_kernel)
            self.conv_skip: nn.Conv2d | None = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        else:
            self.aad_skip = self.conv_skip = None

    def forward(self, h: Tensor, z_att: Tensor, z_id: Tensor) -> Tensor:
        """h (B, c_in, S, S), z_att (B, c_att, S, S), z_id (B, id_dim) -> (B, c_out, S, S)."""
        r = self.conv1(F.relu(self.aad1(h, z_att, z_id)))
        r = self.conv2(F.relu(self.aad2(r, z_att, z_id)))
        if self.aad_skip is not None and self.conv_skip is not None:
            h = self.conv_skip(F.relu(self.aad_skip(h, z_att, z_id)))
        return r + h


class AADGenerator(nn.Module):
    """(z_id (B, id_dim), [z_att^1..z_att^n]) -> image (B, 3, H, W) in [-1, 1].

    z_id -> transposed conv to (B, g_1, S_1, S_1) at the coarsest z_att size; then AAD ResBlk k at z_att^k's
    size (g_k -> g_(k+1), the last -> 3), x2 bilinear upsampling between levels; tanh.
    """

    def __init__(self, cfg: AEINetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gen, att, n = cfg.generator_channels, cfg.att_channels, cfg.num_levels
        self.stem = nn.ConvTranspose2d(cfg.id_dim, gen[0], cfg.att_sizes[0], bias=False)  # 1x1 -> S_1 x S_1
        outs = gen[1:] + (3,)
        self.blocks = nn.ModuleList(
            AADResBlock(gen[k], outs[k], att[k], cfg.id_dim, cfg.aad_norm, cfg.att_kernel, bias=k == n - 1)
            for k in range(n))

    def forward(self, z_id: Tensor, z_att: list[Tensor]) -> Tensor:
        assert z_id.dim() == 2 and z_id.shape[1] == self.cfg.id_dim, f"z_id: expected (B, {self.cfg.id_dim})"
        assert len(z_att) == len(self.blocks), f"expected {len(self.blocks)} attribute maps, got {len(z_att)}"
        h = self.stem(z_id[:, :, None, None])  # (B, g_1, S_1, S_1)
        for k, (block, z) in enumerate(zip(self.blocks, z_att)):
            if k:
                h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = block(h, z, z_id)  # (B, g_(k+1), S_k, S_k)
        return torch.tanh(h)  # (B, 3, H, W)


class AEINet(nn.Module):
    """Adaptive Embedding Integration Network: encoder (attributes of the target) + AAD generator.

    forward(z_id (B, id_dim) L2-normalised embedding of the source, target (B, 3, H, W)) ->
    (Y_hat_st (B, 3, H, W) in [-1, 1], z_att of the target). L_att needs `self.encoder(Y_hat_st)` too.
    """

    def __init__(self, cfg: AEINetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MultiLevelAttributesEncoder(cfg)
        self.generator = AADGenerator(cfg)

    def forward(self, z_id: Tensor, target: Tensor) -> tuple[Tensor, list[Tensor]]:
        z_att = self.encoder(target)
        return self.generator(z_id, z_att), z_att


# --------------------------------------------------------------------------- HEAR-Net
class HEARNet(nn.Module):
    """Heuristic Error Acknowledging Refinement Network: a U-Net on concat(Y_hat_st, Delta_Y_t).

    forward(y_st (B, 3, H, W) the AEI-Net swap, delta (B, 3, H, W) = X_t - AEI-Net(X_t, X_t) the heuristic
    error) -> refined Y_st (B, 3, H, W) in [-1, 1]. Down: stride-2 4x4 conv + BN + LeakyReLU(0.1) per
    `channels` entry; up: transposed conv + BN + LeakyReLU(0.1) concatenated with the skip, then a last
    transposed conv to 3 channels.

    The U-Net predicts a correction added to Y_hat_st (clamped to [-1, 1]), its last layer initialised at
    1 % of the default scale: HEAR-Net starts as (almost) the identity on AEI-Net's output, so a short run
    cannot make the swap worse than AEI-Net's. The paper is silent on the form; it writes Y_st =
    HEAR-Net(Y_hat_st, Delta_Y_t). A plain tanh output (tried first) turned a detectable AEI-Net face
    (val detection 0.88) into no face at all after 200 steps on the demo (test detection 0.00).
    """

    def __init__(self, cfg: HEARNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.down = nn.ModuleList(_down(a, b) for a, b in zip((6,) + ch[:-1], ch))
        widths = [ch[-1]] + [2 * c for c in reversed(ch[:-1])]  # decoder input widths, coarsest first
        self.up = nn.ModuleList(_up(widths[k], ch[-2 - k]) for k in range(len(ch) - 1))
        self.out = nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1)
        with torch.no_grad():  # start near the identity on y_st (the correction ~ 0)
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def forward(self, y_st: Tensor, delta: Tensor) -> Tensor:
        size = self.cfg.img_size
        assert y_st.shape == delta.shape and tuple(y_st.shape[1:]) == (3, size, size), \
            f"expected two (B, 3, {size}, {size}), got {tuple(y_st.shape)} and {tuple(delta.shape)}"
        x = torch.cat([y_st, delta], dim=1)  # (B, 6, H, W)
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        for k, layer in enumerate(self.up):
            x = torch.cat([layer(x), skips[-2 - k]], dim=1)
        return (y_st + self.out(x)).clamp(-1.0, 1.0)  # (B, 3, H, W)


# --------------------------------------------------------------------------- discriminator
class _PatchGAN(nn.Module):
    """pix2pixHD NLayerDiscriminator: (B, 3, S, S) -> patch logits (B, 1, S', S')."""

    def __init__(self, cfg: MultiScaleDiscConfig) -> None:
        super().__init__()
        sn = cfg.spectral_norm

        def conv(c_in: int, c_out: int, stride: int, normed: bool) -> list[nn.Module]:
            c = nn.Conv2d(c_in, c_out, 4, stride, 2, bias=sn or not normed)
            if sn:
                return [nn.utils.parametrizations.spectral_norm(c)]
            return [c, nn.InstanceNorm2d(c_out)] if normed else [c]

        c = cfg.base_channels
        layers = conv(3, c, 2, False) + [nn.LeakyReLU(0.2)]
        for stride in [2] * (cfg.num_layers - 1) + [1]:
            c_next = min(2 * c, cfg.max_channels)
            layers += conv(c, c_next, stride, True) + [nn.LeakyReLU(0.2)]
            c = c_next
        layers += conv(c, 1, 1, False)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """x (B, 3, H, W) -> [logits at scale 0 (full), 1 (H/2), ...], one PatchGAN per scale (not shared).

    Between scales the image is average-pooled (3x3, stride 2, padding 1, padding excluded: pix2pixHD)."""

    def __init__(self, cfg: MultiScaleDiscConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.scales = nn.ModuleList(_PatchGAN(cfg) for _ in range(cfg.num_scales))

    def forward(self, x: Tensor) -> list[Tensor]:
        assert x.dim() == 4 and x.shape[1] == 3, f"expected (B, 3, H, W), got {tuple(x.shape)}"
        out = []
        for k, d in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))  # (B, 1, ~H/2^(k+num_layers), ...)
        return out


# --------------------------------------------------------------------------- sizes
def parameter_counts() -> dict[str, int]:
    """Parameter counts of the paper-size networks, built on the meta device (no memory)."""
    cfg = FaceShifterConfig.paper()
    with torch.device("meta"):
        aei = AEINet(cfg.aei)
        hear = HEARNet(cfg.hear)
        disc = MultiScaleDiscriminator(MultiScaleDiscConfig.paper())

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    return {"AEINet": count(aei), "AEINet.encoder": count(aei.encoder), "AEINet.generator": count(aei.generator),
            "HEARNet": count(hear), "MultiScaleDiscriminator": count(disc)}
