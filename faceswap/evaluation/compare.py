"""The architecture comparison table (`make compare`, docs/compare.md): every selected architecture
trained with one recipe on one dataset, evaluated by the same suite against the same gates.

Pure: it reads what evaluate / register / the training stages wrote (dicts, grid images) and returns
markdown, a flat metric dict and one figure; flows/compare.py runs the pipeline, gathers those files and
writes the outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

# (column title, dotted path into eval.json, format); the gate metrics and the realism substitute
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("detection", "model.detection_rate", "{:.2f}"),
    ("ID top-1", "model.id_top1", "{:.2f}"),
    ("ID margin", "model.id_margin", "{:+.3f}"),
    ("shape err", "model.shape_error", "{:.2f}"),
    ("expr. dev. err", "model.expression_deviation_error", "{:.2f}"),
    ("pose err (deg)", "model.pose_error_deg", "{:.1f}"),
    ("FID substitute", "model.fid_dlib_resnet128", "{:.3f}"),
)


@dataclass
class ArchitectureResult:
    """One architecture's measured outputs."""

    name: str
    title: str
    eval: Mapping[str, Any]  # metrics/eval/<name>.json
    train: Mapping[str, Mapping[str, Any]]  # metrics/train/<name>.json: {stage: its metrics}
    gates: list[Mapping[str, Any]]  # the register report's gate results
    parameters: int  # in the bundle's generator
    trained_parameters: int  # of those, the ones training updates (frozen encoders excluded)
    registered: Mapping[str, Any] = field(default_factory=dict)  # model_name, version, aliases_moved


def dotted(doc: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, Mapping) or part not in doc:
            return None
        doc = doc[part]
    return doc


def seconds_per_step(train: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per training stage: wall seconds of its loop / its steps (validation included)."""
    return {stage: float(m["seconds"]) / float(m["steps"]) for stage, m in train.items()
            if m.get("steps") and m.get("seconds") is not None}


def _fmt(fmt: str, v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)


def gate_summary(gates: list[Mapping[str, Any]]) -> str:
    """'pass' or 'FAIL: <metric> short by <x> ...' over the gates that have a bound."""
    bounded = [g for g in gates if g.get("op") != "finite"]
    failed = [g for g in gates if not g.get("passed")]
    if not failed:
        return f"pass ({len(bounded)}/{len(bounded)})"
    misses = "; ".join(f"{g['metric']} {g['op']} {g['limit']:.3g}: short by {_fmt('{:.3g}', g.get('shortfall'))}"
                       if isinstance(g.get("limit"), (int, float)) else f"{g['metric']}: no value"
                       for g in failed)
    return f"FAIL ({len(bounded) - len(failed)}/{len(bounded)}): {misses}"


def compare_markdown(results: list[ArchitectureResult], *, recipe: str, dataset: str) -> str:
    """The comparison table and, per architecture, training speed, size and the gate outcome."""
    head = "| architecture | " + " | ".join(c[0] for c in COLUMNS) + " | s/step | parameters (trained) | gate |"
    rows = [head, "|---|" + "---:|" * (len(COLUMNS) + 2) + "---|"]
    for r in results:
        sps = seconds_per_step(r.train)
        speed = " + ".join(f"{v:.2f}" for v in sps.values()) or "-"
        rows.append(f"| {r.title} | " + " | ".join(_fmt(f, dotted(r.eval, p)) for _, p, f in COLUMNS)
                    + f" | {speed} | {r.parameters / 1e6:.2f} M ({r.trained_parameters / 1e6:.2f} M) "
                    f"| {gate_summary(r.gates)} |")
    if results:  # the trivial baselines of the same evaluation (identical for every architecture)
        for base in ("copy_target", "paste_source"):
            b = {"model": dotted(results[0].eval, f"baselines.{base}") or {}}
            rows.append(f"| *{base}* | " + " | ".join(_fmt(f, dotted(b, p)) for _, p, f in COLUMNS)
                        + " | - | - | - |")
    lines = [f"Recipe: {recipe}. Data: {dataset}.", "", *rows, ""]
    for r in results:
        sps = seconds_per_step(r.train)
        stages = ", ".join(f"{s} {int(r.train[s]['steps'])} steps in {float(r.train[s]['seconds']):.0f} s "
                           f"({v:.2f} s/step)" for s, v in sps.items())
        reg = r.registered
        where = (f"registered as `models:/{reg['model_name']}/{reg['version']}` (aliases moved: "
                 f"{', '.join(reg.get('aliases_moved', [])) or 'none'})" if reg else "not registered")
        lines.append(f"- **{r.title}**: {stages}; {where}.")
        for g in r.gates:
            if not g.get("passed"):
                lines.append(f"  - gate miss: {g.get('detail')}")
    return "\n".join(lines) + "\n"


def compare_metrics(results: list[ArchitectureResult]) -> dict[str, float]:
    """Flat `<architecture>.<metric>` numbers for an MLflow run."""
    out: dict[str, float] = {}
    for r in results:
        for _, path, _ in COLUMNS:
            v = dotted(r.eval, path)
            if isinstance(v, (int, float)) and v == v:
                out[f"{r.name}.{path.split('.', 1)[1]}"] = float(v)
        for stage, v in seconds_per_step(r.train).items():
            out[f"{r.name}.{stage}.s_per_step"] = v
        out[f"{r.name}.parameters"] = float(r.parameters)
        out[f"{r.name}.gates_passed"] = float(all(g.get("passed") for g in r.gates))
    return out


def side_by_side(grids: Sequence[np.ndarray], cell: int = 128) -> np.ndarray:
    """One figure from the evaluate stage's grids of several architectures (same seeded test pairs, rows =
    pairs, columns source | target | outputs..., cell x cell each): source | target | each grid's outputs,
    in order. (R*cell, (2 + sum of output columns)*cell, 3) uint8; rows beyond the shortest grid dropped."""
    assert grids, "no grids"
    rows = min(g.shape[0] for g in grids)
    for g in grids:
        assert g.ndim == 3 and g.shape[1] % cell == 0 and g.shape[1] >= 3 * cell, f"not a grid of {cell} px cells"
    return np.concatenate([grids[0][:rows, :2 * cell]] + [g[:rows, 2 * cell:] for g in grids], axis=1)
