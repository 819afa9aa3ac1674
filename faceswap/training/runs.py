"""Driver-side plumbing shared by the training stages (pretrain_mae, train_shape, train_swap).

`run_stage(...)`: resolve paths, pick the checkpoint folder `<checkpoint_root>/<stage>/<fingerprint>`
(a changed config or input starts a fresh run; the same one resumes), open the stage's MLflow run,
run the workers (Ray or in-process), then write the DVC metrics JSON, the per-step plots CSV and
upload the final weights + plots to MLflow.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from faceswap import artifacts
from faceswap.core.cli import write_metrics
from faceswap.core.io import absolute_tracking_uri, atomic_write_text, fingerprint, sha256_file
from faceswap.core.layout import DATA, DataLayout
from faceswap.data.records import FaceRecords
from faceswap.training import tracking
from faceswap.training.config import TrainConfig
from faceswap.training.loop import METRICS_FILE, load_best_state
from faceswap.training.ray_runner import WorkerFn, run_workers
from faceswap.training.validation import GateSelector, PartValidator, SwapValidator
from faceswap_models.architectures import architecture

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPaths:
    """The prepared tables every training stage reads (absolute paths once resolved)."""

    aligned: str
    aligned_dir: str
    segments: str
    parsing_dir: str
    threedmm: str
    threedmm_model: str
    splits: str

    @classmethod
    def of(cls, layout: DataLayout = DATA) -> DataPaths:
        """The tables of a data folder laid out as the data stages write it."""
        return cls(**{f.name: str(getattr(layout, f.name)) for f in dataclasses.fields(cls)})

    def resolved(self) -> DataPaths:
        return DataPaths(**{k: str(Path(v).resolve()) for k, v in dataclasses.asdict(self).items()})

    def records(self, split: str | None = "train") -> FaceRecords:
        return FaceRecords.load(self.aligned, self.aligned_dir, self.segments, self.parsing_dir, self.threedmm,
                                self.splits, split=split)

    def fingerprint(self) -> str:
        """Content hash of the tables (crops are content-addressed by the tables' sha256 column)."""
        return fingerprint(*(sha256_file(p) for p in (self.aligned, self.segments, self.threedmm,
                                                      self.threedmm_model, self.splits)))


def add_data_args(p: argparse.ArgumentParser) -> None:
    for name, default in dataclasses.asdict(DataPaths.of()).items():
        p.add_argument("--" + name.replace("_", "-"), default=default, help=f"(default: {default})")
    p.add_argument("--checkpoint-root", default=None, help="override train.checkpoint_root")


def data_paths(args: argparse.Namespace) -> DataPaths:
    return DataPaths(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataPaths)}).resolved()


def write_plots(jsonl: Path, out_csv: str | os.PathLike) -> list[dict[str, Any]]:
    """Per-step metrics JSONL -> CSV for `dvc plots` (columns: step, every logged key)."""
    rows = [json.loads(ln) for ln in jsonl.read_text("utf-8").splitlines() if ln.strip()] if jsonl.is_file() else []
    keys = ["step"] + sorted({k for r in rows for k in r} - {"step"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in keys})
    atomic_write_text(out_csv, buf.getvalue())
    return rows


def run_key(cfg: Any, train_cfg: TrainConfig, data: DataPaths, **inputs: Any) -> dict[str, Any]:
    """What a run's checkpoints depend on (their folder is named by its hash). `steps` is left out,
    so raising a stage's steps continues the finished run instead of starting again."""
    stage = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "steps"}
    loop = {k: v for k, v in dataclasses.asdict(train_cfg.loop(steps=1, batch_size=1)).items()
            if k not in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                         "loader_workers")}
    return {"stage": stage, "loop": loop, "num_workers": train_cfg.num_workers, "data": data.fingerprint(),
            **inputs}


