"""Gates: bounds on a nested metrics dict (eval.json, or the in-training validator's val scores in the
same shape). A bound is a number or an expression on the dict ("path", "k * path", "path + c"); the
registry promotes a model only when every gate passes, and train_swap keeps the val snapshot that
passes most of them."""
from __future__ import annotations

import math
import re
from typing import Any

_NUM = r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"
_BOUND = re.compile(rf"^\s*(?:(?P<k>{_NUM})\s*\*\s*)?(?P<path>[A-Za-z_][\w.]*)\s*"
                    rf"(?:(?P<sign>[-+])\s*(?P<c>{_NUM}))?\s*$")


def is_bound_expression(text: str) -> bool:
    """Whether `text` is a bound expression resolve_bound understands."""
    return _BOUND.match(text) is not None


def resolve_bound(metrics: dict, bound: float | int | str) -> float:
    """A gate bound's value: a number, or `[k *] path [± c]` evaluated on eval.json (KeyError if missing)."""
    if not isinstance(bound, str):
        return float(bound)
    m = _BOUND.match(bound)
    if m is None:
        raise KeyError(f"bound {bound!r} is not 'path', 'k * path', 'path + c' or 'k * path - c'")
    v = float(m["k"] or 1.0) * lookup(metrics, m["path"])
    if m["c"]:
        v += float(m["c"]) if m["sign"] == "+" else -float(m["c"])
    return v


def lookup(metrics: dict, path: str) -> float:
    """Value at dotted `path` of a nested dict as float; KeyError names the missing part."""
    node: Any = metrics
    for i, part in enumerate(path.split(".")):
        if not isinstance(node, dict) or part not in node:
            have = sorted(node) if isinstance(node, dict) else type(node).__name__
            raise KeyError(f"metric {path!r}: no key {part!r} at {'.'.join(path.split('.')[:i]) or 'top level'} "
                           f"(have {have})")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise KeyError(f"metric {path!r} is {node!r}, not a number")
    return float(node)


def check_gates(metrics: dict, gates: dict[str, dict], primary_metric: str) -> list[dict]:
    """One result per bound: {metric, op, bound, value, limit, passed, shortfall, detail}. Missing or non-finite fails.

    The primary metric always gets an implicit `finite` gate (a model without it cannot be ranked).
    A bound list gives one result per bound; a failed bound's detail says by how much it failed.
    """
    results = []
    rules = [(primary_metric, "finite", None)] + [
        (m, op, b) for m, rule in gates.items() for op, bs in rule.items() for b in (bs if isinstance(bs, list) else [bs])]
    for metric, op, bound in rules:
        r = {"metric": metric, "op": op, "bound": bound, "value": None, "limit": None, "passed": False,
             "shortfall": None, "detail": ""}
        try:
            value = r["value"] = lookup(metrics, metric)
            limit = r["limit"] = None if bound is None else resolve_bound(metrics, bound)
        except KeyError as e:
            r["detail"] = str(e).strip('"')
            results.append(r)
            continue
        if not math.isfinite(value):
            r["detail"] = f"{metric} = {value} is not finite"
        elif op == "finite":
            r["passed"], r["detail"] = True, f"{metric} = {value:.6g}"
        elif not math.isfinite(limit):
            r["detail"] = f"bound {bound} = {limit} is not finite"
        else:
            r["passed"] = value >= limit if op == "min" else value <= limit
            sym = (">=" if op == "min" else "<=") if r["passed"] else ("<" if op == "min" else ">")
            named = f" ({bound})" if isinstance(bound, str) else ""
            r["detail"] = f"{metric} = {value:.6g} {sym} {limit:.6g}{named}"
            if not r["passed"]:
                r["shortfall"] = abs(value - limit)
                r["detail"] += f": {'short' if op == 'min' else 'over'} by {r['shortfall']:.4g}"
        results.append(r)
    return results
