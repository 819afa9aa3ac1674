"""The typed params tree: params.yaml loaded and validated once per entry point, passed down narrowly.

`load(path)` builds `Params` (one frozen config per section, each checked by faceswap.core.config:
unknown keys, missing keys and wrong types fail before any work). Every default lives in params.yaml:
section configs have none (tests/test_params_defaults.py); the network configs nested in the
training sections take the paper's value for a key params.yaml leaves out (their frozen `paper()`).
An entry point loads the tree once and hands each stage function only its own sections.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from faceswap.core.config import (
    AlignConfig, ConfigError, DetectConfig, FilterConfig, IngestConfig, PrepConfig, SegmentConfig, SplitConfig,
    ThreeDMMConfig, from_dict, load_params, parse_params,
)
from faceswap.evaluation.config import EvaluateConfig
from faceswap.serving.config import RegisterConfig, VideoConfig
from faceswap.training.config import (
    AuxStageConfig, FaceDancerStageConfig, FaceShifterStageConfig, HEARStageConfig, HifiFaceStageConfig, MAEStageConfig,
    ShapeStageConfig, SwapStageConfig, TrainConfig,
)


@dataclass(frozen=True)
class RetrainConfig:
    """retrain: the scheduled retraining flow."""

    architecture: str  # which registered model the flow fine-tunes (a key of register.model_names)
    source_root: str  # folder watched for new images
    cron: str
    from_scratch: bool  # false: fine-tune from the current champion
    min_new_images: int


@dataclass(frozen=True)
class Params:
    """Every section of params.yaml, typed."""

    architectures: list[str]  # the swap architectures dvc.yaml trains, evaluates and registers
    ingest: IngestConfig
    detect: DetectConfig
    prep: PrepConfig
    filter: FilterConfig
    align: AlignConfig
    segment: SegmentConfig
    threedmm: ThreeDMMConfig
    split: SplitConfig
    evaluate: EvaluateConfig
    train: TrainConfig
    pretrain_mae: MAEStageConfig
    train_aux: AuxStageConfig
    train_shape: ShapeStageConfig
    train_swap: SwapStageConfig
    train_faceshifter: FaceShifterStageConfig
    train_hearnet: HEARStageConfig
    train_facedancer: FaceDancerStageConfig
    train_hififace: HifiFaceStageConfig
    register: RegisterConfig
    retrain: RetrainConfig
    video: VideoConfig


def parse(raw: Mapping[str, Any], where: str) -> Params:
    """The tree of an already parsed params mapping (`where` names it in errors)."""
    return from_dict(Params, dict(raw), where)


def load(path: str | Path = "params.yaml") -> Params:
    return parse(load_params(path), str(path))


def training(path: str | Path, stage: str, checkpoint_root: str | None = None) -> tuple[Params, TrainConfig, Any]:
    """(the tree, its `train` section with checkpoint_root overridden when given, `stage`'s section)."""
    p = load(path)
    train = dataclasses.replace(p.train, checkpoint_root=checkpoint_root) if checkpoint_root else p.train
    return p, train, getattr(p, stage)


# --------------------------------------------------------------------------- recipe switch
TRAINING_SECTIONS = ("train", "pretrain_mae", "train_aux", "train_shape", "train_swap", "train_faceshifter",
                     "train_hearnet", "train_facedancer", "train_hififace")


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
    """`python -m faceswap.params --paper | --recipe FILE [--params params.yaml]`: replace the
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
    parse(parse_params(text, where), where)  # validated before anything is written
    atomic_write_text(a.params, text)
    print(f"{a.params}: training sections replaced by those of {src}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
