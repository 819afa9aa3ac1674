"""The expression gate on real corpus crops: can `expression_deviation_error` tell a right expression from
a wrong one on the data it is measured on?

The fixtures are the face-mesh measures of every aligned demo crop (`python -m bench.expression_ceiling
--dump-measures`, from the threedmm stage's meshes of a full `make demo`; in metrics/reference/): `expression_measures.csv` of the
current corpus and `expression_measures_v5.csv` of the corpus before expression offsets (version 5), on
which the gate could not ask anything — the last test shows the first ones fail there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceswap.evaluation import metrics as E
from stages.split import read_measures_csv

DATA = Path(__file__).parents[1] / "metrics" / "reference"


def _load(name: str) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(corpus version line, values (n, 7), identity (n,), split (n,))."""
    corpus, (values, _, labels, splits) = read_measures_csv(DATA / name)
    return "# " + corpus, values, labels, splits


@pytest.fixture(scope="module")
def corpus():
    return _load("expression_measures.csv")


def test_fixture_comes_from_the_current_corpus(corpus):
    from faceswap.data.demo_corpus import CORPUS_VERSION

    assert corpus[0] == f"# demo corpus version {CORPUS_VERSION}", "re-dump the fixture after a corpus change"
    _, values, labels, splits = corpus
    assert len(np.unique(labels)) == 64 and len(values) > 500
    assert {s: len(np.unique(labels[splits == s])) for s in ("train", "val", "test")} == {
        "train": 44, "val": 10, "test": 10}


def _test_split(corpus):
    _, values, labels, splits = corpus
    return values[splits == "test"], labels[splits == "test"]


def test_hindsight_optimal_blend_beats_paste_source_on_test(corpus):
    """What the gate asks (≤ paste_source) leaves room: the best blend of the real measures scores
    ≤ 0.8 × paste_source (on the old corpus it scored 0.90 ×, so pasting was nearly optimal)."""
    r = E.expression_report(*_test_split(corpus))
    assert r["ratio_to_paste"]["blend_optimal"] <= 0.8, r["ratio_to_paste"]


def test_copy_target_scores_below_paste_source(corpus):
    """With more expression than identity in the measures (ICC < 0.5), the target's own geometry is a
    better answer to "the target's expression" than the source's: copy_target < paste_source. (Before
    the expression corpus it was the other way round, 2.4 × paste on test; copy_target still fails the
    identity gate, which is where it must fail.)"""
    r = E.expression_report(*_test_split(corpus))
    assert r["deviation_error"]["copy_target"] < r["deviation_error"]["paste_source"], r["deviation_error"]


def _wrong_expression_error(values: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Over every cross-identity (source, target) pair: the mean error of pasting the source photo, of the
    source person's photo whose expression is farthest from the target's (right identity, wrong expression),
    and of the one nearest it (right identity, best available expression)."""
    means, within = E.identity_deviations(values, labels)
    dev = (values - means) / within  # each photo's expression, in within-person stds
    src, tgt = E.cross_identity_pairs(labels)
    paste = E.expression_deviation_error(values[src], means[src], values[tgt], means[tgt], within)
    worst, best = [], []
    for s, t in zip(src, tgt):
        own = np.nonzero(labels == labels[s])[0]
        gap = np.linalg.norm(dev[own] - dev[t], axis=1)
        worst.append(gap.max())
        best.append(gap.min())
    k = np.sqrt(values.shape[1])  # expression_deviation_error is an RMS over the measures
    return float(paste.mean()), float(np.mean(worst) / k), float(np.mean(best) / k)


def test_a_face_with_the_wrong_expression_fails_and_the_right_one_passes(corpus):
    """The gate (≤ paste_source) fails the source person's photo with the expression farthest from the
    target's and passes the photo with the nearest one: the metric follows expression, not identity."""
    paste, worst, best = _wrong_expression_error(*_test_split(corpus))
    assert worst > 1.2 * paste, (paste, worst)
    assert best < 0.8 * paste, (paste, best)


def test_on_the_old_corpus_these_checks_fail():
    """Version 5 (no expression offsets): the optimal blend is 0.90 × paste and copy_target 2.4 × paste —
    the checks above can fail, and did on the data the gate was measured on before."""
    old = _load("expression_measures_v5.csv")
    assert old[0] == "# demo corpus version 5"
    r = E.expression_report(*_test_split(old))
    assert r["ratio_to_paste"]["blend_optimal"] > 0.8
    assert r["deviation_error"]["copy_target"] > r["deviation_error"]["paste_source"]


def test_split_reports_the_corpus_before_from_its_dump_and_names_a_bad_one(tmp_path):
    """split.expression_before: the version-5 dump's figures with the same code (the ICCs that made the gate
    unable to ask anything), and a clear reason, never a crash, for a missing or malformed file."""
    from stages.split import reference_figures

    before = reference_figures(DATA / "expression_measures_v5.csv", 64)
    assert before["corpus"] == "demo corpus version 5" and before["pooled"]["identities"] == 64
    assert before["pooled"]["icc_mean"] > 0.7 and before["pooled"]["ratio_to_paste"]["copy_target"] > 2.0
    missing = reference_figures(tmp_path / "nope.csv", 64)
    assert "not read" in missing["note"] and "pooled" not in missing
    bad = tmp_path / "bad.csv"
    bad.write_text("# x\nidentity,split,unit,a\nid_0,train,0.3,1\n")
    assert "every row needs" in reference_figures(bad, 64)["note"]
    bad.write_text("hello\n")
    assert "not a crop-measure dump" in reference_figures(bad, 64)["note"]
