"""Prefect flow: scheduled retraining — new images -> data stages -> fine-tune -> evaluate -> register -> report.

1. Scan the source folder and compare it with data/manifest.parquet (relpath + size + mtime, then
   content hash): no new images -> a short report and an early stop.
2. Run the incremental data stages (the `prepare` flow's tasks, as a subflow) on the source folder,
   fitting new faces with the current 3DMM (not re-learning it: the reused aux / Dshape models need it).
3. Download the current champion's bundle (`models:/<register.model_names[retrain.architecture]>@champion`) and fine-tune
   from it (`from_scratch` or no champion yet: train from scratch).
4. Evaluate, register (faceswap/serving/registry.py: challenger always, champion only through the gate) and
   publish a markdown report artifact (`retrain-report`).

Training and evaluation are injectable functions (flow parameters `trainer`, `evaluator`), so tests
replace them with fast fakes and users with their own recipes:
    trainer(params, data_dir, models_dir, out_dir, init_bundle, metrics_path) -> dict
    evaluator(params, data_dir, bundle_dir, metrics_path) -> dict  (also writes metrics_path)

Serve on the cron schedule in params (`retrain.cron`) against a Prefect server (docs/registry.md):
    prefect server start            # terminal 1
    python -m flows.retrain         # terminal 2: serves deployment "retrain/nightly-retrain"
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from faceswap import params as P
from faceswap.core import config as C
from faceswap.core.cli import write_metrics
from faceswap.core.io import atomic_write_bytes, atomic_write_text, sha256_file
from faceswap.core.layout import DataLayout, ModelOutputs
from faceswap.core.schemas import MANIFEST, read_table
from flows.prepare import prepare


# --------------------------------------------------------------------------- default train / evaluate
def train_swap_stage(params: str, data_dir: Path, models_dir: Path, out_dir: Path, init_bundle: Path | None,
                     metrics_path: Path) -> dict:
    """Fine-tune Fswa with stages/train_swap.py (MAE, Dshape and aux models from `models_dir`), starting
    from `init_bundle` (the champion's bundle) when given, else from the stage's own initialisation.

    Relative paths are fine: the stage resolves its model folders and `run_stage` every path it hands
    to the Ray workers (whose working directory is not this one).
    """
    from faceswap.training.runs import DataPaths
    from stages import train_swap

    d, models = Path(data_dir), Path(models_dir)
    data = DataPaths.of(DataLayout(d))
    missing = [str(models / n) for n in ("mae", "shape", "aux") if not (models / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"retrain needs the upstream models {missing} (run `dvc repro train_shape` once)")
    init, note = (init_bundle, f"fine-tuned from {init_bundle}") if init_bundle else (None, "from scratch")
    if init is not None:
        why = train_swap.init_mismatch(init, models / "mae", P.load(params).train_swap)
        if why:  # e.g. params.yaml changed the architecture since the champion was trained
            init, note = None, f"from scratch: the champion cannot seed this run ({why})"
            print(f"retrain: {note}")
    m = train_swap.run(data, mae_dir=models / "mae", shape_dir=models / "shape", aux_dir=models / "aux",
                       out_dir=out_dir, params_path=params, metrics=str(metrics_path), init_bundle=init)
    return {**m, "init": note}


def train_architecture_stages(params: str, data_dir: Path, models_dir: Path, out_dir: Path, init_bundle: Path | None,
                              metrics_path: Path) -> dict:
    """Train `retrain.architecture` with its own stages (`faceswap train <architecture>`, in a subprocess: the
    console script sits above the flows), fine-tuning each from `init_bundle` when given. Upstream models are
    read where the stages' defaults put them (models/), so `models_dir` must be that folder."""
    import subprocess
    import sys

    arch = P.load(params).retrain.architecture
    if Path(models_dir).resolve() != Path("models").resolve():
        raise ValueError(f"retrain: the {arch} stages read upstream models from models/, not {models_dir}")
    d = DataLayout(data_dir)
    cmd = [sys.executable, "-m", "faceswap.cli", "train", arch, "--out-dir", str(out_dir), "--metrics", str(metrics_path),
           "--params", str(params), "--aligned", str(d.aligned), "--aligned-dir", str(d.aligned_dir),
           "--segments", str(d.segments), "--parsing-dir", str(d.parsing_dir), "--threedmm", str(d.threedmm),
           "--threedmm-model", str(d.threedmm_model), "--splits", str(d.splits),
           *(["--init-bundle", str(init_bundle)] if init_bundle else [])]
    subprocess.run(cmd, check=True)
    m = json.loads(Path(metrics_path).read_text("utf-8"))
    return {**m, "init": f"fine-tuned from {init_bundle}" if init_bundle else "from scratch"}


# the default trainer per architecture (retrain.architecture); FlowFace++ keeps its in-process trainer, which
# falls back to training from scratch when the champion's config no longer matches params.yaml
TRAINERS: dict[str, Callable[..., dict]] = {"flowfacepp": train_swap_stage}


def evaluate_stage(params: str, data_dir: Path, bundle_dir: Path, metrics_path: Path) -> dict:
    """stages/evaluate.py on the test split, through its command line (the same arguments as the
    dvc.yaml stage, so the flow follows the stage's interface); writes metrics_path (eval.json) and
    the grid / report into `reports/` beside the metrics folder."""
    from stages import evaluate

    d = DataLayout(data_dir)
    reports = Path(metrics_path).parent.parent / "reports"
    code = evaluate.main(["--params", str(params), "--model", str(bundle_dir), "--aligned", str(d.aligned),
                          "--aligned-dir", str(d.aligned_dir), "--splits", str(d.splits),
                          "--threedmm", str(d.threedmm), "--threedmm-model", str(d.threedmm_model),
                          "--out", str(d.eval_pairs(Path(bundle_dir).name)),
                          "--grid", str(reports / f"eval_{Path(bundle_dir).name}_grid.png"),
                          "--report", str(reports / f"eval_{Path(bundle_dir).name}.md"), "--metrics", str(metrics_path)])
    if code != 0:
        raise RuntimeError(f"stages.evaluate exited with {code}")
    return json.loads(Path(metrics_path).read_text("utf-8"))


# (params, data_dir, models_dir, out_dir, init_bundle, metrics_path) -> metrics
Trainer = Callable[[str, Path, Path, Path, "Path | None", Path], dict]
# (params, data_dir, bundle_dir, metrics_path) -> metrics (also written to metrics_path)
Evaluator = Callable[[str, Path, Path, Path], dict]


# --------------------------------------------------------------------------- tasks
@task
def scan_task(source_root: str, manifest: Path, extensions: list[str]) -> dict:
    """Image files under source_root whose content is not in the manifest yet."""
    from stages.ingest import iter_files

    root = Path(source_root)
    if not root.is_dir():
        raise FileNotFoundError(f"retrain source folder {root} is not a directory")
    known_keys: set[tuple[str, int, int]] = set()
    known_sha: set[str] = set()
    if Path(manifest).is_file():
        for r in read_table(manifest, MANIFEST).to_pylist():
            known_keys.add((r["relpath"], r["size"], r["mtime_ns"]))
            if r["sha256"]:
                known_sha.add(r["sha256"])
    files = list(iter_files(root, extensions))
    new = []
    for f in files:
        st = f.lstat()
        rel = f.relative_to(root).as_posix()
        if (rel, st.st_size, st.st_mtime_ns) in known_keys:
            continue  # unchanged since the last ingest: not re-read
        try:
            if sha256_file(f) in known_sha:
                continue  # renamed / touched, same content
        except OSError:
            pass  # unreadable: ingest will record it with a reason
        new.append(rel)
    return {"files": len(files), "new": new, "known": len(files) - len(new), "manifest": str(manifest)}


@task
def champion_bundle_task(params: str, dst: Path) -> dict:
    """Download the champion's bundle into dst; {"version": None} when there is no champion."""
    import mlflow

    from faceswap.serving import registry as R

    p = P.load(params)
    cfg, name = p.register, p.register.model_name(p.retrain.architecture)
    uri = R.resolve_tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return {"version": None, "bundle": None}
    champ = R.current_champion(mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), name)
    if champ is None:
        return {"version": None, "bundle": None}
    bundle = R.resolve_model(f"models:/{name}/{champ.version}", dst, uri)
    return {"version": int(champ.version), "bundle": str(bundle)}


