"""The swap-model bundle round-trips weights and alignment settings; bad bundles name the file."""
import json

import pytest
import torch

from faceswap.core.weights import WeightsError
from faceswap.artifacts import load_bundle, save_bundle
from faceswap_models.config import SwapConfig
from faceswap_models.swap import SwapGenerator
from paramsutil import section  # noqa: E402


def test_bundle_roundtrip(tmp_path):
    torch.manual_seed(0)
    gen = SwapGenerator(SwapConfig.tiny())
    save_bundle(tmp_path / "b", gen, align_size=32, template_scale=1.4, meta={"step": 7}, detect=section("detect"))
    b = load_bundle(tmp_path / "b")
    assert b.align_size == 32 and b.template_scale == pytest.approx(1.4) and b.meta == {"step": 7}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    gen.eval()
    with torch.no_grad():
        assert torch.equal(gen(x, x.flip(0)), b.generator(x, x.flip(0)))


def test_bundle_keeps_the_target_low_pass_and_spared_regions(tmp_path):
    """A bundle's SwapConfig (low-pass + eyes / mouth spared) comes back equal, so inference sees the
    target exactly as training did."""
    import dataclasses

    cfg = dataclasses.replace(SwapConfig.tiny(), target_face_lowpass=4, target_spare_lowpass=2,
                              target_face_spare=[[0.47, 0.39, 0.05, 0.075], [0.73, 0.49, 0.08, 0.13]])
    torch.manual_seed(0)
    gen = SwapGenerator(cfg)
    save_bundle(tmp_path / "b", gen, align_size=32, template_scale=1.4, detect=section("detect"))
    b = load_bundle(tmp_path / "b")
    assert b.config == cfg and b.config.target_face_spare[1] == (0.73, 0.49, 0.08, 0.13)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(b.generator.target_input(x), gen.target_input(x))


def test_bundle_keeps_whether_the_decoder_skip_is_open(tmp_path):
    """A model exported before train_swap.skip_start_step has its skip closed: its bundle loads closed
    and swaps as saved; one exported after opens it."""
    import dataclasses

    cfg = SwapConfig.tiny()
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, skip=["source"]))
    torch.manual_seed(0)
    gen = SwapGenerator(cfg).eval()
    for p in gen.decoder.skips.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for is_open in (False, True):
        gen.skip_open.fill_(is_open)
        save_bundle(tmp_path / str(is_open), gen, align_size=32, template_scale=1.4, detect=section("detect"))
        b = load_bundle(tmp_path / str(is_open))
        assert bool(b.generator.skip_open) is is_open
        with torch.no_grad():
            assert torch.equal(gen(x, x.flip(0)), b.generator(x, x.flip(0)))


def test_bundle_errors(tmp_path):
    with pytest.raises(WeightsError, match="not a generator artifact"):
        load_bundle(tmp_path)
    gen = SwapGenerator(SwapConfig.tiny())
    save_bundle(tmp_path, gen, align_size=32, template_scale=1.0, detect=section("detect"))
    meta = tmp_path / "generator.json"
    good = json.loads(meta.read_text())
    meta.write_text(json.dumps({**good, "format": 99}))
    with pytest.raises(WeightsError, match="format 99"):
        load_bundle(tmp_path)
    # no silent fallback: a bundle without its alignment is refused, naming the file and the key
    meta.write_text(json.dumps({k: v for k, v in good.items() if k != "align"}))
    with pytest.raises(WeightsError, match=r"generator.json: missing key\(s\) \['align'\]"):
        load_bundle(tmp_path)
    meta.write_text(json.dumps({**good, "align": {"size": 32}}))
    with pytest.raises(WeightsError, match="template_scale"):
        load_bundle(tmp_path)


def test_every_network_artifact_has_one_format(tmp_path):
    """MAE, Dshape and the generator are saved as <name>.safetensors + <name>.json {format, config, meta}."""
    from faceswap import artifacts
    from faceswap_models.config import MAEConfig, ShapeConfig
    from faceswap_models.mae import FaceMAE
    from faceswap_models.shape import ShapeDiscriminator

    torch.manual_seed(0)
    mae = FaceMAE(MAEConfig.tiny())
    artifacts.save_network(tmp_path, artifacts.MAE, mae, mae.cfg, {"steps": 3})
    assert artifacts.mae_config(tmp_path) == mae.cfg
    assert all(torch.equal(v, mae.state_dict()[k]) for k, v in artifacts.mae_state(tmp_path).items())
    dshape = ShapeDiscriminator(ShapeConfig.tiny())
    artifacts.save_network(tmp_path, artifacts.DSHAPE, dshape, dshape.cfg)
    assert artifacts.load_dshape(tmp_path).cfg == dshape.cfg
    save_bundle(tmp_path, SwapGenerator(SwapConfig.tiny()), align_size=32, template_scale=1.4, detect=section("detect"))
    for name in (artifacts.MAE, artifacts.DSHAPE, artifacts.GENERATOR):
        doc = json.loads(artifacts.config_file(tmp_path, name).read_text())
        assert doc["format"] == artifacts.FORMAT and set(doc) >= {"config", "meta"}
        assert artifacts.weights_file(tmp_path, name).is_file()
