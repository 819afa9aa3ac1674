"""Swap inference pipeline and the `faceswap swap` / `faceswap verify` CLI with a tiny random bundle of every
architecture (faceswap_models/architectures.py): nothing outside an architecture's module branches on it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from faceswap.serving import watermark as wm
from faceswap.cli import main
from faceswap.artifacts import save_bundle
from faceswap_models.config import SwapConfig
from faceswap.faces.parsing import parse_from_landmarks
from faceswap.serving.inference import BLENDS, DEFAULT_BLEND, NoFaceError, SwapPipeline, face_mask, paste_back
from faceswap_models.architectures import ARCHITECTURES
from faceswap_models.swap import SwapGenerator
from tests.imageutil import write_rgb
from paramsutil import section  # noqa: E402

ALIGN = 64  # crop size of the tiny bundle (generator runs at 32 px)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def bundle_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    arch = ARCHITECTURES[request.param]
    return save_bundle(tmp_path_factory.mktemp("bundle") / arch.name, arch.generator(arch.config.tiny()),
                       align_size=ALIGN, template_scale=1.4, meta={"note": "random weights"}, detect=section("detect"))


@pytest.fixture(scope="module")
def pipe(bundle_dir) -> SwapPipeline:
    return SwapPipeline.from_bundle(bundle_dir)


@pytest.fixture(scope="module")
def source_rgb(tiny_corpus) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(sorted(tiny_corpus.glob("id_002/000.*"))[0])), cv2.COLOR_BGR2RGB)


def blend_weight(pipe: SwapPipeline, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The pipeline's blend weight in target pixels, (H, W) in [0, 1]."""
    t = pipe.align(target, "target", landmarks68=True)
    if pipe.blend == "model":  # the generator's own mask
        _, mask = pipe.generate_with_mask(pipe.source_tokens(source), t.crop)
    else:
        mask = pipe.blend_mask(t, pipe.generate_crop(pipe.source_tokens(source), t.crop))
    ones = np.full((pipe.align_size, pipe.align_size, 3), 255, np.uint8)
    return paste_back(np.zeros_like(target), ones, t.matrix, mask)[..., 0] / 255.0


def test_swap_image_changes_face_only(pipe, face_rgb, source_rgb):
    target = face_rgb[:, 20:480]  # non-square target
    out = pipe.swap_image(source_rgb, target)
    assert out.shape == target.shape and out.dtype == np.uint8
    w = blend_weight(pipe, source_rgb, target)
    diff = np.abs(out.astype(int) - target).max(-1)
    assert diff[w == 0].max() == 0  # untouched outside the mask
    if pipe.blend == "model":  # HifiFace: a random generator's M_r covers its crop at about 1/2
        assert pipe.last_blend == "model" and (w == 0).mean() > 0.3 and diff[w > 0.2].mean() > 5
        return
    assert (w == 0).mean() > 0.6  # background, hair, neck
    assert diff[w > 0.99].mean() > 10  # the random generator repaints the face
    ys, xs = np.nonzero(w > 0.99)
    t = pipe.align(target, "target")
    x0, y0, x1, y1 = t.face.box
    assert x0 - 20 < xs.mean() < x1 + 20 and y0 - 20 < ys.mean() < y1 + 20  # mask sits on the face


def test_no_face_names_the_input(pipe, face_rgb):
    blank = np.full((200, 200, 3), 128, np.uint8)
    with pytest.raises(NoFaceError, match="no face in source image") as e:
        pipe.swap_image(blank, face_rgb)
    assert e.value.which == "source"
    with pytest.raises(NoFaceError, match="no face in target image"):
        pipe.swap_image(face_rgb, blank)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        pipe.swap_image(face_rgb.astype(np.float32), face_rgb)


def test_swap_frames_encodes_source_once(pipe, face_rgb, source_rgb, monkeypatch):
    frames = [face_rgb, np.full((100, 120, 3), 90, np.uint8), np.roll(face_rgb, 7, axis=1)]
    expected = [pipe.swap_image(source_rgb, frames[0]), None, pipe.swap_image(source_rgb, frames[2])]
    calls = []
    real = pipe.detector.detect
    monkeypatch.setattr(pipe.detector, "detect", lambda img: calls.append(img.shape) or real(img))
    out = list(pipe.swap_frames(source_rgb, iter(frames)))
    assert len(calls) == 1 + len(frames)  # the source once, then one per frame
    assert np.array_equal(out[0], expected[0]) and np.array_equal(out[2], expected[2])
    assert out[1] is frames[1] and pipe.frames_without_face == 1  # kept as it was
    with pytest.raises(NoFaceError, match="frame 1"):
        list(pipe.swap_frames(source_rgb, frames, on_no_face="raise"))


