"""The comparison table (`make compare`): it shows each architecture's measured numbers and says, per
gate, by how much a model misses it; a model that fails cannot read as passing."""
from __future__ import annotations

from faceswap.evaluation.compare import ArchitectureResult, compare_markdown, compare_metrics, gate_summary


def eval_doc(id_top1: float, pose: float) -> dict:
    model = {"detection_rate": 0.95, "id_top1": id_top1, "id_margin": 0.02, "shape_error": 7.2,
             "expression_deviation_error": 2.9, "pose_error_deg": pose, "fid_dlib_resnet128": 0.19}
    return {"model": model, "baselines": {"copy_target": {**model, "id_top1": 0.0, "pose_error_deg": 0.0},
                                          "paste_source": {**model, "id_top1": 1.0, "pose_error_deg": 20.0}}}


GOOD = [{"metric": "model.id_top1", "op": "finite", "passed": True},
        {"metric": "model.id_top1", "op": "min", "limit": 0.2, "passed": True, "shortfall": None}]
BAD = [{"metric": "model.id_top1", "op": "finite", "passed": True},
       {"metric": "model.id_top1", "op": "min", "limit": 0.2, "passed": False, "shortfall": 0.07,
        "detail": "model.id_top1 = 0.13 < 0.2 (baselines.copy_target.id_top1 + 0.2): short by 0.07"},
       {"metric": "model.pose_error_deg", "op": "max", "limit": 18.0, "passed": True, "shortfall": None}]


def result(name: str, gates: list, id_top1: float) -> ArchitectureResult:
    return ArchitectureResult(name=name, title=name.title(), eval=eval_doc(id_top1, 16.6),
                              train={"stage_a": {"steps": 600, "seconds": 300.0}, "stage_b": {"steps": 200, "seconds": 50.0}},
                              gates=gates, parameters=2_500_000, trained_parameters=1_000_000,
                              registered={"model_name": name, "version": 3, "aliases_moved": ["challenger"]})


def test_gate_summary_names_each_miss_and_its_shortfall():
    assert gate_summary(GOOD) == "pass (1/1)"
    s = gate_summary(BAD)
    assert s.startswith("FAIL (1/2)") and "model.id_top1 min 0.2: short by 0.07" in s


def test_table_rows_hold_the_measured_numbers():
    md = compare_markdown([result("alpha", GOOD, 0.42), result("beta", BAD, 0.13)], recipe="R", dataset="D")
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "0.42" in rows["Alpha"] and "pass (1/1)" in rows["Alpha"]
    assert "0.13" in rows["Beta"] and "FAIL (1/2)" in rows["Beta"] and "short by 0.07" in rows["Beta"]
    assert "0.50 + 0.25" in rows["Beta"]  # s/step of each training stage
    assert "2.50 M (1.00 M)" in rows["Beta"]
    assert "1.00" in rows["*paste_source*"] and "0.00" in rows["*copy_target*"]  # the baselines' ID top-1
    assert "`models:/beta/3`" in md and "gate miss: model.id_top1 = 0.13 < 0.2" in md
    m = compare_metrics([result("beta", BAD, 0.13)])
    assert m["beta.id_top1"] == 0.13 and m["beta.gates_passed"] == 0.0 and m["beta.stage_a.s_per_step"] == 0.5


def test_side_by_side_keeps_one_source_and_target_and_every_architectures_outputs():
    """docs/compare_swaps.png: source | target from the first grid, then each grid's output columns in order."""
    import numpy as np

    from faceswap.evaluation.compare import side_by_side

    cell = 4

    def grid(rows: int, values: list[int]) -> np.ndarray:  # one cell per value, filled with it
        return np.concatenate([np.full((rows * cell, cell, 3), v, np.uint8) for v in values], axis=1)

    fig = side_by_side([grid(3, [1, 2, 10, 11]), grid(2, [1, 2, 20, 21])], cell=cell)
    assert fig.shape == (2 * cell, 6 * cell, 3)  # the shorter grid's rows; 2 + 2 + 2 columns
    assert [int(fig[0, c * cell, 0]) for c in range(6)] == [1, 2, 10, 11, 20, 21]
