"""The swap-model bundle round-trips weights and alignment settings; bad bundles name the file."""
import json

import pytest
import torch

from faceswap_common.weights import WeightsError
from faceswap_models.bundle import load_bundle, save_bundle
from faceswap_models.config import SwapConfig
from faceswap_models.swap import SwapGenerator


def test_bundle_roundtrip(tmp_path):
    torch.manual_seed(0)
    gen = SwapGenerator(SwapConfig.tiny())
    save_bundle(tmp_path / "b", gen, align_size=32, template_scale=1.4, meta={"step": 7})
    b = load_bundle(tmp_path / "b")
    assert b.align_size == 32 and b.template_scale == pytest.approx(1.4) and b.meta == {"step": 7}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    gen.eval()
    with torch.no_grad():
        assert torch.equal(gen(x, x.flip(0)), b.generator(x, x.flip(0)))


def test_bundle_errors(tmp_path):
    with pytest.raises(WeightsError, match="not a swap-model bundle"):
        load_bundle(tmp_path)
    gen = SwapGenerator(SwapConfig.tiny())
    save_bundle(tmp_path, gen, align_size=32, template_scale=1.0)
    doc = json.loads((tmp_path / "bundle.json").read_text())
    doc["format"] = 99
    (tmp_path / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="format 99"):
        load_bundle(tmp_path)