@task
def train_task(trainer: Trainer, params: str, data_dir: Path, models_dir: Path, out_dir: Path,
               init_bundle: Path | None, metrics_path: Path) -> dict:
    """Train (or fine-tune) the swap model with the injected trainer."""
    m = trainer(params, data_dir, models_dir, out_dir, init_bundle, metrics_path)
    write_metrics(str(metrics_path), m)
    return m


@task
def evaluate_task(evaluator: Evaluator, params: str, data_dir: Path, bundle_dir: Path, metrics_path: Path) -> dict:
    """Evaluate the new bundle with the injected evaluator; eval.json must exist afterwards."""
    m = evaluator(params, data_dir, bundle_dir, metrics_path)
    if not Path(metrics_path).is_file():
        write_metrics(str(metrics_path), m)
    return m


@task
def register_task(params: str, bundle_dir: Path, eval_json: Path, data_dir: Path, metrics_dir: Path,
                  out: Path) -> dict:
    """stages/register.py: log, register, move challenger, gate champion."""
    from stages import register as R

    split = Path(metrics_dir) / "split.json"
    return R.run(P.load(params).register, bundle_dir, eval_json,
                 R.example_pair(DataLayout(data_dir).aligned, DataLayout(data_dir).aligned_dir),
                 out, params,
                 data_metrics=json.loads(split.read_text("utf-8")) if split.is_file() else None)