def _abs(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else path


def absolute_spec(spec: Mapping[str, Any], train_cfg: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """The worker spec and train config with every local path made absolute against this (the driver's)
    working directory: Ray workers run in another one (a relative `data/aligned.parquet` failed there).
    Covers the data tables, the stage config's `PATH_FIELDS` (weights files, cache dirs), the
    checkpoint root, the MLflow artifact root and a relative sqlite tracking URI. The run key is
    computed before this, so a checkpoint folder does not depend on where the repository lives."""
    out = dict(spec)
    if isinstance(out.get("data"), DataPaths):
        out["data"] = out["data"].resolved()
    cfg = out.get("cfg")
    fields = [f for f in getattr(cfg, "PATH_FIELDS", ()) if isinstance(getattr(cfg, f, None), str)]
    if fields:
        out["cfg"] = dataclasses.replace(cfg, **{f: _abs(getattr(cfg, f)) for f in fields})
    uri = train_cfg.tracking_uri
    train_cfg = dataclasses.replace(
        train_cfg, checkpoint_root=_abs(train_cfg.checkpoint_root),
        mlflow_artifact_root=(train_cfg.mlflow_artifact_root if "://" in train_cfg.mlflow_artifact_root
                              else _abs(train_cfg.mlflow_artifact_root)),
        mlflow_tracking_uri=absolute_tracking_uri(uri) if uri else uri)
    return out, train_cfg


def run_stage(stage: str, *, entry: WorkerFn, spec: dict[str, Any], train_cfg: TrainConfig, key: Mapping[str, Any],
              out_dir: str | os.PathLike, metrics_path: str | None,
              plots_path: str | None) -> dict[str, Any]:
    """Run a training stage end to end (see module docstring); returns the metrics written."""
    params = {stage: dataclasses.asdict(spec["cfg"]), "train": dataclasses.asdict(train_cfg)}
    spec, train_cfg = absolute_spec(spec, train_cfg)
    ckpt_dir = (Path(train_cfg.checkpoint_root) / stage / fingerprint(stage, sorted(key.items()))).resolve()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(stage, tracking_uri=train_cfg.tracking_uri, experiment=train_cfg.mlflow_experiment,
                            artifact_root=train_cfg.mlflow_artifact_root, params=params) as run:
        full_spec = {**spec, "ckpt_dir": str(ckpt_dir), "run": run, "out_dir": str(Path(out_dir).resolve()),
                     "train": train_cfg}
        result = run_workers(entry, full_spec, train_cfg, name=f"{stage}-{ckpt_dir.name}", result_dir=ckpt_dir)
        rows = write_plots(ckpt_dir / METRICS_FILE, plots_path) if plots_path else []
        metrics = {**result, "checkpoint_dir": str(ckpt_dir), "logged_steps": len(rows)}
        if run is not None:
            tracking.log_final_metrics(run, {k: v for k, v in result.items() if isinstance(v, (int, float))},
                                       int(result.get("steps", 0)))
            tracking.log_artifacts(run, out_dir, "model")
            if plots_path:
                tracking.log_artifacts(run, plots_path, "plots")
            metrics["mlflow_run_id"] = run.run_id
    write_metrics(metrics_path, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return metrics


# --------------------------------------------------------------------------- worker side
def worker_sink(spec: Mapping[str, Any], rank: int) -> Any:
    """The rank-0 MLflow sink (None on other ranks or when tracking is off)."""
    run = spec.get("run")
    return tracking.MlflowSink(run) if rank == 0 and run is not None else None


def averaged(module: Any, result: Any, name: str) -> Any:
    """A copy of `module` holding the EMA weights of `name` (the module itself when no EMA)."""
    ema = result.ema.get(name)
    return module if ema is None else ema.averaged_copy(module)


def loop_summary(result: Any) -> dict[str, Any]:
    """Numbers every stage reports (metrics JSON / MLflow 'final/*')."""
    return {"steps": result.steps, "resumed_from": result.start_step, "nonfinite_steps": result.nonfinite,
            "seconds": round(result.seconds, 3), "samples_per_s": round(result.samples_per_s, 3),
            **{k.replace("/", "_"): round(v, 6) for k, v in result.last.items()
               if k not in ("nonfinite", "samples_per_s")}}


def train_validated(spec: Mapping[str, Any], ctx: Any, task: Any, dataset: Any, desc: str, val_every: int,
                    build_validator: Callable[[], Any], build_select: Callable[[Any], Any] | None = None) -> Any:
    """`train_in_worker` with an in-training validator on rank 0 every `val_every` steps (0 = none).
    `build_validator()` makes it; a ValueError from it (e.g. a val split too small) is logged once and
    training goes on without. The validator's `close()`, if it has one, runs when the loop ends.
    `build_select(validator)`: the loop's `select` (which validated snapshot to keep), when validating."""
    validator = None
    if ctx.rank == 0 and val_every > 0:
        try:
            validator = build_validator()
        except ValueError as e:
            log.warning("%s: no in-training validation: %s", desc, e)
    try:
        select = build_select(validator) if validator is not None and build_select is not None else None
        return train_in_worker(spec, ctx, task, dataset, desc, validate=validator,
                               val_every=val_every if validator is not None else 0, select=select)
    finally:
        if hasattr(validator, "close"):
            validator.close()


def gate_selection(register: Any) -> dict[str, Any]:
    """What `export: best_val` ranks val snapshots by (it names the run too): the register section's gates."""
    return {"gates": register.gates, "primary_metric": register.primary_metric,
            "higher_is_better": register.higher_is_better}


def run_swap_stage(stage: str, *, entry: WorkerFn, cfg: Any, train_cfg: TrainConfig, data: DataPaths, register: Any,
                   out_dir: str | os.PathLike, metrics_path: str | None, plots_path: str | None,
                   init_bundle: str | os.PathLike | None = None, inputs: Mapping[str, Any] | None = None,
                   spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`run_stage` for a stage that exports a swap model: the run key holds `inputs` (hashes of what it reads),
    the init bundle's weights when fine-tuning and, with `export: best_val`, the gate selection; the worker
    spec gets cfg, data, key, select, the resolved init bundle and `spec`."""
    select = gate_selection(register)
    key = run_key(cfg, train_cfg, data, **(inputs or {}),
                  **({"init": sha256_file(artifacts.weights_file(init_bundle, artifacts.GENERATOR))} if init_bundle else {}),
                  **({"select": select} if cfg.export == "best_val" else {}))
    full = {"cfg": cfg, "data": data, "key": key, "select": select, **(spec or {})}
    if init_bundle is not None:
        full["init_bundle"] = str(Path(init_bundle).resolve())
    return run_stage(stage, entry=entry, spec=full, train_cfg=train_cfg, key=key, out_dir=out_dir,
                     metrics_path=metrics_path, plots_path=plots_path)


def load_init_part(model: Any, init_bundle: str | os.PathLike, stage: str, part: str = "net") -> None:
    """Fine-tuning: put the trained part `part` of `init_bundle` into `model` (ValueError when the bundle holds
    another architecture or a generator of another config)."""
    init = artifacts.load_bundle(init_bundle)
    if init.architecture.name != model.architecture:
        raise ValueError(f"init bundle {init_bundle}: a {init.architecture.title} bundle, {stage} needs a "
                         f"{architecture(model.architecture).title} one")
    if init.config != model.cfg:
        raise ValueError(f"init bundle {init_bundle}: its generator config differs from {stage}'s")
    getattr(model, part).load_state_dict(getattr(init.generator, part).state_dict())


def attach_net(model: Any, net: Any) -> None:
    """`PartValidator`'s attach for a model whose trained part is its `net` (FaceDancer, HifiFace)."""
    model.net = net


def part_validator_builder(spec: Mapping[str, Any], model: Any, attach: Callable[[Any, Any], None],
                           size: int | None = None) -> Callable[[], PartValidator]:
    """What `train_swap_model` builds the in-training val scorer with: `cfg.val_pairs` val pairs at `size`
    (default `cfg.image_size`) scoring a copy of `model` into which each validated snapshot is attached."""
    cfg, tcfg, data = spec["cfg"], spec["train"], spec["data"]

    def build() -> PartValidator:
        v = SwapValidator.from_records(data.records("val"), data.records("train"), data.threedmm_model,
                                       size or cfg.image_size, pairs=cfg.val_pairs, seed=tcfg.seed)
        return PartValidator(v, copy.deepcopy(model), attach)

    return build


def add_swap_stage_args(p: argparse.ArgumentParser, *, out_dir: str, what: str) -> None:
    """The options every swap-model stage CLI has besides the data tables: --out-dir, --plots, --init-bundle."""
    p.add_argument("--out-dir", default=out_dir, help=f"the {what} bundle folder")
    p.add_argument("--plots", default=None, help="per-step CSV for dvc plots")
    p.add_argument("--init-bundle", default=None, help=f"fine-tune from this {what} bundle dir")


def train_swap_model(spec: Mapping[str, Any], ctx: Any, task: Any, dataset: Any, desc: str,
                     build_validator: Callable[[], Any]) -> Any:
    """`train_validated` for a stage that exports a swap model: validation every `cfg.val_every` steps (none
    without `cfg.val_pairs`); with `cfg.export == "best_val"` the snapshots are ranked by the registry's gates
    on val (`spec["select"]`, from `gate_selection`)."""
    cfg, gate = spec["cfg"], spec["select"]
    select = ((lambda v: GateSelector(v, gate["gates"], gate["primary_metric"], gate["higher_is_better"]))
              if cfg.export == "best_val" else None)
    return train_validated(spec, ctx, task, dataset, desc, cfg.val_every if cfg.val_pairs > 0 else 0,
                           build_validator, select)


def exported_module(task: Any, result: Any, name: str, export: str) -> tuple[Any, int]:
    """(module `name` as the stage saves it, on CPU: its EMA weights, or with export "best_val" the selected
    val snapshot's when there is one; the step those weights are from)."""
    module = averaged(task.modules[name], result, name).cpu()
    if export == "best_val" and result.best is not None:
        module.load_state_dict(load_best_state(result.best))
        return module, result.best["step"]
    return module, result.steps


def train_in_worker(spec: Mapping[str, Any], ctx: Any, task: Any, dataset: Any, desc: str, **loop_kw: Any) -> Any:
    """The loop with the stage's spec (checkpoint folder, run key, rank-0 MLflow sink); returns LoopResult.
    `loop_kw` go to the loop (e.g. validate / val_every)."""
    from faceswap.training.loop import train

    cfg, tcfg = spec["cfg"], spec["train"]
    return train(task, dataset, tcfg.loop(steps=cfg.steps, batch_size=cfg.batch_size), ckpt_dir=spec["ckpt_dir"],
                 device=ctx.device, config=spec["key"], sink=worker_sink(spec, ctx.rank), desc=desc, **loop_kw)
