"""dvc.yaml's data paths are DataLayout's: one place names the data files."""
from pathlib import Path

import yaml

from faceswap.core.layout import DATA, DataLayout
from faceswap.training.runs import DataPaths

REPO = Path(__file__).resolve().parents[1]


def _dvc_data_paths() -> set[str]:
    """Every `data/...` path in a dvc.yaml stage's cmd, deps and outs."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found: set[str] = set()
    for st in stages.values():
        words = " ".join(st["cmd"] if isinstance(st["cmd"], list) else [st["cmd"]]).split()
        entries = [e if isinstance(e, str) else next(iter(e)) for e in st.get("deps", []) + st.get("outs", [])]
        found |= {w for w in words + entries if w.startswith("data/")}
    return found


def test_every_dvc_data_path_is_a_layout_path():
    known = {str(p) for p in DATA.paths().values()}
    dvc = _dvc_data_paths()
    assert len(dvc) >= 13, dvc  # the data stages' tables, folders and model file
    assert dvc <= known, f"dvc.yaml names data paths DataLayout does not: {sorted(dvc - known)}"
    # and every file a stage writes is in the graph (the cache is the stages' own, not DVC's)
    assert known - dvc == {str(DATA.cache)}, sorted(known - dvc)


def test_layout_moves_with_its_root(tmp_path):
    lay = DataLayout(tmp_path / "d")
    assert all(p.parent == tmp_path / "d" for p in lay.paths().values())
    assert DataPaths.of(lay).aligned == str(tmp_path / "d" / "aligned.parquet")
