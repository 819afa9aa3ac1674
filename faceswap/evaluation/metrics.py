"""Evaluation metrics for face swapping: pure numpy functions (docs/evaluation.md).

Every function takes plain arrays, so each metric is tested on constructed cases where the answer
is known (tests/test_evaluate_metrics.py). Feature extractors (recognisers, Inception, 3DMM fits)
live in `faceswap.evaluation.features`; the stage that wires them is `stages/evaluate.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from faceswap.core.stats import variance_components  # noqa: F401  (re-exported)


def make_pairs(identities: Sequence[str], n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed seeded (source, target) index pairs with source identity != target identity.

    Sources cycle through a seeded permutation of all images (every image is a source about
    equally often); each target is drawn uniformly among images of other identities.
    Returns src (P,), tgt (P,) int arrays; raises ValueError with fewer than 2 identities.
    """
    ids = np.asarray([str(i) for i in identities])
    if len(np.unique(ids)) < 2:
        raise ValueError(f"make_pairs: need images of at least 2 identities, got {len(np.unique(ids))}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    src = np.resize(order, n_pairs)  # cycles when n_pairs > len(ids)
    tgt = np.empty(n_pairs, np.int64)
    for p, s in enumerate(src):
        others = np.flatnonzero(ids != ids[s])
        tgt[p] = others[rng.integers(len(others))]
    return src.astype(np.int64), tgt


def _ranks(dist: np.ndarray, true_col: np.ndarray) -> np.ndarray:
    """Rank (0 = nearest) of column true_col[q] in each row of dist (Q, C); inf distances rank last."""
    d_true = dist[np.arange(len(dist)), true_col]
    return (dist < d_true[:, None]).sum(1)


@dataclass(frozen=True)
class Retrieval:
    """Per-query nearest-identity results of one gallery mode."""

    rank: np.ndarray  # (Q,) rank of the true identity (0 = top-1); -1 where it cannot be scored
    predicted: np.ndarray  # (Q,) identity label of the nearest gallery entry

    def top_k(self, k: int) -> float:
        """Fraction of all queries whose true identity is among the k nearest (an unscorable
        query, rank -1, counts as a failure)."""
        return top_k_rate(self.rank, k)


def top_k_rate(rank: np.ndarray, k: int) -> float:
    """Fraction of queries with 0 <= rank < k; rank -1 (a miss: no face detected, or nothing to
    compare with) counts as a failure. NaN for no queries."""
    rank = np.asarray(rank)
    return float(((rank >= 0) & (rank < k)).mean()) if len(rank) else float("nan")


def chance_top_k(n_identities: int, k: int) -> float:
    """Top-k rate of a retrieval that guesses uniformly among n identities."""
    return min(k, n_identities) / n_identities if n_identities > 0 else float("nan")


def _exclusions(exclude: np.ndarray | None, n_query: int) -> np.ndarray:
    """exclude as (Q, K) gallery indices (-1 = none); accepts (Q,) or None."""
    if exclude is None:
        return np.full((n_query, 0), -1, np.int64)
    e = np.asarray(exclude, np.int64)
    return e[:, None] if e.ndim == 1 else e


def retrieve_all_images(query: np.ndarray, true_label: Sequence[str], gallery: np.ndarray,
                        gallery_labels: Sequence[str], exclude: np.ndarray | None = None) -> Retrieval:
    """Identity retrieval against every gallery image: an identity's distance to a query is the
    distance to its nearest image (so ranks are over identities, not images).

    Args:
        query: (Q, D) embeddings; true_label: (Q,) identity each query should retrieve.
        gallery: (G, D) embeddings; gallery_labels: (G,).
        exclude: (Q,) or (Q, K) gallery indices left out for each query (its source and target
            images), -1 for none.
    """
    labels = np.asarray([str(x) for x in gallery_labels])
    names, inv = np.unique(labels, return_inverse=True)
    d = _pairwise(query, gallery)  # (Q, G)
    ex = _exclusions(exclude, len(query))
    for col in ex.T:
        rows = np.flatnonzero(col >= 0)
        d[rows, col[rows]] = np.inf
    per_id = np.full((len(query), len(names)), np.inf)
    for k in range(len(names)):
        per_id[:, k] = d[:, inv == k].min(1)
    return _finish(per_id, names, true_label)


def retrieve_centres(query: np.ndarray, true_label: Sequence[str], gallery: np.ndarray,
                     gallery_labels: Sequence[str], exclude: np.ndarray | None = None) -> Retrieval:
    """Identity retrieval against per-identity centres (mean gallery embedding of an identity).

    With `exclude` ((Q,) or (Q, K) indices, -1 = none), each query's centres of the excluded images'
    identities are recomputed without them (leave-out); an identity left with no image has no
    centre for that query.
    """
    labels = np.asarray([str(x) for x in gallery_labels])
    names, inv = np.unique(labels, return_inverse=True)
    g = np.asarray(gallery, np.float64)
    sums = np.stack([g[inv == k].sum(0) for k in range(len(names))])  # (I, D)
    counts = np.bincount(inv, minlength=len(names)).astype(np.float64)  # (I,)
    q = np.asarray(query, np.float64)
    per_id = _pairwise(q, sums / counts[:, None])  # (Q, I)
    ex = _exclusions(exclude, len(query))
    for i in range(len(q)):
        left = sorted({int(j) for j in ex[i] if j >= 0})
        for k in {int(inv[j]) for j in left}:
            out = [j for j in left if inv[j] == k]
            n = counts[k] - len(out)
            per_id[i, k] = np.linalg.norm(q[i] - (sums[k] - g[out].sum(0)) / n) if n > 0 else np.inf
    return _finish(per_id, names, true_label)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (A, D) x (B, D) -> (A, B)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def _finish(per_id: np.ndarray, names: np.ndarray, true_label: Sequence[str]) -> Retrieval:
    col = {n: i for i, n in enumerate(names)}
    true_col = np.array([col.get(str(t), -1) for t in true_label])
    rank = np.full(len(per_id), -1)
    ok = (true_col >= 0) & np.isfinite(per_id[np.arange(len(per_id)), np.maximum(true_col, 0)])
    rank[ok] = _ranks(per_id[ok], true_col[ok])
    return Retrieval(rank=rank, predicted=names[per_id.argmin(1)] if len(names) else np.array([]))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (N, D) x (N, D) -> (N,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def id_margin(out: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """cos(out, source) - cos(out, target) per pair, (N, D) x3 -> (N,): > 0 when the output looks
    more like the source than like the target (paste-source scores 1 - cos(s, t), copy-target the
    negative of that)."""
    return cosine(out, source) - cosine(out, target)


def bootstrap_ci(x: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of x (resampling items with replacement); (nan, nan)
    for fewer than 2 items."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def coeff_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise L2 distance of coefficient vectors (N, K) x (N, K) -> (N,); NaN rows stay NaN."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def expression_geometry_error(out: np.ndarray, target: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """RMS over measures of (out - target) / scale: (N, K) x (N, K) x (K,) -> (N,); NaN rows stay NaN.
    With scale = the real faces' std per measure, 1 is one standard deviation of the data's expressions."""
    z = (np.asarray(out, np.float64) - np.asarray(target, np.float64)) / np.maximum(np.asarray(scale, np.float64), 1e-9)
    return np.sqrt(np.mean(z**2, axis=-1))


def identity_deviations(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-identity means of measures and the within-identity std: values (N, K), labels (N,) ->
    (means (N, K): each row's identity mean, NaN rows ignored; within_std (K,): std of values - means)."""
    values = np.asarray(values, np.float64)
    labels = np.asarray(labels)
    means = np.full_like(values, np.nan)
    for lab in np.unique(labels):
        rows = labels == lab
        ok = rows & np.isfinite(values).all(1)
        if ok.any():
            means[rows] = values[ok].mean(0)
    dev = values - means
    return means, np.nanstd(dev[np.isfinite(dev).all(1)], axis=0)


def expression_deviation_error(out: np.ndarray, out_identity_mean: np.ndarray, target: np.ndarray,
                               target_identity_mean: np.ndarray, within_std: np.ndarray) -> np.ndarray:
    """Identity-relative expression error: RMS over measures of ((out - mean of the identity out should
    be) - (target - mean of the target's identity)) / within-identity std; (N, K) x4 x (K,) -> (N,).
    Mouth, eye and brow geometry is mostly identity (ICC 0.5-0.9 on the demo corpus), so measuring the
    output against the target's raw geometry rewards keeping the target's identity; measured as a
    deviation from each person's own mean, an ideal swap (the source's geometry moved by the target's
    expression) scores 0, pasting the source scores its expression gap, copying the target its identity gap."""
    return expression_geometry_error(np.asarray(out, np.float64) - out_identity_mean,
                                     np.asarray(target, np.float64) - target_identity_mean, within_std)


def intraclass_correlation(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per measure, the share of the variance that lies between identities: 1 - within-identity
    variance / total variance, (N, K) x (N,) -> (K,); NaN rows ignored."""
    values = np.asarray(values, np.float64)
    _, within = identity_deviations(values, labels)
    ok = np.isfinite(values).all(1)
    return 1.0 - within**2 / np.maximum(values[ok].var(0), 1e-18)


def blend_deviation_errors(values: np.ndarray, labels: np.ndarray, src: np.ndarray, tgt: np.ndarray,
                           weights: dict[str, float | np.ndarray]) -> dict[str, float]:
    """Mean `expression_deviation_error` of outputs that are blends w * values[src] + (1 - w) * values[tgt]
    of the real measures (no image): what a swapper that knew its two inputs' measures exactly would
    score. values (N, K), labels (N,), src / tgt (P,) row indices; weights: name -> w (scalar or (K,)).
    w = 1 is paste_source, w = 0 copy_target, w = the ICC the shrinkage estimate of the ideal swap."""
    means, within = identity_deviations(values, labels)
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float64)
        blend = w * values[src] + (1.0 - w) * values[tgt]
        out[name] = nan_mean(expression_deviation_error(blend, means[src], values[tgt], means[tgt], within))
    return out


def jaw_shift(out: np.ndarray, source: np.ndarray, target: np.ndarray, min_gap: float,
              wider: bool = True) -> np.ndarray:
    """Share of the source-target jaw-width gap the output covers, (out - target) / (source - target),
    on pairs whose source is wider (`wider`; else narrower) than the target by more than `min_gap`
    (other pairs NaN): 0 = the target's contour, 1 = the source's. (N,) x3 -> (N,)."""
    out, source, target = (np.asarray(x, np.float64) for x in (out, source, target))
    gap = source - target
    use = gap > min_gap if wider else gap < -min_gap
    return np.where(use, (out - target) / np.where(use, gap, 1.0), np.nan)


def pose_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """L2 of the (yaw, pitch, roll) difference in degrees, angles wrapped to [-180, 180); (N, 3) -> (N,)."""
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64) + 180.0) % 360.0 - 180.0
    return np.linalg.norm(diff, axis=-1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al. 2017).

    Tr((S1 S2)^1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^1/2 S2 S1^1/2 (same spectrum), which stays real and stable when the
    covariances are singular (fewer samples than feature dimensions).
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^1/2
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (N, D), (M, D); needs N, M >= 2.

    With fewer samples than dimensions (e.g. 100 faces, 2048-d Inception features) it works in
    sample space: with centred A (N, D), B (M, D), Tr((S1 S2)^1/2) is the nuclear norm of
    B A^T / sqrt((N-1)(M-1)), exactly, at O(N M min(N, M)) instead of O(D^3).
    """
    a, b = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    n, m, d = len(a), len(b), a.shape[1]
    if n < 2 or m < 2:
        return float("nan")
    if min(n, m) >= d:
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    ac, bc = a - a.mean(0), b - b.mean(0)
    tr_covmean = np.linalg.svd(bc @ ac.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    diff = a.mean(0) - b.mean(0)
    tr1, tr2 = (ac**2).sum() / (n - 1), (bc**2).sum() / (m - 1)
    return float(max(0.0, diff @ diff + tr1 + tr2 - 2.0 * tr_covmean))


def nan_mean(x: np.ndarray) -> float | None:
    """Mean over finite values; None (JSON null) when there are none."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


def cross_identity_pairs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered (source, target) row pair whose identities differ: (P,), (P,) row indices."""
    labels = np.asarray(labels)
    s, t = np.nonzero(labels[:, None] != labels[None, :])
    return s, t


def blend_optimum(values: np.ndarray, labels: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Per measure, the blend weight w that minimises the mean squared identity-relative error of
    w * values[src] + (1 - w) * values[tgt] over the pairs (least squares, known only in hindsight), (K,).
    The error of one measure is w (s - t) - (mu_s - mu_t), so w = sum(a b) / sum(a^2), a = s - t,
    b = mu_s - mu_t."""
    means, _ = identity_deviations(values, labels)
    a = values[src] - values[tgt]
    b = means[src] - means[tgt]
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    return (a[ok] * b[ok]).sum(0) / np.maximum((a[ok] ** 2).sum(0), 1e-18)


def expression_report(values: np.ndarray, labels: np.ndarray, unit_px: float | None = None,
                      names: Sequence[str] | None = None) -> dict:
    """What the expression gate can ask of a set of real faces: per measure the ANOVA ICC and the
    within-person std (`variance_components`; in px too when `unit_px`, the measures' unit at the
    training size, is given), and over every ordered cross-identity pair the mean
    `expression_deviation_error` of blends of the real measures: paste_source (w = 1), copy_target
    (w = 0), w = each measure's ICC, and the least-squares optimum (`blend_optimum`, hindsight), with
    their ratios to paste_source. values (N, K) with NaN rows ignored, labels (N,)."""
    values = np.asarray(values, np.float64)
    labels = np.asarray(labels)
    ok = np.isfinite(values).all(1)
    values, labels = values[ok], labels[ok]
    names = list(names) if names is not None else [f"m{i}" for i in range(values.shape[1])]
    vc = variance_components(values, labels)
    src, tgt = cross_identity_pairs(labels)
    icc = np.clip(vc["icc"], 0.0, 1.0)
    w_opt = blend_optimum(values, labels, src, tgt)
    errors = blend_deviation_errors(values, labels, src, tgt, {
        "paste_source": 1.0, "copy_target": 0.0, "blend_icc": icc, "blend_optimal": w_opt})
    paste = errors["paste_source"]
    within = np.sqrt(vc["within_var"])
    out = {"faces": int(len(values)), "identities": int(len(np.unique(labels))), "pairs": int(len(src)),
           "icc_estimator": "one-way ANOVA ICC(1), n0 for unequal group sizes",
           "icc": dict(zip(names, np.round(vc["icc"], 4).tolist())), "icc_mean": float(np.mean(vc["icc"])),
           "icc_max": float(np.max(vc["icc"])),
           "within_std": dict(zip(names, np.round(within, 5).tolist())),
           "deviation_error": {k: round(float(v), 4) for k, v in errors.items()},
           "ratio_to_paste": {k: round(float(v / paste), 4) for k, v in errors.items()},
           "blend_optimal_w": dict(zip(names, np.round(w_opt, 3).tolist()))}
    if unit_px is not None:
        out["unit_px"] = round(float(unit_px), 3)
        out["within_std_px"] = dict(zip(names, np.round(within * unit_px, 3).tolist()))
    return out
