"""The register section: MLflow logging, the registered model and its champion gate; the swap's blend
choices; the video section (face tracking, smoothing, encoding). Kept free of heavy imports: the params
tree and the swap CLI's parser import it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faceswap.core.config import ConfigError
from faceswap.evaluation.gates import is_bound_expression

# How a swapped face is pasted back (faceswap/serving/inference.py). shape: union of the target's face and
# the generated face's parsing (keeps the new contour); parsing: the target's face parsing only (the new
# contour is cut to the old one); crop: the whole aligned square, feathered; model: the blend mask the
# generator predicts with its output (HifiFace's M_r), the default for the architectures that have one.
BLENDS = ("shape", "parsing", "crop", "model")
DEFAULT_BLEND = "shape"  # for the architectures without a mask of their own


@dataclass(frozen=True)
class RegisterConfig:
    """register: MLflow logging, registry version, champion gate."""

    tracking_uri: str  # $MLFLOW_TRACKING_URI wins when set
    artifact_root: str | None  # artifact location of a newly created experiment (None: MLflow default)
    experiment: str
    model_names: dict[str, str]  # architecture -> registered model name
    primary_metric: str  # dotted path into eval.json
    higher_is_better: bool
    # metric path -> {min: b} and/or {max: b}; b = a bound or a list of bounds (all must hold); a bound is
    # a number or an expression on a dotted path into eval.json: "path", "k * path", "path + c", "k * path - c"
    gates: dict[str, Any]
    lock_timeout_s: float
    requirements: str  # where pip pins are read from

    def model_name(self, architecture: str) -> str:
        """The registered model name of `architecture` (ConfigError when params name none)."""
        if architecture not in self.model_names:
            raise ConfigError(f"register.model_names has no entry for architecture {architecture!r} "
                              f"(it names {sorted(self.model_names)})")
        return self.model_names[architecture]

    def validate(self) -> None:
        if not isinstance(self.model_names, dict) or not all(
                isinstance(v, str) and v for v in self.model_names.values()):
            raise ConfigError("register.model_names must map architecture -> registered model name")
        if len(set(self.model_names.values())) != len(self.model_names):
            raise ConfigError("register.model_names: two architectures share a registered model name")
        if not isinstance(self.gates, dict):
            raise ConfigError("register.gates must be a mapping metric-path -> {min|max: value}")
        for metric, rule in self.gates.items():
            if not isinstance(rule, dict) or not rule or set(rule) - {"min", "max"}:
                raise ConfigError(f"register.gates.{metric}: expected {{min: v}} and/or {{max: v}}, got {rule!r}")
            for bounds in rule.values():
                for bound in bounds if isinstance(bounds, list) else [bounds]:
                    if isinstance(bound, bool) or not isinstance(bound, (int, float, str)) or (
                            isinstance(bound, str) and not is_bound_expression(bound)):
                        raise ConfigError(f"register.gates.{metric}: bound {bound!r} is not a number or an expression "
                                          "'path', 'k * path', 'path + c' or 'k * path - c'")


@dataclass(frozen=True)
class VideoConfig:
    """video: how `faceswap swap` follows the target face through a clip and encodes the result
    (faceswap/serving/video_faces.py, video_io.py). Lengths are in inter-ocular distances (iod) of the face."""

    track: bool  # false: run the detector on every frame (the photo path, frame by frame)
    detect_every: int  # with track: the detector runs every N frames; the 5 points are LK-tracked in between
    track_window: float  # Lucas-Kanade window side, iod (clamped to 9..61 px)
    max_track_error: float  # iod; a larger forward-backward error or drift from the detected shape re-detects
    smooth: bool  # One-Euro filter on the landmarks (5 for the alignment, 68 for the blend mask)
    min_cutoff: float  # One-Euro cutoff at rest, Hz (lower: steadier, more lag when slow)
    beta: float  # One-Euro speed coefficient, Hz per iod/s (higher: less lag when moving)
    d_cutoff: float  # One-Euro cutoff of the speed estimate, Hz
    crf: int  # libx264 constant rate factor of the output (.mp4 .m4v .mov .mkv); 0 lossless .. 51
    mpeg4_qscale: int  # MPEG-4 quantiser of the output (.avi); 1 best .. 31

    def validate(self) -> None:
        if self.detect_every < 1:
            raise ConfigError("video.detect_every must be >= 1")
        if not (self.track_window > 0 and self.max_track_error > 0):
            raise ConfigError("video.track_window and video.max_track_error must be > 0")
        if not (self.min_cutoff > 0 and self.d_cutoff > 0 and self.beta >= 0):
            raise ConfigError("video: min_cutoff and d_cutoff must be > 0, beta >= 0")
        if not 0 <= self.crf <= 51 or not 1 <= self.mpeg4_qscale <= 31:
            raise ConfigError("video: crf must be in 0..51 and mpeg4_qscale in 1..31")