# --------------------------------------------------------------------------- report
def report_markdown(r: dict) -> str:
    """The retraining report: what arrived, how the model was trained, how it scored, what moved."""
    from faceswap.serving.registry import metrics_table

    scan = r["scan"]
    lines = ["# Retraining run", "", f"Source folder: `{r['source_root']}`: {scan['files']} image files, "
             f"{len(scan['new'])} new since the last manifest."]
    if r["status"] == "no_new_data":
        return "\n".join(lines + ["", "**No new images: stopped early** (nothing trained or registered).", ""])
    shown = ", ".join(f"`{p}`" for p in scan["new"][:10]) + (" ..." if len(scan["new"]) > 10 else "")
    prep = r["prepare"]
    lines += [f"New: {shown}", "", "## Data",
              f"- filter: {prep['filter']['accepted']} accepted, {prep['filter']['rejected']} rejected "
              f"({prep['filter']['inspected']} inspected this run)",
              f"- align: {prep['align']['aligned']} aligned ({prep['align']['warped']} warped this run)",
              *[f"- split {k}: {v['identities']} identities, {v['images']} images" for k, v in prep["split"].items()
                if isinstance(v, dict) and "identities" in v],
              ("- 3DMM: the current model, kept (new faces fitted with it: the aux regressor and Dshape were "
               "trained in its coefficient space)" if r.get("threedmm_kept") else "- 3DMM: learned from the data"),
              "", "## Training",
              f"- start: {'champion v' + str(r['champion']['version']) if r['champion']['version'] else 'no champion'}"
              f"; {r['train'].get('init', 'the trainer did not say how it started')}",
              *[f"- {k}: {v}" for k, v in r["train"].items() if k != "init" and isinstance(v, (int, float, str))],
              "", "## Evaluation", "", *metrics_table(r["eval"]), "",
              "## Registration", "",
              "| metric | rule | result | detail |", "|---|---|---|---|",
              *[f"| {g['metric']} | {g['op']} {'' if g['bound'] is None else g['bound']} | "
                f"{'pass' if g['passed'] else 'FAIL'} | {g['detail']} |" for g in r["register"]["gates"]], "",
              f"- registered: {r['register']['model_uri']} (run `{r['register']['run_id']}`)",
              f"- aliases moved: {', '.join(r['register']['aliases_moved'])}",
              f"- champion: v{r['register']['champion_version']} ({r['register']['reason']})", ""]
    return "\n".join(lines)


def effective_params(params_path: str, source_root: str, out: Path, keep_threedmm: Path | None = None) -> str:
    """params.yaml with ingest reading `source_root` as a folder source (the flow's own copy); with
    `keep_threedmm` (a copy of the current 3DMM), the threedmm stage fits new faces with that model
    instead of learning a new one."""
    params = C.load_params(params_path)
    params.setdefault("ingest", {}).update(source="folder", root=str(source_root))
    if keep_threedmm is not None:
        params.setdefault("threedmm", {}).update(backend="file", model_file=str(keep_threedmm))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, yaml.safe_dump(params, sort_keys=False))
    return str(out)


