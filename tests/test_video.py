"""Video the way users use it: PyAV in and out with the audio kept, faces tracked and smoothed
(One-Euro filter, Lucas-Kanade), and `--target-face` choosing among several faces."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from bench.swap import static_noisy_clip
from faceswap.artifacts import save_bundle
from faceswap.cli import main
from faceswap.faces.tracking import OneEuroFilter, track_points
from faceswap.serving import watermark as wm
from faceswap.serving.inference import SwapPipeline
from faceswap.serving.video_faces import FaceTrack
from faceswap.serving.video_io import EncoderQuality, VideoReader, transcode
from faceswap_models.architectures import ARCHITECTURES
from tests.imageutil import write_rgb
from paramsutil import section  # noqa: E402

FPS, SECONDS, RATE, TONE_HZ = 12, 1.0, 44100, 440.0
SIZE = 256


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    arch = ARCHITECTURES["flowfacepp"]
    return save_bundle(tmp_path_factory.mktemp("bundle") / arch.name, arch.generator(arch.config.tiny()),
                       align_size=64, template_scale=1.4, meta={"note": "random weights"}, detect=section("detect"))


@pytest.fixture(scope="module")
def face256(face_rgb) -> np.ndarray:
    return cv2.resize(face_rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    """A 440 Hz sine at half scale, (n,) float32."""
    return (0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def write_clip(path: Path, frames: list[np.ndarray], fps: int, audio_codec: str | None) -> Path:
    """Frames (H, W, 3) uint8 at `fps` + the tone for the clip's length on a mono audio track."""
    video_codec = "mpeg4" if path.suffix == ".avi" else "libx264"
    with av.open(str(path), "w") as c:
        v = c.add_stream(video_codec, rate=fps)
        v.width, v.height, v.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if video_codec == "libx264":
            v.options = {"crf": "10"}
        a = c.add_stream(audio_codec, rate=RATE) if audio_codec else None
        if a is not None:
            a.layout = "mono"
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            c.mux(v.encode(f))
        if a is not None:
            af = av.AudioFrame.from_ndarray(tone(len(frames) / fps)[None], format="fltp", layout="mono")
            af.sample_rate, af.pts = RATE, 0
            c.mux(a.encode(af))
            c.mux(a.encode(None))
        c.mux(v.encode(None))
    return path


