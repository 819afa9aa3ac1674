"""The architecture seam: every registered architecture builds from its config, swaps through the one
generator interface, and round-trips through the one bundle format with its architecture named."""
from __future__ import annotations

import json

import pytest
import torch

from faceswap.artifacts import bundle_architecture, load_bundle, save_bundle
from faceswap.core.weights import WeightsError
from faceswap_models.architectures import ARCHITECTURES, architecture
from faceswap_models.faceshifter.config import FaceShifterConfig
from faceswap_models.faceshifter.generator import FaceShifter
from faceswap_models.generator import SwapModel
from paramsutil import section  # noqa: E402

NAMES = sorted(ARCHITECTURES)


def tiny(name: str) -> SwapModel:
    torch.manual_seed(0)
    arch = ARCHITECTURES[name]
    return arch.generator(arch.config.tiny()).eval()


def images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("name", NAMES)
def test_generator_interface(name):
    """forward == swap_encoded(encode_source(...)); a single encoded source broadcasts over targets."""
    g = tiny(name)
    assert g.architecture == name and isinstance(g, SwapModel)
    s, t = images(3, g.img_size, 1), images(3, g.img_size, 2)
    with torch.no_grad():
        out = g(s, t)
        assert out.shape == (3, 3, g.img_size, g.img_size) and out.abs().max() <= 1
        torch.testing.assert_close(g.swap_encoded(g.encode_source(s), s, t), out)
        one = g.swap_encoded(g.encode_source(s[:1]), s[:1], t)
        torch.testing.assert_close(one[0], out[0])
        other = g(images(3, g.img_size, 3), t)
    assert not torch.allclose(other, out)  # the source matters
    assert all(isinstance(v, torch.Tensor) for v in g.extras(s, t).values())


@pytest.mark.parametrize("name", NAMES)
def test_bundle_round_trip_names_the_architecture(tmp_path, name):
    g = tiny(name)
    folder = save_bundle(tmp_path / name, g, align_size=64, template_scale=1.4, detect=section("detect"))
    doc = json.loads((folder / "generator.json").read_text())
    assert doc["architecture"] == name and bundle_architecture(folder) is ARCHITECTURES[name]
    b = load_bundle(folder)
    assert type(b.generator) is type(g) and b.config == g.cfg and b.img_size == g.img_size
    s, t = images(2, g.img_size, 4), images(2, g.img_size, 5)
    with torch.no_grad():
        torch.testing.assert_close(b.generator(s, t), g(s, t))


def test_a_bundle_of_an_unknown_or_unnamed_architecture_is_refused(tmp_path):
    folder = save_bundle(tmp_path / "b", tiny("flowfacepp"), align_size=64, template_scale=1.4, detect=section("detect"))
    doc = json.loads((folder / "generator.json").read_text())
    (folder / "generator.json").write_text(json.dumps({**doc, "architecture": "simswap"}))
    with pytest.raises(WeightsError, match="unknown architecture 'simswap'"):
        load_bundle(folder)
    del doc["architecture"]
    (folder / "generator.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=r"missing key\(s\) \['architecture'\]"):
        load_bundle(folder)
    with pytest.raises(ValueError, match="unknown architecture 'x'"):
        architecture("x")


def test_faceshifter_output_is_aei_until_hear_is_on():
    """HEAR-Net refines only once trained (hear_on, saved with the weights): before, G = AEI-Net."""
    g = tiny("faceshifter")
    s, t = images(2, 32, 6), images(2, 32, 7)
    with torch.no_grad():
        ex = g.extras(s, t)
        torch.testing.assert_close(g(s, t), ex["aei"])
        torch.testing.assert_close(ex["heuristic_error"], t - g.aei(g.identity(t), t)[0])
        g.hear_on.fill_(True)
        refined = g(s, t)
        torch.testing.assert_close(refined, g.hear(ex["aei"], ex["heuristic_error"]))
    assert not torch.allclose(refined, ex["aei"])


def test_faceshifter_identity_network_is_frozen_and_travels_in_the_bundle(tmp_path):
    g = tiny("faceshifter")
    assert not any(p.requires_grad for p in g.identity.parameters())
    assert all(p.requires_grad for p in [*g.aei.parameters(), *g.hear.parameters()])
    g.train()
    assert not g.identity.training  # BatchNorm statistics stay frozen
    torch.manual_seed(1)
    other = FaceShifter(FaceShifterConfig.tiny())  # another identity network
    folder = save_bundle(tmp_path / "fs", g, align_size=64, template_scale=1.4, detect=section("detect"))
    x = images(2, 32, 8)
    with torch.no_grad():
        assert not torch.allclose(other.identity(x), g.identity(x))
        torch.testing.assert_close(load_bundle(folder).generator.identity(x), g.eval().identity(x))
