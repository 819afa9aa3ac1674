"""Does a 3DMM's coefficients mean something? Identity-grouped cross-validation for the threedmm stage
(docs/threedmm.md, "Validation on the corpus").

- `expression_cv`: do the expression coefficients linearly predict how a person's face-mesh expression
  measures (mouth opening, eye opening, brow height...) deviate from that person's usual? k folds over
  the sorted identities; per fold the model is learned on the training identities only (or a fixed
  user model is used), a linear regression from the within-person deviation of the expression
  coefficients to the within-person deviation of each measure is fitted on the training identities
  and scored on the held-out ones (pooled out-of-fold R^2).
- `shape_icc`: how much of the shape coefficients' variance is between identities (ANOVA ICC(1)).

Pure functions of arrays: no I/O, no torch.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator, Sequence

import numpy as np

from faceswap.core.stats import variance_components
from faceswap.faces.threedmm import LinearFaceModel, learn_model

CV_FOLDS = 5
MIN_CV_IDENTITIES = 4  # identities with >= 2 faces; fewer: the CV is skipped with a reason
RIDGE = 1e-6  # relative ridge of the regression (times the mean predictor variance): numerical safety only
TARGET = "within-person deviation of each mesh measure (measure minus that identity's mean)"
PREDICTORS = ("within-person deviation of the expression coefficients (psi minus that identity's mean psi), "
              "linear with intercept, fitted on the training identities")


def identity_folds(identities: Sequence[str], folds: int) -> np.ndarray:
    """(N,) fold index of each row: the sorted distinct identities dealt round-robin into `folds` folds."""
    ids = np.asarray([str(i) for i in identities])
    labels, inv = np.unique(ids, return_inverse=True)  # sorted
    return (np.arange(len(labels)) % folds)[inv]


def within_identity(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """values (N, K) minus the mean of their identity's rows, (N, K)."""
    values = np.asarray(values, np.float64)
    out = np.empty_like(values)
    for lab in np.unique(labels):
        rows = labels == lab
        out[rows] = values[rows] - values[rows].mean(0)
    return out


def shape_icc(shape: np.ndarray, labels: Sequence[str]) -> dict[str, float | None]:
    """ANOVA ICC(1) of each shape coefficient (`faceswap.core.stats.variance_components`): {"pooled": sum(between_var) /
    sum(between_var + within_var) (variance-weighted), "min", "median" over coefficients}; None where
    undefined (no coefficients, fewer than 2 identities with 2 faces)."""
    shape = np.asarray(shape, np.float64)
    none = {"pooled": None, "min": None, "median": None}
    if shape.ndim != 2 or shape.shape[1] == 0 or len(shape) < 3:
        return none
    vc = variance_components(shape, np.asarray([str(i) for i in labels]))
    between, within, icc = vc["between_var"], vc["within_var"], vc["icc"]
    total = float((between + within).sum())
    if not np.isfinite(icc).all() or total <= 0:
        return none
    return {"pooled": float(between.sum() / total), "min": float(icc.min()), "median": float(np.median(icc))}


def _evenly_spaced(idx: np.ndarray, max_n: int | None) -> np.ndarray:
    """At most max_n of idx, evenly spaced in their order (stages.threedmm.learning_sample on sorted rows)."""
    if max_n is None or len(idx) <= max_n:
        return idx
    step = len(idx) / max_n
    return idx[(np.arange(max_n) * step).astype(int)]


def _ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    """Least squares y ~ [1, x] @ w with a tiny ridge on the slopes, -> w (1 + P, K)."""
    a = np.column_stack([np.ones(len(x)), x])
    lhs = a.T @ a
    p = x.shape[1]
    if p:
        lam = ridge * max(float(np.trace(lhs[1:, 1:])) / p, 1e-12)
        lhs[1:, 1:] += lam * np.eye(p)
    return np.linalg.lstsq(lhs, a.T @ y, rcond=None)[0]


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(len(x)), x]) @ w