def test_swap_aligned_matches_generator(pipe):
    rng = np.random.default_rng(0)
    src, tgt = (rng.integers(0, 256, (2, ALIGN, ALIGN, 3), dtype=np.uint8) for _ in range(2))
    out = pipe.swap_aligned(src, tgt)
    assert out.shape == (2, ALIGN, ALIGN, 3) and out.dtype == np.uint8
    s, t = pipe.to_tensor(src), pipe.to_tensor(tgt)  # (2, 3, 32, 32)
    with torch.no_grad():
        ref = pipe.generator(s, t)
    got = pipe.swap_aligned(s, t)
    assert got.shape == (2, 3, 32, 32) and torch.allclose(got, ref, atol=1e-5)
    one = pipe.swap_aligned(s[:1], t)  # one source broadcast over the targets
    assert torch.allclose(one[0], ref[0], atol=1e-5)


# ------------------------------------------------------------------------------- blends
BIG = 256  # crop size for the blend tests: the output's face must be findable (HOG needs ~80 px)


def reshape_jaw(img: np.ndarray, pts68: np.ndarray, factor: float) -> np.ndarray:
    """Widen (factor > 1) or narrow the lower face horizontally about the nose: no change at the
    eyes, `factor` from the bottom of the nose down, linear in between; (S, S, 3) crop -> same."""
    s = img.shape[0]
    cx, y_eye, y_nose = pts68[27:36, 0].mean(), pts68[36:48, 1].mean(), pts68[33, 1]
    k = 1 + (factor - 1) * np.clip((np.arange(s) - y_eye) / (y_nose - y_eye), 0, 1)  # per row
    xs, ys = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32))
    return cv2.remap(img, (cx + (xs - cx) / k[:, None]).astype(np.float32), ys, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def reshape_points(pts68: np.ndarray, factor: float) -> np.ndarray:
    """Where `reshape_jaw` moves the landmarks: the generated face's true 68 points."""
    cx, y_eye, y_nose = pts68[27:36, 0].mean(), pts68[36:48, 1].mean(), pts68[33, 1]
    k = 1 + (factor - 1) * np.clip((pts68[:, 1] - y_eye) / (y_nose - y_eye), 0, 1)
    return np.stack([cx + (pts68[:, 0] - cx) * k, pts68[:, 1]], axis=1)


class FakeShapePipeline(SwapPipeline):
    """A synthetic "generator": the target crop with its jaw reshaped by `factor` and a blue tint
    (so swapped pixels are recognisable), or `mode="flat"` / `"noise"`: an output with no face."""

    factor = 1.0
    mode = "face"

    def align(self, rgb, which, landmarks68=False):
        t = super().align(rgb, which, landmarks68)
        if landmarks68:
            self.target = t
        return t

    def generate_crop(self, e_s, crop):
        if self.mode == "flat":
            return np.full_like(crop, 128)
        if self.mode == "noise":
            return np.random.default_rng(0).integers(0, 256, crop.shape, dtype=np.uint8)
        out = reshape_jaw(crop, self.target.landmarks68, self.factor).astype(np.int16)
        out[..., 2] += 90
        return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def big_bundle_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "swap", SwapGenerator(SwapConfig.tiny()),
                       align_size=BIG, template_scale=1.4, meta={"note": "random weights"}, detect=section("detect"))


def fake_swap(bundle_dir, blend: str, source, target, **kw) -> tuple[np.ndarray, FakeShapePipeline]:
    pipe = FakeShapePipeline.from_bundle(bundle_dir, blend=blend)
    for k, v in kw.items():
        setattr(pipe, k, v)
    return pipe.swap_image(source, target), pipe


def crop_region_to_image(region: np.ndarray, matrix: np.ndarray, shape) -> np.ndarray:
    """A boolean (S, S) crop region -> boolean target-image pixels it covers fully."""
    ones = np.full((BIG, BIG, 3), 255, np.uint8)
    return paste_back(np.zeros(shape, np.uint8), ones, matrix, region.astype(np.float32))[..., 0] == 255


