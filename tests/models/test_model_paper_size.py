"""Paper-size networks built on the meta device (no memory): parameter counts in a sane range."""
from __future__ import annotations

import torch
from torch import nn

from faceswap_models.config import FlowFaceConfig
from faceswap_models.discriminator import Dres, PatchDiscriminator
from faceswap_models.mae import FaceMAE
from faceswap_models.shape import ShapeDiscriminator
from faceswap_models.swap import SwapGenerator


def _count(m: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable)


def test_paper_size_parameter_counts() -> None:
    cfg = FlowFaceConfig.paper()
    with torch.device("meta"):
        mae = FaceMAE(cfg.swap.mae)
        fswa = SwapGenerator(cfg.swap)
        dswa = PatchDiscriminator(cfg.swap_disc)
        dshape = ShapeDiscriminator(cfg.shape)
        dres = Dres(cfg.shape_disc)
    counts = {
        "FaceMAE (pretraining, enc+dec)": _count(mae),
        "Fswa total": _count(fswa),
        "Fswa trainable (CAFM + ConvDecoder)": _count(fswa, trainable=True),
        "  MAE encoder (frozen)": _count(fswa.encoder),
        "  CAFM": _count(fswa.fusion),
        "  ConvDecoder": _count(fswa.decoder),
        "Dswa (PatchDiscriminator)": _count(dswa),
        "Dshape (Gres)": _count(dshape),
        "Dres": _count(dres),
    }
    for k, v in counts.items():
        print(f"{k:40s} {v / 1e6:8.2f} M")
    assert all(p.is_meta for p in fswa.parameters())
    assert 85e6 < counts["  MAE encoder (frozen)"] < 87e6  # ViT-B/16: 85.8 M
    assert 105e6 < counts["FaceMAE (pretraining, enc+dec)"] < 115e6  # MAE ViT-B: ~111.7 M
    assert 20e6 < counts["  CAFM"] < 23e6  # 3 ViT-B-width blocks, ~7.1 M each
    assert 1e6 < counts["  ConvDecoder"] < 30e6
    assert 5e6 < counts["Dswa (PatchDiscriminator)"] < 50e6
    assert 5e6 < counts["Dshape (Gres)"] < 80e6
    assert counts["Fswa trainable (CAFM + ConvDecoder)"] == counts["  CAFM"] + counts["  ConvDecoder"]
