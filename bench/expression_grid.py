"""Three identities x five expressions of the demo corpus, as the models see them: one aligned crop per
generated face (its first image), each row one identity ordered by mouth opening, with the face-mesh
mouth-open and brow measures (px at the training size) written under each crop.

Needs the data stages' outputs (`make demo`, or `dvc repro split`).

Usage: python -m bench.expression_grid [--data DIR] [--identities id_000,id_001,id_002] [--size 64]
       [--out docs/demo_expressions.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from faceswap.core.schemas import ALIGNED, SPLITS, read_table


def rows_of_faces(data: Path, identities: list[str], per_row: int = 5) -> list[list[tuple[Path, np.ndarray, float]]]:
    """Per identity, up to `per_row` (crop path, measures (7,), unit) — one per generated face (images 2f and
    2f + 1 are face f: the first of them that has a crop and a mesh) — ordered by mouth opening."""
    from faceswap.evaluation.features import mesh_expression, outer_eye_corners
    from faceswap.faces.threedmm import mesh_name

    split = {r["sha256"]: r["identity"] for r in read_table(data / "splits.parquet", SPLITS).to_pylist()}
    out = []
    crops = read_table(data / "aligned.parquet", ALIGNED).select(["sha256", "identity", "path", "crop", "size"]).to_pylist()
    for ident in identities:
        row, faces = [], set()
        for c in sorted((c for c in crops if c["identity"] == ident and c["sha256"] in split), key=lambda c: c["path"]):
            stem = Path(c["path"]).stem
            mesh = data / "meshes" / mesh_name(c)
            if not stem.isdigit() or int(stem) // 2 in faces or not mesh.exists():
                continue
            faces.add(int(stem) // 2)
            m = np.load(mesh)
            row.append((data / "aligned" / c["crop"], mesh_expression(m),
                        outer_eye_corners(np.asarray(m, np.float64)[:, :2])[2] / c["size"]))
        out.append(sorted(row, key=lambda r: r[1][0])[:per_row])
    return out


def grid(rows: list[list[tuple[Path, np.ndarray, float]]], size: int, cell: int = 160) -> np.ndarray:
    """(R * (cell + 34), C * cell, 3) uint8 BGR: crops with 'mouth x.x px / brow y.y px' under each."""
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (cell + 34), n_cols * cell, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, (path, m, unit) in enumerate(row):
            img = cv2.resize(cv2.imread(str(path)), (cell, cell), interpolation=cv2.INTER_AREA)
            y, x = i * (cell + 34), j * cell
            out[y:y + cell, x:x + cell] = img
            px = unit * size
            for k, text in enumerate((f"mouth {m[0] * px:.1f} px", f"brows {np.mean(m[5:7]) * px:.1f} px")):
                cv2.putText(out, text, (x + 6, y + cell + 14 + 15 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                            cv2.LINE_AA)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--identities", default="id_000,id_001,id_002")
    p.add_argument("--size", type=int, default=64, help="training size for the px figures")
    p.add_argument("--out", type=Path, default=Path("docs/demo_expressions.png"))
    a = p.parse_args(argv)
    img = grid(rows_of_faces(a.data, a.identities.split(",")), a.size)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(a.out), img)
    print(f"wrote {a.out} ({img.shape[1]} x {img.shape[0]})")


if __name__ == "__main__":
    main()