def swapped_everywhere(pipe: FakeShapePipeline, target: np.ndarray) -> np.ndarray:
    """The fake output pasted with weight 1 over its whole crop: what "comes from the swap" looks like."""
    t = pipe.target
    crop = pipe.generate_crop(None, t.crop)
    return paste_back(target, crop, t.matrix, np.ones((BIG, BIG), np.float32))


def disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def test_shape_blend_keeps_a_wider_jaw(big_bundle_dir, face_rgb):
    factor = 1.35
    out, pipe = fake_swap(big_bundle_dir, "shape", face_rgb, face_rgb, factor=factor)
    assert pipe.last_blend == "shape" and pipe.blend_fallbacks == 0
    old, old_pipe = fake_swap(big_bundle_dir, "parsing", face_rgb, face_rgb, factor=factor)
    t = pipe.target
    target_face = parse_from_landmarks(t.landmarks68, BIG) > 0
    new_face = parse_from_landmarks(reshape_points(t.landmarks68, factor), BIG) > 0
    # just outside the target's jaw (beyond the old mask's feathering) but well inside the new jaw
    band = (cv2.erode(new_face.astype(np.uint8), disk(8)) > 0) & ~(cv2.dilate(target_face.astype(np.uint8), disk(6)) > 0)
    band[: int(t.landmarks68[30, 1])] = False  # the jaw, below the nose tip
    probe = crop_region_to_image(band, t.matrix, face_rgb.shape)
    assert probe.sum() > 200
    swap = swapped_everywhere(pipe, face_rgb).astype(int)
    assert np.abs(swap - face_rgb.astype(int))[probe].mean() > 30  # the tint makes swapped pixels obvious
    err = np.abs(out.astype(int) - swap)[probe].max(-1)
    assert np.median(err) <= 2 and (err <= 10).mean() > 0.9  # the wider jaw comes from the swap
    assert np.abs(old.astype(int) - face_rgb)[probe].max() <= 1  # the target-mask blend cuts it off
    # elsewhere the two blends agree: inside the target's face both paste the swap
    inner = crop_region_to_image(cv2.erode(target_face.astype(np.uint8), disk(12)) > 0, t.matrix, face_rgb.shape)
    assert (np.abs(out.astype(int) - old)[inner].max(-1) <= 2).mean() > 0.99


def test_shape_blend_hides_the_target_contour_of_a_narrower_face(big_bundle_dir, face_rgb):
    factor = 0.75
    out, pipe = fake_swap(big_bundle_dir, "shape", face_rgb, face_rgb, factor=factor)
    assert pipe.last_blend == "shape"
    old, _ = fake_swap(big_bundle_dir, "parsing", face_rgb, face_rgb, factor=factor)
    t = pipe.target
    target_face = (parse_from_landmarks(t.landmarks68, BIG) > 0).astype(np.uint8)
    new_face = (parse_from_landmarks(reshape_points(t.landmarks68, factor), BIG) > 0).astype(np.uint8)
    contour = (cv2.dilate(target_face, disk(1)) - cv2.erode(target_face, disk(1))) > 0  # the target's outline
    ring = contour & ~(cv2.dilate(new_face, disk(8)) > 0)  # ... where it lies clearly outside the new face
    ring[: int(t.landmarks68[30, 1])] = False
    probe = crop_region_to_image(ring, t.matrix, face_rgb.shape)
    assert probe.sum() > 50
    swap = swapped_everywhere(pipe, face_rgb).astype(int)
    err = np.abs(out.astype(int) - swap)[probe].max(-1)
    assert np.median(err) <= 3 and (err <= 10).mean() > 0.9  # the old outline is painted over by the swap
    old_err = np.abs(old.astype(int) - swap)[probe].max(-1)
    assert np.median(old_err) > 20  # the target-mask blend leaves it (a double contour)


@pytest.mark.parametrize("mode", ["flat", "noise"])
def test_shape_blend_falls_back_to_the_target_mask_without_a_face(big_bundle_dir, face_rgb, mode):
    out, pipe = fake_swap(big_bundle_dir, "shape", face_rgb, face_rgb, mode=mode)
    old, _ = fake_swap(big_bundle_dir, "parsing", face_rgb, face_rgb, mode=mode)
    assert np.array_equal(out, old)
    assert pipe.blend_fallbacks == 1 and pipe.last_blend.startswith("parsing (fallback from shape")
    frames = list(pipe.swap_frames(face_rgb, [face_rgb, np.roll(face_rgb, 5, axis=1)]))
    assert pipe.blend_fallbacks == 2 and np.array_equal(frames[0], old)  # counted per frame


