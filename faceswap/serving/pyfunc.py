"""MLflow pyfunc wrapper around the swap pipeline (align -> swap -> paste back).

The model is logged from code (MODEL_CODE, pyfunc_model.py: `set_model(FaceSwapModel())`), nothing is
pickled; it holds the swap-model bundle (faceswap/artifacts.py) as the artifact `bundle/`, and
`load_context` builds `SwapPipeline.from_bundle` from it.

predict contract (one row per swap):
    input   DataFrame, columns `source`, `target`: encoded image bytes (JPEG/PNG/WebP...). A str
            cell is read as base64 (what MLflow's JSON serving format carries for binary columns).
    output  DataFrame, columns `swapped`: PNG bytes of the target photo with the source identity,
            marked like `faceswap swap` output: invisible watermark (`faceswap verify` detects it)
            + provenance text chunk (b"" when the row failed) and `error`: "" or "<reason>: <detail>" (e.g. a photo with no
            face). One bad row never fails the batch.
The pipeline is built once per load on the device named by $FACESWAP_DEVICE (default cpu).
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from faceswap.core.images import BadImage, encode_image, to_rgb
from faceswap.serving import watermark

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # logged as python_model (models-from-code)
BUNDLE_ARTIFACT = "bundle"  # artifact key and directory name of the bundle inside the model
INPUT_COLUMNS = ("source", "target")
OUTPUT_COLUMNS = ("swapped", "error")
MAX_PIXELS = 40_000_000  # same guard as filter.max_pixels: refuse decompression bombs from the header
DEVICE_ENV = "FACESWAP_DEVICE"


def decode_cell(value: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image bytes (or base64 text) -> upright (H, W, 3) uint8 RGB; failures raise BadImage."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise BadImage("undecodable", f"string cell is not base64 image bytes ({e})") from e
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadImage("undecodable", f"expected image bytes, got {type(value).__name__}")
    if not value:
        raise BadImage("empty_file", "image cell has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(value)) as im:
                if im.width * im.height > max_pixels:
                    raise BadImage("too_large", f"{im.width}x{im.height} exceeds {max_pixels} pixels")
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
    except UnidentifiedImageError as e:
        raise BadImage("undecodable", f"not a recognised image format ({e})") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage("undecodable", f"decoding failed ({e})") from e


def swap_rows(pipeline: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Apply `pipeline.swap_image` row by row; see the module docstring for the contract."""
    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"input DataFrame lacks column(s) {missing}; expected {list(INPUT_COLUMNS)}")
    swapped, errors = [], []
    for i, (src, tgt) in enumerate(zip(frame["source"], frame["target"])):
        try:
            out = pipeline.swap_image(decode_cell(src), decode_cell(tgt))  # (H, W, 3) uint8, target size
            swapped.append(encode_png(out))
            errors.append("")
        except BadImage as e:
            swapped.append(b"")
            errors.append(f"{e.reason}: {e.detail}")
        except ValueError as e:  # inference.NoFaceError (has `which`) or a malformed image
            swapped.append(b"")
            errors.append(f"{'no_face' if hasattr(e, 'which') else 'invalid_input'}: row {i}: {e}")
    return pd.DataFrame({"swapped": swapped, "error": errors})


def encode_png(rgb: np.ndarray, key: str = watermark.DEFAULT_KEY) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes with the invisible watermark and provenance metadata (as `faceswap swap`)."""
    from faceswap.serving.watermark import package_version, provenance_text

    marked = watermark.embed(np.ascontiguousarray(rgb), key, watermark.version_payload(package_version()))
    return watermark.encode_with_metadata(marked, "png", provenance_text("mlflow pyfunc"))


class FaceSwapModel(mlflow.pyfunc.PythonModel):
    """pyfunc model: `predict(DataFrame[source, target]) -> DataFrame[swapped, error]`."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from faceswap.serving.inference import SwapPipeline

        device = os.environ.get(DEVICE_ENV, "cpu")
        self.pipeline = SwapPipeline.from_bundle(context.artifacts[BUNDLE_ARTIFACT], device=device)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        return swap_rows(self.pipeline, model_input)


def input_example(source_rgb: np.ndarray, target_rgb: np.ndarray, quality: int = 90) -> pd.DataFrame:
    """A one-row input frame from two RGB faces (JPEG keeps the stored example small)."""
    return pd.DataFrame({"source": [encode_image(source_rgb, "jpg", quality)],
                         "target": [encode_image(target_rgb, "jpg", quality)]})


def signature() -> Any:
    """Model signature: binary source/target in; binary swapped + string error out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("binary", c) for c in INPUT_COLUMNS]),
                          outputs=Schema([ColSpec("binary", "swapped"), ColSpec("string", "error")]))
