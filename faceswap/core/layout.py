"""DataLayout: the one place the prepared data's file names live.

`DataLayout(root)` names every table, folder and model file the data stages write under `root`
(dvc.yaml's `data/...` paths are `DataLayout("data")`'s, checked by tests/test_layout.py). Stage CLIs
take their defaults from it; flows and the retraining flow build it for their own data folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLayout:
    root: Path = Path("data")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ingest / filter
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def filtered(self) -> Path:
        return self.root / "filtered.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    # align
    @property
    def aligned_dir(self) -> Path:
        return self.root / "aligned"

    @property
    def aligned(self) -> Path:
        return self.root / "aligned.parquet"

    @property
    def align_rejects(self) -> Path:
        return self.root / "align_rejects.parquet"

    # segment
    @property
    def parsing_dir(self) -> Path:
        return self.root / "parsing"

    @property
    def segments(self) -> Path:
        return self.root / "segments.parquet"

    # threedmm
    @property
    def mesh_dir(self) -> Path:
        return self.root / "meshes"

    @property
    def threedmm(self) -> Path:
        return self.root / "threedmm.parquet"

    @property
    def threedmm_model(self) -> Path:
        return self.root / "threedmm_model.npz"

    @property
    def threedmm_rejects(self) -> Path:
        return self.root / "threedmm_rejects.parquet"

    # split / evaluate
    @property
    def splits(self) -> Path:
        return self.root / "splits.parquet"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def eval_pairs(self, architecture: str) -> Path:
        """evaluate's per-pair table of one architecture's model."""
        return self.eval_dir / f"{architecture}_pairs.parquet"

    # incremental row caches (not DVC outputs)
    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def paths(self) -> dict[str, Path]:
        """Every named path: {"manifest": data/manifest.parquet, ...}."""
        return {k: getattr(self, k) for k, v in vars(type(self)).items() if isinstance(v, property)}


DATA = DataLayout()


@dataclass(frozen=True)
class ModelOutputs:
    """Where dvc.yaml's train / evaluate / register stages put one architecture's outputs (relative to
    the repository; checked by tests/test_layout.py)."""

    architecture: str

    @property
    def bundle(self) -> Path:
        return Path("models/swap") / self.architecture

    @property
    def train_metrics(self) -> Path:
        return Path("metrics/train") / f"{self.architecture}.json"

    @property
    def plots_dir(self) -> Path:
        return Path("metrics/train") / self.architecture

    @property
    def eval_metrics(self) -> Path:
        return Path("metrics/eval") / f"{self.architecture}.json"

    @property
    def eval_report(self) -> Path:
        return Path("reports/eval") / f"{self.architecture}.md"

    @property
    def eval_grid(self) -> Path:
        return Path("reports/eval") / f"{self.architecture}_grid.png"

    @property
    def register_report(self) -> Path:
        return Path("metrics/register") / f"{self.architecture}.json"