def test_face_mask_shape_equals_parsing_for_the_same_face(big_bundle_dir, face_rgb):
    pipe = SwapPipeline.from_bundle(big_bundle_dir)
    assert pipe.blend == DEFAULT_BLEND == "shape" and set(BLENDS) == {"shape", "parsing", "crop", "model"}
    pts = pipe.align(face_rgb, "target", landmarks68=True).landmarks68
    assert np.array_equal(face_mask(pts, BIG, "shape", pts), face_mask(pts, BIG, "parsing"))
    assert np.array_equal(face_mask(pts, BIG, "shape"), face_mask(pts, BIG, "parsing"))  # no output landmarks
    with pytest.raises(ValueError, match="unknown blend"):
        SwapPipeline.from_bundle(big_bundle_dir, blend="target")
    with pytest.raises(ValueError, match="predicts no blend mask"):  # FlowFace++ has no mask of its own
        SwapPipeline.from_bundle(big_bundle_dir, blend="model")


def test_model_blend_is_the_generators_mask(tmp_path, face_rgb, source_rgb):
    """HifiFace blends with its own M_r by default: a mask of 0 leaves the target as it was, whatever I_out is."""
    arch = ARCHITECTURES["hififace"]
    gen = arch.generator(arch.config.tiny())
    with torch.no_grad():
        gen.net.out_head[-1].bias[3] = -100.0  # M_r = sigmoid(... - 100) = 0
    bundle = save_bundle(tmp_path / "hf", gen, align_size=ALIGN, template_scale=1.4, meta={}, detect=section("detect"))
    pipe = SwapPipeline.from_bundle(bundle)
    assert pipe.blend == "model"
    assert np.array_equal(pipe.swap_image(source_rgb, face_rgb), face_rgb)
    assert SwapPipeline.from_bundle(bundle, blend="shape").blend == "shape"  # the other blends still apply


def test_cli_blend_choices():
    from faceswap.serving.swap_cli import swap_parser

    action = next(a for a in swap_parser()._actions if a.dest == "blend")
    assert tuple(action.choices) == BLENDS and action.default is None  # None: the architecture's default_blend
    assert all(b in action.help for b in BLENDS)


# ------------------------------------------------------------------------------------ CLI
def test_cli_swap_image_and_verify(tmp_path, bundle_dir, face_rgb, source_rgb, capsys):
    src, tgt = write_rgb(tmp_path / "a.jpg", source_rgb), write_rgb(tmp_path / "b.png", face_rgb)
    for suffix in ("jpg", "png"):
        out = tmp_path / f"out.{suffix}"
        assert main(["swap", "--model", str(bundle_dir), "--source", str(src), "--target", str(tgt),
                     "-o", str(out)]) == 0
        img = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
        assert img.shape == face_rgb.shape
        found, _, payload = wm.detect(img)
        assert found and wm.describe_payload(payload).startswith("faceswap-pipeline ")
        assert wm.read_metadata(str(out)).startswith("generated by faceswap-pipeline ")
        assert str(bundle_dir) in wm.read_metadata(str(out))
        capsys.readouterr()
        assert main(["verify", str(out)]) == 0
        assert "MARKED" in capsys.readouterr().out
    assert main(["verify", str(tgt)]) == 1
    assert "not marked" in capsys.readouterr().out


