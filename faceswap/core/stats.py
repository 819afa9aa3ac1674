"""Statistics shared across layers (pure numpy)."""
from __future__ import annotations

import numpy as np


def variance_components(values: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """One-way random-effects ANOVA per measure, (N, K) x (N,) -> {"within_var", "between_var", "icc" (K,),
    "n0"}; NaN rows and identities with a single row are ignored.

    within_var = MSW (pooled within-identity variance, N - I degrees of freedom: unbiased for any number of
    faces per identity, unlike the plain std of deviations from each identity's mean, which is (n-1)/n too
    small); between_var = (MSB - MSW) / n0 with n0 = (N - sum n_i^2 / N) / (I - 1) the effective group size
    for unequal groups; icc = ICC(1) = between_var / (between_var + within_var), the ANOVA estimator
    (Shrout & Fleiss ICC(1,1), with n0 for unequal groups). The plug-in 1 - within / total variance is
    biased upwards when each identity has few faces."""
    values = np.asarray(values, np.float64)
    labels = np.asarray(labels)
    ok = np.isfinite(values).all(1)
    values, labels = values[ok], labels[ok]
    groups = [values[labels == lab] for lab in np.unique(labels)]
    groups = [g for g in groups if len(g) >= 2]
    n_i = np.array([len(g) for g in groups], np.float64)
    n, k = n_i.sum(), len(groups)
    if k < 2:
        nan = np.full(values.shape[1], np.nan)
        return {"within_var": nan, "between_var": nan, "icc": nan, "n0": float("nan")}
    grand = np.concatenate(groups).mean(0)
    msw = sum(((g - g.mean(0)) ** 2).sum(0) for g in groups) / (n - k)
    msb = sum(len(g) * (g.mean(0) - grand) ** 2 for g in groups) / (k - 1)
    n0 = (n - (n_i ** 2).sum() / n) / (k - 1)
    between = np.maximum((msb - msw) / n0, 0.0)
    return {"within_var": msw, "between_var": between, "icc": between / np.maximum(between + msw, 1e-18),
            "n0": float(n0)}
