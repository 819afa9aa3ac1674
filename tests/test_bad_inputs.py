"""Bad input of every kind: the run completes, nothing is lost, every bad file has a reason."""
from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceswap.core.images import BadImage, decode_rgb
from faceswap.core.schemas import FILTERED, MANIFEST, REJECTS, read_table
from stages import filter as filter_stage
from stages import ingest

from imageutil import write_rgb


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG that declares w x h but carries almost no data (a decompression bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory, face_rgb):
    """A source tree with one file per kind of bad (or awkward but valid) input -> expected outcome."""
    root = tmp_path_factory.mktemp("bad") / "src"
    person = root / "person"
    person.mkdir(parents=True)
    expect: dict[str, str | None] = {}  # relpath -> reject reason, None = accepted

    (person / "zero.jpg").write_bytes(b"")
    expect["person/zero.jpg"] = "empty_file"
    good = write_rgb(person / "good.jpg", face_rgb)
    expect["person/good.jpg"] = None
    (person / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect["person/truncated.jpg"] = "truncated"
    (person / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    expect["person/notes.jpg"] = "undecodable"
    g16 = (face_rgb.astype(np.float32).mean(2) * 257).astype(np.uint16)
    Image.fromarray(g16).save(person / "sixteen_bit.png")
    expect["person/sixteen_bit.png"] = None
    rgba = np.dstack([face_rgb, np.full(face_rgb.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(person / "rgba.png")
    expect["person/rgba.png"] = None
    Image.fromarray(face_rgb).convert("L").save(person / "grey.jpg")
    expect["person/grey.jpg"] = None
    Image.fromarray(face_rgb).convert("CMYK").save(person / "cmyk.jpg")
    expect["person/cmyk.jpg"] = None
    # Stored rotated 90 degrees with EXIF orientation 6: upright only if EXIF is applied.
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(face_rgb, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(person / "exif_rotated.jpg", exif=exif.tobytes())
    expect["person/exif_rotated.jpg"] = None
    Image.new("RGB", (1, 1), (128, 128, 128)).save(person / "one_pixel.png")
    expect["person/one_pixel.png"] = "too_small"
    _png_header_only(person / "bomb.png", 30000, 30000)
    expect["person/bomb.png"] = "too_large"
    from skimage import data
    write_rgb(person / "no_face.jpg", data.coffee())
    expect["person/no_face.jpg"] = "no_face"
    small = np.array(Image.fromarray(face_rgb).resize((320, 320)))
    three = np.concatenate([small, np.ascontiguousarray(small[:, ::-1]), small], axis=1)
    three = np.roll(three, 7, axis=0)  # not an exact copy of anything else
    write_rgb(person / "three_faces.jpg", three)
    expect["person/three_faces.jpg"] = "multiple_faces"
    outside = root.parent / "outside.jpg"
    write_rgb(outside, face_rgb[:, ::-1])
    os.symlink(outside, person / "link_out.jpg")
    expect["person/link_out.jpg"] = "symlink_outside_root"
    write_rgb(person / "émilie_测试.jpg", np.ascontiguousarray(np.roll(face_rgb, 40, axis=1)))
    expect["person/émilie_测试.jpg"] = None
    return root, expect


def test_every_bad_file_gets_its_reason_and_nothing_is_lost(bad_tree, tmp_path, cfgs):
    root, expect = bad_tree
    icfg = dataclasses.replace(cfgs["ingest"], root=str(root))
    ingest.run(icfg, tmp_path / "manifest.parquet", tmp_path / "cache")
    manifest = read_table(tmp_path / "manifest.parquet", MANIFEST).to_pylist()
    assert sorted(r["relpath"] for r in manifest) == sorted(expect)
    m = filter_stage.run(dataclasses.replace(cfgs["filter"], phash_max_distance=-1), cfgs["detect"],
                         tmp_path / "manifest.parquet", tmp_path / "filtered.parquet", tmp_path / "rejects.parquet",
                         tmp_path / "cache")
    kept = read_table(tmp_path / "filtered.parquet", FILTERED).to_pylist()
    rejected = read_table(tmp_path / "rejects.parquet", REJECTS).to_pylist()
    by_path = {r["path"]: None for r in kept} | {r["path"]: r["reason"] for r in rejected}
    assert len(by_path) == len(kept) + len(rejected) == len(manifest)  # exactly one table each
    got = {str(Path(p).relative_to(root)): reason for p, reason in by_path.items()}
    assert got == expect
    assert all(r["detail"] for r in rejected)
    assert m["accepted"] + m["rejected"] == len(manifest)


def test_exif_rotation_is_applied(bad_tree):
    root, _ = bad_tree
    img = decode_rgb(root / "person" / "exif_rotated.jpg", 10**8)
    assert img.shape == (512, 512, 3)
    raw = np.asarray(Image.open(root / "person" / "exif_rotated.jpg").convert("RGB"))
    # Upright decoding must match the original orientation better than the stored (rotated) one.
    good = decode_rgb(root / "person" / "good.jpg", 10**8).astype(np.float32)
    assert np.abs(img.astype(np.float32) - good).mean() < np.abs(raw.astype(np.float32) - good).mean() / 2


def test_decompression_bomb_refused_from_header(bad_tree):
    root, _ = bad_tree
    with pytest.raises(BadImage) as e:
        decode_rgb(root / "person" / "bomb.png", 40_000_000)
    assert e.value.reason == "too_large" and "30000x30000" in e.value.detail


def test_sixteen_bit_and_cmyk_decode_to_rgb8(bad_tree):
    root, _ = bad_tree
    for name in ("sixteen_bit.png", "cmyk.jpg", "grey.jpg", "rgba.png"):
        img = decode_rgb(root / "person" / name, 10**8)
        assert img.dtype == np.uint8 and img.shape == (512, 512, 3), name
        assert 60 < img.mean() < 200, name  # not crushed to black/white by a bad conversion