def decode(path: Path) -> dict:
    """Frames, frame pts, fps, the audio stream's codec / rate and its samples (mono float64)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps, tb = v.average_rate, v.time_base
        frames, pts = [], []
        for f in c.decode(v):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
        out = {"frames": frames, "times": [float(p * tb) for p in pts], "fps": float(fps), "comment": None,
               "audio_codec": None}
        out["comment"] = c.metadata.get("comment") or c.metadata.get("COMMENT")
        if c.streams.audio:
            c.seek(0)
            a = c.streams.audio[0]
            out["audio_codec"], out["audio_rate"] = a.codec_context.name, a.rate
            samples = [f.to_ndarray().astype(np.float64).reshape(f.samples, -1)[:, 0] * (
                1 / 32768 if f.format.name.startswith("s16") else 1) for f in c.decode(a)]
            out["audio"] = np.concatenate(samples)
    return out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


# ------------------------------------------------------------------------------- PyAV in and out
@pytest.mark.parametrize("src_name,codec,out_suffix,expect", [
    ("clip.mp4", "aac", ".mp4", "copied aac"),
    ("clip.mkv", "flac", ".mp4", "copied flac"),
    ("clip.avi", "pcm_s16le", ".mp4", "re-encoded pcm_s16le -> aac"),
    ("clip.mp4", "aac", ".avi", "re-encoded aac -> pcm_s16le"),
])
def test_transcode_keeps_audio_rate_and_timestamps(tmp_path, face256, src_name, codec, out_suffix, expect):
    frames = [np.roll(face256, 4 * k, axis=1) for k in range(int(FPS * SECONDS))]
    clip = write_clip(tmp_path / src_name, frames, FPS, codec)
    out = tmp_path / f"out{out_suffix}"
    with VideoReader(clip) as src:
        r = transcode(src, out, lambda fr: (255 - rgb for _, rgb in fr), comment="hello",
                      quality=EncoderQuality(crf=18, qscale=3))
    a, b = decode(clip), decode(out)
    assert r == {"frames": len(frames), "audio": expect}
    assert len(b["frames"]) == len(frames) and b["fps"] == pytest.approx(FPS, rel=1e-3)
    assert np.allclose(b["times"], a["times"], atol=0.5 / FPS)  # each frame keeps its time
    assert np.abs(b["frames"][3].astype(int) - (255 - a["frames"][3])).mean() < 3  # the processed frame
    assert b["audio_rate"] == RATE and b["comment"] == "hello"
    if expect.startswith("copied"):
        assert b["audio_codec"] == codec and np.array_equal(a["audio"], b["audio"])  # packets copied
    else:
        assert correlation(a["audio"], b["audio"]) > 0.99
        assert abs(len(b["audio"]) - len(a["audio"])) < RATE / FPS


def test_cli_swap_video_keeps_audio_fps_duration_and_mark(tmp_path, bundle_dir, face256, capsys):
    n = int(FPS * SECONDS)
    clip = write_clip(tmp_path / "clip.mp4", [np.roll(face256, 2 * k, axis=1) for k in range(n)], FPS, "aac")
    src = write_rgb(tmp_path / "a.png", face256)
    out = tmp_path / "out.mp4"
    assert main(["swap", "--model", str(bundle_dir), "--source", str(src), "--target", str(clip), "-o", str(out)]) == 0
    assert f"{n} frames, 0 without a face" in capsys.readouterr().out
    a, b = decode(clip), decode(out)
    assert b["audio_codec"] == "aac" and b["audio_rate"] == RATE
    assert np.array_equal(a["audio"], b["audio"])  # the input's audio, sample for sample
    assert correlation(b["audio"], tone(SECONDS)) > 0.99  # the tone itself
    assert len(b["frames"]) == n and b["fps"] == pytest.approx(FPS)
    assert abs((b["times"][-1] - b["times"][0]) - (a["times"][-1] - a["times"][0])) < 1 / FPS
    assert all(wm.detect(f).found for f in b["frames"])
    assert b["comment"].startswith("generated by faceswap-pipeline ")
    assert main(["verify", str(out)]) == 0
    assert "MARKED" in (msg := capsys.readouterr().out) and "metadata: generated by faceswap-pipeline" in msg
    assert main(["verify", str(clip)]) == 1


def test_cli_max_frames_cuts_audio_too(tmp_path, bundle_dir, face256, capsys):
    clip = write_clip(tmp_path / "clip.mp4", [face256] * int(FPS * SECONDS), FPS, "aac")
    src = write_rgb(tmp_path / "a.png", face256)
    out = tmp_path / "out.mp4"
    assert main(["swap", "--model", str(bundle_dir), "--source", str(src), "--target", str(clip), "-o", str(out),
                 "--max-frames", "4"]) == 0
    b = decode(out)
    assert len(b["frames"]) == 4
    # packets are copied whole: the audio ends with the packet (1024 AAC samples) under the video's end
    assert 4 / FPS <= len(b["audio"]) / RATE <= 4 / FPS + 1024 / RATE


def test_bad_videos_give_a_reason(tmp_path, bundle_dir, face256, capsys):
    src = write_rgb(tmp_path / "a.png", face256)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    audio_only = tmp_path / "audio_only.mp4"
    with av.open(str(audio_only), "w") as c:
        a = c.add_stream("aac", rate=RATE)
        a.layout = "mono"
        af = av.AudioFrame.from_ndarray(tone(0.2)[None], format="fltp", layout="mono")
        af.sample_rate, af.pts = RATE, 0
        c.mux(a.encode(af))
        c.mux(a.encode(None))
    for target, reason in ((junk, "could not be opened as a video"), (audio_only, "has no video stream")):
        rc = main(["swap", "--model", str(bundle_dir), "--source", str(src), "--target", str(target),
                   "-o", str(tmp_path / "out.mp4")])
        assert rc == 2 and reason in capsys.readouterr().err
        assert main(["verify", str(target)]) == 2 and reason in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


# ------------------------------------------------------------------------------- smoothing and tracking
def jitter(xs: np.ndarray) -> float:
    """Mean frame-to-frame displacement of a (T, ...) sequence."""
    return float(np.abs(np.diff(xs, axis=0)).mean())


def run_filter(xs: np.ndarray, fps: float, scale: float, **knobs) -> np.ndarray:
    f = OneEuroFilter(**knobs)
    return np.stack([f(x, i / fps, scale) for i, x in enumerate(xs)])


KNOBS = dict(min_cutoff=1.0, beta=1.0, d_cutoff=1.0)  # params.yaml's video defaults (checked below)


def test_filter_knobs_are_params_defaults():
    v = section("video")
    assert dict(min_cutoff=v.min_cutoff, beta=v.beta, d_cutoff=v.d_cutoff) == KNOBS


def test_one_euro_removes_jitter_of_a_still_point():
    rng = np.random.default_rng(0)
    truth = np.array([[120.0, 80.0]] * 5)  # (5, 2) still landmarks
    xs = truth + rng.normal(0, 0.5, (300, 5, 2))  # 0.5 px noise, 30 fps
    ys = run_filter(xs, 30, scale=50.0, **KNOBS)
    assert jitter(xs) == pytest.approx(0.56, abs=0.03)  # E|N(0, 0.5) - N(0, 0.5)| = 1 / sqrt(pi)
    assert jitter(ys[30:]) < jitter(xs) / 6  # 1 Hz at 30 fps: alpha 0.17
    assert np.abs(ys[30:] - truth).mean() < 0.25  # and stays on the truth


def test_one_euro_follows_a_step_and_a_ramp_with_bounded_lag():
    fps, scale = 30.0, 50.0
    step = np.where(np.arange(90) < 30, 0.0, 25.0)[:, None]  # half an iod jump at frame 30
    ys = run_filter(step, fps, scale, **KNOBS)[:, 0]
    # the jump's speed (750 px/s, 130 px/s after the 1 Hz speed filter) opens the cutoff to 3.6 Hz at once:
    # 43 % of the step in the first frame, against 17 % for a plain 1 Hz low-pass (beta = 0)
    assert ys[29] == 0 and ys[30] == pytest.approx(25 * 0.43, abs=0.3)
    assert ys[30 + 6] > 24  # within 0.2 s (the plain 1 Hz low-pass: 18.4)
    assert run_filter(step, fps, scale, **{**KNOBS, "beta": 0.0})[36, 0] < 19
    v = 50.0  # px/s = 1 iod/s, steady motion
    ramp = (v * np.arange(120) / fps)[:, None]
    lag = (ramp - run_filter(ramp, fps, scale, **KNOBS))[60:, 0]
    # steady state of x̂ += alpha (x - x̂) on a ramp: lag e = v dt (1 / alpha - 1) = v tau, tau = 1 / (2 pi fc);
    # the speed the filter sees is (x_t - x̂_{t-1}) / dt = v (1 + tau / dt), so fc = min_cutoff + beta * that / scale
    fc = 1.0
    for _ in range(100):  # fixed point: fc = 3.40 Hz, lag 2.34 px
        fc = KNOBS["min_cutoff"] + KNOBS["beta"] * v * (1 + fps / (2 * np.pi * fc)) / scale
    assert np.ptp(lag) < 0.01 and lag.mean() == pytest.approx(v / (2 * np.pi * fc), rel=0.01)
    assert lag.mean() < v / (2 * np.pi * KNOBS["min_cutoff"]) / 3  # a third of a plain 1 Hz low-pass's 7.96 px


def test_lk_tracker_follows_a_translated_image(face_rgb):
    gray = cv2.cvtColor(face_rgb, cv2.COLOR_RGB2GRAY)
    pts = np.array([[205.0, 230], [285, 232], [246, 270], [215, 300], [280, 300]])  # eyes, nose, mouth
    shift = np.array([3.5, -2.25])
    moved = cv2.warpAffine(gray, np.array([[1, 0, shift[0]], [0, 1, shift[1]]]), gray.shape[::-1],
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    got = track_points(gray, moved, pts, window=31, max_error=1.0)
    assert got is not None and np.abs(got - (pts + shift)).max() < 0.2
    flat = np.full_like(gray, 128)  # nothing to follow: lost (forward-backward check)
    assert track_points(gray, flat, pts, window=31, max_error=1.0) is None


def test_face_track_detects_every_n_and_steadies_landmarks(bundle_dir, face256):
    pipe = SwapPipeline.from_bundle(bundle_dir)
    frames = static_noisy_clip(face256, 24)
    per_frame = FaceTrack(pipe.detector, section("video", track=False, smooth=False))
    tracked = FaceTrack(pipe.detector, section("video", detect_every=10))
    raw = np.stack([per_frame.locate(f, i / FPS).landmarks5 for i, f in enumerate(frames)])
    steady = np.stack([tracked.locate(f, i / FPS).landmarks5 for i, f in enumerate(frames)])
    assert per_frame.detections == 24 and per_frame.tracked == 0
    assert tracked.detections == 3 and tracked.tracked == 21  # frames 0, 10, 20 detected
    assert jitter(raw) > 0.05 and jitter(steady) < jitter(raw) / 3
    assert np.abs(steady.mean(0) - raw.mean(0)).max() < 1.0  # the same place


# ------------------------------------------------------------------------------- several faces
@pytest.fixture(scope="module")
def two_faces(face_rgb, tiny_corpus) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """A 512 x 768 photo: a demo-corpus face (smaller) on the left, the astronaut (larger) on the right;
    their columns (x0, x1)."""
    other = cv2.cvtColor(cv2.imread(str(sorted(tiny_corpus.glob("id_000/000.*"))[0])), cv2.COLOR_BGR2RGB)
    canvas = np.full((512, 768, 3), 200, np.uint8)
    canvas[128:384, :256] = cv2.resize(other, (256, 256), interpolation=cv2.INTER_AREA)
    canvas[:, 256:] = face_rgb
    return canvas, other, (0, 256), (256, 768)


@pytest.mark.parametrize("rule,changed", [("largest", "right"), ("0", "left"), ("1", "right"),
                                          ("ref_left", "left"), ("ref_right", "right")])
def test_target_face_chooses_the_swapped_face(tmp_path, bundle_dir, two_faces, face_rgb, tiny_corpus, rule, changed,
                                              capsys):
    canvas, other, left, right = two_faces
    tgt = write_rgb(tmp_path / "two.png", canvas)
    src = write_rgb(tmp_path / "src.png", cv2.cvtColor(cv2.imread(str(sorted(tiny_corpus.glob("id_002/000.*"))[0])),
                                                       cv2.COLOR_BGR2RGB))
    refs = {"ref_left": write_rgb(tmp_path / "ref_left.png", cv2.resize(other, (400, 400))),
            "ref_right": write_rgb(tmp_path / "ref_right.png", face_rgb[::2, ::2])}
    choice = str(refs.get(rule, rule))
    out = tmp_path / "out.png"
    assert main(["swap", "--model", str(bundle_dir), "--source", str(src), "--target", str(tgt), "-o", str(out),
                 "--target-face", choice]) == 0, capsys.readouterr().err
    diff = np.abs(cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB).astype(int) - canvas).max(-1)  # (H, W)
    faces = {"left": diff[:, left[0]:left[1]], "right": diff[:, right[0]:right[1]]}
    untouched = "left" if changed == "right" else "right"
    assert (faces[changed] > 10).mean() > 0.03  # the swap repainted a face there
    assert (faces[untouched] > 10).mean() < 0.001  # the watermark alone stays under 10 levels


def test_target_face_errors(tmp_path, bundle_dir, two_faces, capsys):
    tgt = write_rgb(tmp_path / "two.png", two_faces[0])
    base = ["swap", "--model", str(bundle_dir), "--source", str(tgt), "--target", str(tgt), "-o", str(tmp_path / "o.png")]
    assert main(base + ["--target-face", "2"]) == 2
    assert "asks for face 3 from the left, but 2 face(s) were found" in capsys.readouterr().err
    assert main(base + ["--target-face", str(tmp_path / "missing.jpg")]) == 2
    assert "neither 'largest', an index" in capsys.readouterr().err