def keep_current_threedmm(threedmm: C.ThreeDMMConfig, data: Path) -> Path | None:
    """A copy of the current learned 3DMM (data/threedmm_model.npz) for this run, or None.

    The models retraining does not retrain (train_aux's regressor, Dshape) were trained in this
    model's coefficient space and with its number of contour points; a model re-learned from the
    new data would change both (a new identity moves the mean face and so the contour), and the
    fine-tune would fail (Dshape: "expected (B, K, 2)") or silently mix two coefficient spaces.
    `dvc repro` re-learns it and retrains everything downstream."""
    current = DataLayout(data).threedmm_model
    if threedmm.backend != "learned" or not current.is_file():
        return None
    kept = DataLayout(data).cache / "retrain_threedmm_model.npz"
    kept.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(kept, current.read_bytes())
    return kept


@flow(name="retrain", log_prints=True)
def retrain(params_path: str = "params.yaml", source_root: str | None = None, from_scratch: bool | None = None,
            data_dir: str = "data", models_dir: str = "models", metrics_dir: str = "metrics",
            trainer: Trainer | None = None, evaluator: Evaluator | None = None) -> dict:
    """Retrain on newly arrived images; returns the run summary and publishes `retrain-report`.

    Args:
        source_root: folder to watch (default: params retrain.source_root).
        from_scratch: ignore the champion (default: params retrain.from_scratch).
        trainer, evaluator: functions as in the module docstring (default: the training stages of
            `retrain.architecture` and the evaluate stage), for custom recipes and tests.
    """
    p = P.load(params_path)
    cfg = p.retrain
    trainer = trainer or TRAINERS.get(cfg.architecture, train_architecture_stages)
    evaluator = evaluator or evaluate_stage
    out = ModelOutputs(cfg.architecture)
    bundle = Path(models_dir) / "swap" / cfg.architecture
    root = source_root or cfg.source_root
    scratch = cfg.from_scratch if from_scratch is None else from_scratch
    data, models, metrics = Path(data_dir), Path(models_dir), Path(metrics_dir)
    extensions = p.ingest.extensions
    r: dict[str, Any] = {"source_root": str(root), "scan": scan_task(str(root), DataLayout(data).manifest, extensions)}
    if len(r["scan"]["new"]) < cfg.min_new_images:
        r["status"] = "no_new_data"
    else:
        kept = keep_current_threedmm(p.threedmm, data)
        r["threedmm_kept"] = str(kept) if kept else None
        params = effective_params(params_path, root, DataLayout(data).cache / "retrain_params.yaml", kept)
        r["prepare"] = prepare(params, str(data), str(metrics))
        with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
            r["champion"] = {"version": None, "bundle": None} if scratch else champion_bundle_task(params, Path(tmp))
            init = Path(r["champion"]["bundle"]) if r["champion"]["bundle"] else None
            train_json = metrics / out.train_metrics.relative_to("metrics")
            train_json.parent.mkdir(parents=True, exist_ok=True)
            r["train"] = train_task(trainer, params, data, models, bundle, init, train_json)
        eval_json = metrics / out.eval_metrics.relative_to("metrics")
        eval_json.parent.mkdir(parents=True, exist_ok=True)  # the evaluator (maybe injected) writes it
        r["eval"] = evaluate_task(evaluator, params, data, bundle, eval_json)
        r["register"] = register_task(params, bundle, eval_json, data, metrics,
                                      metrics / out.register_report.relative_to("metrics"))
        r["status"] = "registered"
    create_markdown_artifact(key="retrain-report", markdown=report_markdown(r),
                             description="Retraining: new data, training start, evaluation, gate outcome")
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--once", action="store_true", help="run once now instead of serving on the cron schedule")
    a = p.parse_args(argv)
    if a.once:
        print(json.dumps(retrain(a.params), indent=1, default=str))
        return 0
    cron = P.load(a.params).retrain.cron
    retrain.serve(name="nightly-retrain", cron=cron, parameters={"params_path": a.params})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
