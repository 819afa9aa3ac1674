"""dvc.yaml's data paths are DataLayout's: one place names the data files."""
from pathlib import Path

import yaml

from faceswap.core.layout import DATA, DataLayout, ModelOutputs
from faceswap.training.runs import DataPaths

REPO = Path(__file__).resolve().parents[1]


ITEM = "flowfacepp"  # what a per-architecture (foreach) stage's ${item} is rendered with here


def _stage_paths(prefix: str) -> set[str]:
    """Every path starting with `prefix` in a dvc.yaml stage's cmd, deps, outs, metrics and plots (a foreach
    stage's `do` with ${item} = ITEM)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found: set[str] = set()
    for st in stages.values():
        st = st.get("do", st)
        words = " ".join(st["cmd"] if isinstance(st["cmd"], list) else [st["cmd"]]).split()
        entries = [e if isinstance(e, str) else next(iter(e))
                   for e in st.get("deps", []) + st.get("outs", []) + st.get("metrics", []) + st.get("plots", [])]
        found |= {w.replace("${item}", ITEM) for w in words + entries if w.startswith(prefix)}
    return found


def _dvc_data_paths() -> set[str]:
    return _stage_paths("data/")


def test_every_dvc_data_path_is_a_layout_path():
    known = {str(p) for p in DATA.paths().values()} | {str(DATA.eval_pairs(ITEM))}
    dvc = _dvc_data_paths()
    assert len(dvc) >= 13, dvc  # the data stages' tables, folders and model file
    assert dvc <= known, f"dvc.yaml names data paths DataLayout does not: {sorted(dvc - known)}"
    # and every file a stage writes is in the graph (the cache is the stages' own, not DVC's)
    assert known - dvc == {str(DATA.cache), str(DATA.eval_dir)}, sorted(known - dvc)


def test_the_per_architecture_stages_write_where_model_outputs_says():
    """train@, evaluate@ and register@ put one architecture's outputs at ModelOutputs' paths, which the
    stage CLIs' defaults, `make compare` and the retraining flow read."""
    out = ModelOutputs(ITEM)
    paths = _stage_paths("models/swap") | _stage_paths("metrics/") | _stage_paths("reports/")
    for p in (out.bundle, out.train_metrics, out.plots_dir, out.eval_metrics, out.eval_report, out.eval_grid,
              out.register_report):
        assert str(p) in paths, p


def test_layout_moves_with_its_root(tmp_path):
    lay = DataLayout(tmp_path / "d")
    assert all(p.parent == tmp_path / "d" for p in lay.paths().values())
    assert DataPaths.of(lay).aligned == str(tmp_path / "d" / "aligned.parquet")