def _r2(y: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    """Per column 1 - SS_res / SS_tot, SS_tot about zero (y are within-person deviations, centred)."""
    ss_tot = (y**2).sum(0)
    ss_res = ((y - pred) ** 2).sum(0)
    return {n: (float(1 - r / t) if t > 0 else None) for n, r, t in zip(names, ss_res, ss_tot)}


@contextlib.contextmanager
def _quiet_learning() -> Iterator[None]:
    """Per-fold learn_model repeats the full-data model's basis-clamping warnings: keep them out of the log."""
    lg = logging.getLogger("faceswap.faces.threedmm")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def expression_cv(meshes: np.ndarray, identities: Sequence[str], measures: np.ndarray, names: Sequence[str],
                  n_shape: int, n_exp: int, *, model: LinearFaceModel | None = None, folds: int = CV_FOLDS,
                  max_learn_faces: int | None = None, min_identities: int = MIN_CV_IDENTITIES) -> dict:
    """Identity-grouped k-fold CV of the expression coefficients against per-face measures.

    meshes (N, 468, 3) landmarker points; identities (N,); measures (N, K) named `names` (e.g.
    `features.mesh_expression` of each mesh). `model` None: per fold, `learn_model(n_shape, n_exp)` on the
    training identities' meshes (at most `max_learn_faces`, evenly spaced in input order); else that fixed
    model in every fold (a user model file, not learned from these faces). Only identities with >= 2
    faces and finite measures take part. Every face of every identity is fitted with the fold's model;
    the regression (see PREDICTORS, TARGET) is fitted on the training identities and predicts the
    held-out ones. Returns the metrics dict: folds, identities, faces, target, predictors, model,
    r2 (pooled out-of-fold per measure), r2_raw_coefficients (the same from the uncentred psi),
    r2_train (mean in-fold R^2 over folds), shape_icc_pooled_oof (mean over folds of the held-out
    identities' pooled shape ICC) and skipped (None, or why r2 is None).
    """
    meshes = np.asarray(meshes)
    ids = np.asarray([str(i) for i in identities])
    measures = np.asarray(measures, np.float64)
    names = list(names)
    labels, counts = np.unique(ids, return_counts=True)
    keep = np.isin(ids, labels[counts >= 2]) & np.isfinite(measures).all(1)
    labels, counts = np.unique(ids[keep], return_counts=True)
    keep &= np.isin(ids, labels[counts >= 2])
    meshes, ids, measures = meshes[keep], ids[keep], measures[keep]
    n_id = len(np.unique(ids))
    k = min(folds, n_id)
    out: dict = {"folds": k, "identities": n_id, "faces": int(len(ids)), "target": TARGET, "predictors": PREDICTORS,
                 "model": "learned per fold from the training identities" if model is None
                 else "the fixed model file, the regression cross-validated",
                 "r2": None, "r2_raw_coefficients": None, "r2_train": None, "shape_icc_pooled_oof": None,
                 "skipped": None}
    if n_id < min_identities:
        out["skipped"] = f"{n_id} identities with >= 2 faces; the CV needs at least {min_identities}"
        return out
    fold = identity_folds(ids, k)
    y = within_identity(measures, ids)
    pred, pred_raw = np.zeros_like(y), np.zeros_like(y)
    train_r2, icc_oof = [], []
    fixed = None if model is None else [model.fit(m) for m in meshes]
    for f in range(k):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if fixed is None:
            sample = _evenly_spaced(train, max_learn_faces)
            with _quiet_learning():
                fold_model = learn_model(meshes[sample], ids[sample], n_shape, n_exp)
            fits = [fold_model.fit(m) for m in meshes]
        else:
            fits = fixed
        psi = np.stack([c.expression for c in fits]).reshape(len(fits), -1)
        dpsi = within_identity(psi, ids)
        dof = len(train) - len(np.unique(ids[train]))
        if dof < psi.shape[1] + 2:
            out["skipped"] = (f"fold {f}: {dof} within-person degrees of freedom on the training identities "
                              f"for {psi.shape[1]} expression coefficients")
            return out
        w = _ridge_fit(dpsi[train], y[train])
        pred[test] = _predict(w, dpsi[test])
        train_r2.append([np.nan if v is None else v for v in _r2(y[train], _predict(w, dpsi[train]), names).values()])
        w_raw = _ridge_fit(psi[train], y[train])
        pred_raw[test] = _predict(w_raw, psi[test])
        icc = shape_icc(np.stack([c.shape for c in fits])[test], ids[test])["pooled"]
        if icc is not None:
            icc_oof.append(icc)
    out["r2"] = _r2(y, pred, names)
    out["r2_raw_coefficients"] = _r2(y, pred_raw, names)
    with warnings.catch_warnings():  # a measure with no variance in any fold: None
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_train = np.nanmean(np.array(train_r2), 0)
    out["r2_train"] = {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, mean_train)}
    out["shape_icc_pooled_oof"] = float(np.mean(icc_oof)) if icc_oof else None
    return out
