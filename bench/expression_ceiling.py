"""What the expression gate can ask on this corpus: `expression_deviation_error` of blends of the *real*
face-mesh measures of each pair's source and target (no image is made, so no drawing error), against
paste_source (w = 1) and copy_target (w = 0), on the validator's pairs of a split; plus each measure's
ICC and its within-person std in pixels at the training size (docs/evaluation.md "What the expression
gate can ask"). Needs the data stages' outputs (`make demo`).

Usage: python -m bench.expression_ceiling [--split val test] [--pairs 100] [--size 64]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from faceswap.evaluation import metrics as E
from faceswap.evaluation.features import EXPRESSION_MEASURES, outer_eye_corners


def split_ceiling(split: str, pairs: int, size: int) -> dict:
    """Blend errors, ICC and within-person std (measure units and px at `size`) of one split."""
    from faceswap.core.images import read_rgb
    from faceswap.training.runs import DataPaths
    from faceswap.training.validation import SwapValidator

    data = DataPaths.of().resolved()
    records = data.records(split)
    val = SwapValidator.from_records(records, None, data.threedmm_model, size, pairs=pairs)
    labels = np.array([records.identities[i] for i in records.identity_index])
    icc = E.intraclass_correlation(val.geometry, labels)
    errors = E.blend_deviation_errors(val.geometry, labels, val.src, val.tgt,
                                      {"paste_source (w=1)": 1.0, "w=0.7": 0.7, "w=ICC (hindsight)": icc,
                                       "w=0.5": 0.5, "copy_target (w=0)": 0.0})
    unit = []  # outer-eye-corner distance at the training size, px (the validator's own face mesh)
    for path in records.crop_paths[:40]:
        crop = read_rgb(path)
        mesh = val.attr.landmarker(np.ascontiguousarray(crop))
        if mesh is not None:
            unit.append(outer_eye_corners(np.asarray(mesh, np.float64)[:, :2])[2] * size / crop.shape[0])
    val.close()
    px = float(np.mean(unit))
    return {"pairs": len(val.src), "deviation_error": errors,
            "ratio_to_paste": {k: v / errors["paste_source (w=1)"] for k, v in errors.items()},
            "icc": dict(zip(EXPRESSION_MEASURES, icc.round(3).tolist())),
            "eye_corner_distance_px": px,
            "within_std_px": dict(zip(EXPRESSION_MEASURES, (val.geometry_within * px).round(3).tolist()))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", nargs="+", default=["val", "test"])
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--size", type=int, default=64, help="training size for the px figures")
    a = p.parse_args(argv)
    print(json.dumps({s: split_ceiling(s, a.pairs, a.size) for s in a.split}, indent=2))


if __name__ == "__main__":
    main()
