"""Swap inference pipeline and the `faceswap swap` / `faceswap verify` CLI with a tiny random bundle."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from faceswap_common import watermark as wm
from faceswap_common.cli import main
from faceswap_models.bundle import save_bundle
from faceswap_models.config import SwapConfig
from faceswap_models.inference import NoFaceError, SwapPipeline, paste_back
from faceswap_models.swap import SwapGenerator
from tests.imageutil import write_rgb

ALIGN = 64  # crop size of the tiny bundle (generator runs at 32 px)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "swap", SwapGenerator(SwapConfig.tiny()),
                       align_size=ALIGN, template_scale=1.4, meta={"note": "random weights"})


@pytest.fixture(scope="module")
def pipe(bundle_dir) -> SwapPipeline:
    return SwapPipeline.from_bundle(bundle_dir)


@pytest.fixture(scope="module")
def source_rgb(tiny_corpus) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(sorted(tiny_corpus.glob("id_002/000.*"))[0])), cv2.COLOR_BGR2RGB)


def blend_weight(pipe: SwapPipeline, target: np.ndarray) -> np.ndarray:
    """The pipeline's blend weight in target pixels, (H, W) in [0, 1]."""
    t = pipe.align(target, "target", landmarks68=True)
    ones = np.full((ALIGN, ALIGN, 3), 255, np.uint8)
    return paste_back(np.zeros_like(target), ones, t.matrix, pipe._mask(t))[..., 0] / 255.0


def test_swap_image_changes_face_only(pipe, face_rgb, source_rgb):
    target = face_rgb[:, 20:480]  # non-square target
    out = pipe.swap_image(source_rgb, target)
    assert out.shape == target.shape and out.dtype == np.uint8
    w = blend_weight(pipe, target)
    diff = np.abs(out.astype(int) - target).max(-1)
    assert (w == 0).mean() > 0.6  # background, hair, neck
    assert diff[w == 0].max() == 0  # untouched outside the mask
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
