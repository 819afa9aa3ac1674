"""Safe image decoding: every failure becomes a `BadImage` with a reason code, never a crash.

Handles EXIF orientation, 16-bit, RGBA/LA/P, greyscale and CMYK, refuses decompression bombs
from the header alone (nothing is allocated), and reports truncated or non-image files.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# We enforce our own pixel limit from the header; Pillow's global guard is replaced by it.
Image.MAX_IMAGE_PIXELS = None


class BadImage(Exception):
    """An input image that cannot be used; `reason` is a stable reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    format: str


def probe(path: str | os.PathLike) -> ImageHeader:
    """Read only the header: size and format (EXIF rotation applied to the size)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadImage("empty_file", "file has 0 bytes")
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - broken EXIF is not fatal for the header
                orientation = 1
            if orientation in (5, 6, 7, 8):
                w, h = h, w
            return ImageHeader(int(w), int(h), (im.format or "unknown").lower())
    except UnidentifiedImageError as e:
        raise BadImage("undecodable", f"not a recognised image format ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage("undecodable", f"header could not be read ({e})") from e


def decode_rgb(path: str | os.PathLike, max_pixels: int) -> np.ndarray:
    """Decode to an upright (H, W, 3) uint8 RGB array, or raise BadImage."""
    header = probe(path)
    if header.width * header.height > max_pixels:
        raise BadImage(
            "too_large",
            f"{header.width}x{header.height} exceeds filter.max_pixels={max_pixels}; refused before decoding",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg or "broken data stream" in msg else "undecodable"
        raise BadImage(reason, f"decoding failed ({msg})") from e


def to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to (H, W, 3) uint8 RGB; alpha is composited onto white."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if a.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        g = np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        g = np.clip(a * (255.0 if a.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(im)
    # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX ...
    return np.asarray(im.convert("RGB"))


def resize_max_side(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most `max_side`; returns (image, scale applied)."""
    h, w = img.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s >= 1.0:
        return img, 1.0
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA), s


def phash64(img: np.ndarray) -> int:
    """64-bit DCT perceptual hash (signed int64 so it fits Parquet int64)."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    small = cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= (1 << 63) else value


def hamming64(a: int, b: int) -> int:
    return bin((a ^ b) & 0xFFFFFFFFFFFFFFFF).count("1")


def laplacian_variance(img: np.ndarray, box: tuple[float, float, float, float] | None = None) -> float:
    """Sharpness: variance of the Laplacian of the (face) crop resized to 128 px."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        h, w = g.shape
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 - x0 >= 4 and y1 - y0 >= 4:
            g = g[y0:y1, x0:x1]
    g = cv2.resize(g, (128, 128), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g, cv2.CV_64F).var())


def encode_image(img: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    """Encode an RGB (H, W, 3) or label (H, W) uint8 array as PNG/JPEG bytes."""
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ext = ".jpg" if fmt in ("jpg", "jpeg") else ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(ext, arr, params)
    if not ok:
        raise RuntimeError(f"could not encode image as {ext}")
    return buf.tobytes()


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read a pipeline-written image (aligned crop) as RGB; these are trusted files."""
    arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if arr is None:
        raise BadImage("undecodable", f"{path} could not be read")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
