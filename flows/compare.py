"""`make compare`: train, evaluate and register every architecture with the same recipe on the same data,
then write one comparison table to docs/compare.md and to an MLflow run.

    python -m flows.compare                      # all architectures of faceswap_models/architectures.py
    python -m flows.compare --only-table         # re-tabulate what the last run wrote

The run is `dvc exp run -S architectures=[...]` (the stages of dvc.yaml, cached as usual: models the
last `make demo` trained are reused) under one parent MLflow run; DVC applies the experiment to the
workspace, so params.yaml and dvc.lock afterwards hold the full set (`git checkout params.yaml dvc.lock`
returns to the default one). The table reads what evaluate / register / the training stages wrote.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from faceswap import artifacts
from faceswap import params as P
from faceswap.core.images import encode_image, read_rgb
from faceswap.core.io import atomic_write_bytes, atomic_write_text
from faceswap.core.layout import ModelOutputs
from faceswap.evaluation.compare import ArchitectureResult, compare_markdown, compare_metrics, side_by_side
from faceswap.training import tracking
from faceswap_models.architectures import ARCHITECTURES, architecture

DOC = Path("docs/compare.md")
FIGURE = Path("docs/compare_swaps.png")  # source | target | each architecture's raw and blended outputs
HEADER = """# Architectures compared

Written by `make compare` (flows/compare.py): every architecture in faceswap_models/architectures.py
trained by its own stages with the recipe of params.yaml on the same prepared data, evaluated by the
same `evaluate` stage (docs/evaluation.md) and gated by the same `register.gates` (docs/registry.md).
Each model is registered under its own name (`register.model_names`). s/step is the training loop's wall
time per step on this machine, in-training validation included (one number per training stage).
What the committed run shows and how it was measured: docs/experiments/2026-12-07-status-history.md "Issue 14".
"""


def load_json(path: Path) -> dict:
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def collect(name: str) -> ArchitectureResult:
    """One architecture's results from the files dvc.yaml's train@ / evaluate@ / register@ wrote."""
    out = ModelOutputs(name)
    bundle = artifacts.load_bundle(out.bundle)
    gen = bundle.generator
    register = load_json(out.register_report)
    return ArchitectureResult(
        name=name, title=architecture(name).title, eval=load_json(out.eval_metrics), train=load_json(out.train_metrics),
        gates=register.get("gates", []), parameters=sum(p.numel() for p in gen.parameters()),
        trained_parameters=_trained_parameters(gen),
        registered={k: register[k] for k in ("model_name", "version", "aliases_moved") if k in register})


def _trained_parameters(gen) -> int:
    """Parameters training updates: all but the frozen pretrained parts (FlowFace++'s MAE encoder, the
    identity network inside FaceShifter / FaceDancer / HifiFace, HifiFace's 3DMM regressor), which the
    generators build with requires_grad off."""
    return sum(p.numel() for p in gen.parameters() if p.requires_grad)


def run_pipeline(names: list[str], params_path: str) -> int:
    """`dvc exp run -S architectures=[...]` under one parent MLflow run named "compare"."""
    train = P.load(params_path).train
    return tracking.run_under_parent(["dvc", "exp", "run", "-S", f"architectures=[{','.join(names)}]"],
                                     tracking_uri=train.tracking_uri, experiment=train.mlflow_experiment,
                                     artifact_root=train.mlflow_artifact_root, run_name="compare")


def write_figure(names: list[str], figure: Path = FIGURE) -> Path | None:
    """docs/compare_swaps.png from the evaluate stage's grids (reports/eval/<name>_grid.png; the same seeded
    test pairs for every architecture); None when one is missing."""
    paths = [ModelOutputs(n).eval_grid for n in names]
    if not all(Path(p).is_file() for p in paths):
        return None
    atomic_write_bytes(figure, encode_image(side_by_side([read_rgb(p) for p in paths]), "png"))
    return figure


def write_outputs(results: list[ArchitectureResult], params_path: str, doc: Path = DOC) -> str:
    """docs/compare.md, docs/compare_swaps.png and one MLflow run ("compare-table") with the flat metrics,
    the table and the figure."""
    p = P.load(params_path)
    stages = [s for r in results for s in architecture(r.name).train_stages]
    recipe = ("params.yaml's training sections: " + ", ".join(
        f"{s} {getattr(p, s).steps} steps x batch {getattr(p, s).batch_size}" if hasattr(p, s)
        else f"{s} (no training loop)" for s in stages)
        + f"; {p.train.num_workers} Ray worker(s) x {p.train.threads_per_worker} threads, "
        + ("GPU" if p.train.use_gpu else "CPU"))
    dataset = (f"the pipeline's prepared data ({p.ingest.source} source"
               + (f", {p.ingest.demo_identities} identities x {p.ingest.demo_images_per_identity} images"
                  if p.ingest.source == "demo" else "") + "), test split of `split`")
    table = compare_markdown(results, recipe=recipe, dataset=dataset)
    figure = write_figure([r.name for r in results], doc.parent / FIGURE.name)
    columns = " | ".join(f"{r.title} raw, blended" for r in results)
    atomic_write_text(doc, HEADER + (f"Swaps: `{FIGURE.name}` (source | target | {columns}; the first test "
                                     "pairs of `evaluate`).\n" if figure else "") + "\n" + table)
    with tracking.stage_run("compare-table", tracking_uri=p.train.tracking_uri, experiment=p.train.mlflow_experiment,
                            artifact_root=p.train.mlflow_artifact_root,
                            params={"architectures": ",".join(r.name for r in results)}) as run:
        if run is not None:
            tracking.log_final_metrics(run, compare_metrics(results), 0)
            tracking.log_artifacts(run, doc)
            if figure is not None:
                tracking.log_artifacts(run, figure)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), help="(default: all)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--only-table", action="store_true", help="do not run the pipeline; tabulate its last outputs")
    a = ap.parse_args(argv)
    for name in a.architectures:
        architecture(name)  # unknown: ConfigError before any work
    if not a.only_table:
        code = run_pipeline(a.architectures, a.params)
        if code:
            print(f"compare: dvc exp run failed ({code})", file=sys.stderr)
            return code
    print(write_outputs([collect(n) for n in a.architectures], a.params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
