"""Parquet schemas, declared once and checked on every read and write."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from faceswap.core.io import atomic_path

F32_LIST = pa.list_(pa.float32())

MANIFEST = pa.schema([
    ("path", pa.string()),  # path as the pipeline opens it (root joined with relpath)
    ("relpath", pa.string()),  # path below the source root
    ("identity", pa.string()),
    ("sha256", pa.string()),  # null when the file could not be read
    ("width", pa.int32()),  # from the header; null when undecodable
    ("height", pa.int32()),
    ("format", pa.string()),
    ("size", pa.int64()),  # bytes
    ("mtime_ns", pa.int64()),
    ("error", pa.string()),  # reason code found at ingest (e.g. symlink_outside_root), else null
    ("detail", pa.string()),
])

REJECTS = pa.schema([
    ("path", pa.string()),
    ("identity", pa.string()),
    ("sha256", pa.string()),
    ("reason", pa.string()),  # one of filter.REASONS
    ("detail", pa.string()),  # human-readable explanation
])

FILTERED = pa.schema([
    ("path", pa.string()),
    ("identity", pa.string()),
    ("sha256", pa.string()),
    ("width", pa.int32()),  # upright (EXIF-applied) decoded size
    ("height", pa.int32()),
    ("face_box", F32_LIST),  # (4,) x0, y0, x1, y1 in upright source pixels
    ("score", pa.float32()),  # detector confidence
    ("landmarks5", F32_LIST),  # (10,) eyes L/R, nose, mouth L/R as x, y in source pixels
    ("n_faces", pa.int32()),
    ("yaw", pa.float32()),  # degrees, from the 5 landmarks
    ("blur", pa.float32()),  # variance of Laplacian of the face crop
    ("phash", pa.int64()),  # 64-bit DCT perceptual hash (two's complement)
])

ALIGNED = pa.schema([
    ("sha256", pa.string()),
    ("identity", pa.string()),
    ("path", pa.string()),  # source image
    ("crop", pa.string()),  # aligned crop file, relative to the aligned directory
    ("size", pa.int32()),  # crop side (align.size)
    ("template_scale", pa.float64()),  # the ArcFace template's zoom-out (align.template_scale)
    ("matrix", F32_LIST),  # (6,) row-major 2x3 similarity transform source -> crop
    ("landmarks5", F32_LIST),  # (10,) in crop pixels
    ("landmarks68", F32_LIST),  # (136,) in crop pixels (iBUG 68 order)
])

SEGMENTS = pa.schema([
    ("sha256", pa.string()),
    ("identity", pa.string()),
    ("parsing", pa.string()),  # uint8 label PNG, relative to the parsing directory
    ("class_fractions", F32_LIST),  # (C,) fraction of pixels per label
])

THREEDMM = pa.schema([
    ("sha256", pa.string()),
    ("identity", pa.string()),
    ("shape", F32_LIST),  # (n_shape,) identity coefficients beta
    ("expression", F32_LIST),  # (n_exp,) expression coefficients psi
    ("pose", F32_LIST),  # (3,) yaw, pitch, roll in degrees
    ("camera", F32_LIST),  # (3,) scale, tx, ty (orthographic, crop pixels)
    ("contour2d", F32_LIST),  # (2K,) projected face-contour landmarks in crop pixels
    ("fit_rmse", pa.float32()),  # landmark residual after the fit, crop pixels
])

SPLITS = pa.schema([
    ("sha256", pa.string()),
    ("identity", pa.string()),
    ("split", pa.string()),  # train | val | test
])


EVAL_PAIRS = pa.schema([  # stages/evaluate.py: one row per (pair, method)
    ("pair", pa.int32()),
    ("method", pa.string()),  # model | model_blended | copy_target | paste_source
    ("source_sha256", pa.string()),
    ("source_identity", pa.string()),
    ("target_sha256", pa.string()),
    ("target_identity", pa.string()),
    ("rank_centres", pa.int32()),  # rank of the source identity among identity centres (0 = top-1; -1 = miss)
    ("predicted_centres", pa.string()),  # nearest identity centre
    ("rank_all", pa.int32()),  # same against all gallery images (identity distance = its nearest image)
    ("predicted_all", pa.string()),
    ("id_margin", pa.float32()),  # cos(out, source) - cos(out, target) in the recogniser's space; null for a miss
    ("shape_error", pa.float32()),  # L2 of 3DMM identity coefficients, output vs source; null when no mesh
    ("expression_error", pa.float32()),  # L2 of expression coefficients, output vs target
    ("expression_geometry_error", pa.float32()),  # RMS of z-scored mesh expression measures, output vs target
    ("expression_deviation_error", pa.float32()),  # the same as deviations from each person's mean (identity-relative)
    ("pose_error_deg", pa.float32()),  # L2 of (yaw, pitch, roll) output vs target, degrees
    ("pose", F32_LIST),  # (3,) output yaw, pitch, roll in degrees; null when no mesh
    ("status", pa.string()),  # ok | no_face (the evaluation's detector found none: a miss) | no_output
    ("detail", pa.string()),
])


class SchemaError(ValueError):
    """A Parquet file does not carry the columns/types its stage promises."""


def check_schema(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SchemaError(f"{where}: column types do not match: {e}") from e


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read a Parquet file and check it against `schema`."""
    return check_schema(pq.read_table(path), schema, str(path))


def write_table(rows: Iterable[dict] | pa.Table, path: str | Path, schema: pa.Schema) -> pa.Table:
    """Write rows atomically as Parquet with `schema`; returns the table written."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
    table = check_schema(table, schema, str(path))
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return table


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