def test_cli_swap_video(tmp_path, bundle_dir, face_rgb, source_rgb, capsys):
    src = write_rgb(tmp_path / "a.jpg", source_rgb)
    clip = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (256, 256))
    small = cv2.resize(face_rgb, (256, 256), interpolation=cv2.INTER_AREA)
    for k in range(4):
        w.write(cv2.cvtColor(np.roll(small, 3 * k, axis=1), cv2.COLOR_RGB2BGR))
    w.release()
    out = tmp_path / "out.avi"
    assert main(["swap", "--model", str(bundle_dir), "--source", str(src), "--target", str(clip), "-o", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "4 frames, 0 without a face" in msg
    cap = cv2.VideoCapture(str(out))
    frames = []
    while (ok_frame := cap.read())[0]:
        frames.append(ok_frame[1])
    cap.release()
    assert len(frames) == 4 and frames[0].shape == (256, 256, 3)
    assert all(wm.detect(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)).found for f in frames)
    if "audio dropped" in msg:
        assert (tmp_path / "out.avi.provenance.json").is_file()
    assert main(["verify", str(out)]) == 0
    assert main(["verify", str(clip)]) == 1


def test_cli_errors(tmp_path, bundle_dir, face_rgb, capsys):
    good = write_rgb(tmp_path / "a.png", face_rgb)
    blank = write_rgb(tmp_path / "blank.png", np.full((120, 120, 3), 200, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    cases = [
        (["--model", str(tmp_path / "nope")], "no such bundle directory"),
        (["--model", str(tmp_path)], "no swap-model bundle"),
        (["--model", "models:/fs@champion", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], "does not exist"),
        (["--model", str(bundle_dir), "--source", str(blank)], "no face in source image"),
        (["--model", str(bundle_dir), "--target", str(blank)], "no face in target image"),
        (["--model", str(bundle_dir), "--source", str(broken)], "source file .* is unreadable"),
        (["--model", str(bundle_dir), "--target", str(tmp_path / "missing.jpg")], "target file .* does not exist"),
        (["--model", str(bundle_dir), "-o", str(tmp_path / "out.gif")], "must end in one of"),
    ]
    import re

    for extra, pattern in cases:
        args = {"--source": str(good), "--target": str(good), "-o": str(tmp_path / "out.jpg")}
        for k, v in zip(extra[::2], extra[1::2]):
            args[k] = v
        argv = ["swap"] + [x for kv in args.items() for x in kv]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert main(["verify", str(tmp_path / "missing.png")]) == 2


def test_cli_registered_model_alias(tmp_path, bundle_dir, face_rgb, capsys):
    """models:/<name>@<alias> resolves through the registry; an unknown alias lists those that exist."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.create_experiment("inference-test", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
    client = MlflowClient(uri, uri)
    client.create_registered_model("fs")
    version = client.create_model_version("fs", f"{run.info.artifact_uri}/bundle", run_id=run.info.run_id)
    client.set_registered_model_alias("fs", "champion", version.version)
    src = write_rgb(tmp_path / "a.png", face_rgb)
    base = ["swap", "--source", str(src), "--target", str(src), "-o", str(tmp_path / "o.png"), "--tracking-uri", uri]
    assert main(base + ["--model", "models:/fs@champion"]) == 0
    assert "models:/fs@champion" in wm.read_metadata(str(tmp_path / "o.png"))
    capsys.readouterr()
    assert main(base + ["--model", "models:/fs@production"]) == 2
    assert "no alias 'production'; its aliases: champion (v1)" in capsys.readouterr().err
    assert main(base + ["--model", "models:/other@champion"]) == 2
    assert "no registered model 'other'" in capsys.readouterr().err


def test_pipeline_runs_the_generator_as_trained(tmp_path):
    """The pipeline (CLI, pyfunc, evaluate's blended output) computes exactly SwapGenerator.forward,
    including the target's inner-face low-pass and the decoder's skip images (before session 9 it
    encoded the raw target and skipped the low-pass of models trained with one)."""
    import dataclasses

    cfg = SwapConfig.tiny()
    cfg = dataclasses.replace(cfg, target_face_lowpass=4,
                              decoder=dataclasses.replace(cfg.decoder, skip=["source", "target"]))
    torch.manual_seed(0)
    g = SwapGenerator(cfg)
    for p in g.decoder.skips.parameters():  # skip branches non-zero, as after training
        torch.nn.init.normal_(p, std=0.1)
    pipe = SwapPipeline.from_bundle(save_bundle(tmp_path / "swap", g, align_size=ALIGN, template_scale=1.4, detect=section("detect")))
    rng = np.random.default_rng(1)
    s, t = (pipe.to_tensor(rng.integers(0, 256, (3, ALIGN, ALIGN, 3), dtype=np.uint8)) for _ in range(2))
    with torch.no_grad():
        ref = pipe.generator(s, t)
        plain = pipe.generator.decoder(pipe.generator.fusion(pipe.generator.encode(s), pipe.generator.encode(t)),
                                       torch.cat([s, t], 1))  # the raw target, no low-pass
    torch.testing.assert_close(pipe.swap_aligned(s, t), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe.swap_aligned(s[:1], t)[0], ref[0], atol=1e-5, rtol=0)
    assert (plain - ref).abs().max() > 1e-3  # the low-pass matters for this model
