"""The embedded demo corpus: real photographic faces, made into a small multi-identity set.

Provenance (all shipped inside scikit-image, so nothing is downloaded):
- `skimage.data.astronaut()`: Eileen Collins, NASA photograph, public domain. The only
  full-resolution real face; identity 0 is this face.
- `skimage.data.lfw_subset()`: 100 real face photographs from Labeled Faces in the Wild, 25x25
  greyscale. Each donor's dlib 68-point geometry and luminance detail are morphed onto the
  astronaut photograph (piecewise-affine, landmark-aligned), giving composite identities with
  distinct face shapes — the property FlowFace++ cares about.
Each identity then gets identity-preserving augmentations: pose (in-plane rotation and a
perspective yaw), scale, translation, colour, blur, JPEG quality and occlusion.
A few deliberately bad extras (no face, tiny, blurred, an exact duplicate) exercise `filter`.
Everything is deterministic given the seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from faceswap_common.faces import DlibDetector, umeyama_similarity
from faceswap_common.config import DetectConfig
from faceswap_common.io import atomic_write_bytes, atomic_write_text, fingerprint
from faceswap_common.images import encode_image

CORPUS_VERSION = 4
_STABLE = list(range(27, 48))  # nose bridge + eyes: used to register donor geometry


def _detect68(det: DlibDetector, img: np.ndarray) -> np.ndarray | None:
    faces = det.detect(img)
    if not faces:
        return None
    return det.landmarker(img, faces[0].box)


def _support_points(pts68: np.ndarray, size: int) -> np.ndarray:
    """68 landmarks + forehead points + image border points, (68 + 10 + 8, 2)."""
    nose_len = np.linalg.norm(pts68[33] - pts68[27])
    up = pts68[27] - pts68[33]
    up = up / (np.linalg.norm(up) + 1e-9)
    forehead = pts68[17:27] + up * nose_len * 0.9
    s = size - 1
    border = np.array([[0, 0], [s / 2, 0], [s, 0], [s, s / 2], [s, s], [s / 2, s], [0, s], [0, s / 2]])
    return np.vstack([pts68, forehead, border]).astype(np.float32)


def piecewise_affine(img: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Warp `img` so that points `src` (N, 2) move to `dst` (N, 2), triangle by triangle."""
    h, w = img.shape[:2]
    subdiv = cv2.Subdiv2D((0, 0, w, h))
    index = {}
    for i, p in enumerate(dst):
        q = (float(np.clip(p[0], 0, w - 1)), float(np.clip(p[1], 0, h - 1)))
        index[(round(q[0], 2), round(q[1], 2))] = i
        subdiv.insert(q)
    out = img.copy()
    for t in subdiv.getTriangleList():
        tri = t.reshape(3, 2)
        ids = [index.get((round(float(x), 2), round(float(y), 2))) for x, y in tri]
        if any(i is None for i in ids):
            continue
        s_tri, d_tri = src[ids].astype(np.float32), dst[ids].astype(np.float32)
        x, y, bw, bh = cv2.boundingRect(d_tri)
        x, y = max(x, 0), max(y, 0)
        bw, bh = min(bw, w - x), min(bh, h - y)
        if bw <= 0 or bh <= 0:
            continue
        m = cv2.getAffineTransform(s_tri, d_tri - np.array([x, y], np.float32))
        patch = cv2.warpAffine(img, m, (bw, bh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        mask = np.zeros((bh, bw), np.uint8)
        cv2.fillConvexPoly(mask, np.round(d_tri - [x, y]).astype(np.int32), 1)
        region = out[y:y + bh, x:x + bw]
        region[mask > 0] = patch[mask > 0]
    return out


def _base_astronaut(size: int) -> np.ndarray:
    from skimage import data

    img = data.astronaut()[0:270, 95:365]  # the face with some context, (270, 270, 3)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)


def _donors(det: DlibDetector, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """LFW donor faces: (grey image 320x320, 68 landmarks) for those dlib finds."""
    from skimage import data

    lfw = data.lfw_subset()[:100]
    out = []
    for face in lfw:
        g = cv2.resize((face * 255).astype(np.uint8), (200, 200), interpolation=cv2.INTER_CUBIC)
        g = cv2.copyMakeBorder(g, 60, 60, 60, 60, cv2.BORDER_REPLICATE)
        rgb = np.repeat(g[..., None], 3, axis=2)
        pts = _detect68(det, rgb)
        if pts is not None:
            out.append((g, pts))
        if len(out) >= count:
            break
    return out


def make_identity(base: np.ndarray, base68: np.ndarray, donor: np.ndarray, donor68: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Composite identity: astronaut photo morphed to the donor's face shape, donor luminance blended in."""
    size = base.shape[0]
    m = umeyama_similarity(donor68[_STABLE], base68[_STABLE])  # donor frame -> base frame
    donor_in_base = cv2.warpAffine(donor, m, (size, size), borderMode=cv2.BORDER_REPLICATE)
    d68 = donor68 @ m[:, :2].T + m[:, 2]
    alpha = rng.uniform(0.8, 1.1)  # how far to go toward the donor's shape
    target68 = base68 + alpha * (d68 - base68)
    src_pts, dst_pts = _support_points(base68, size), _support_points(target68, size)
    shaped = piecewise_affine(base, src_pts, dst_pts)
    donor_shaped = piecewise_affine(donor_in_base, _support_points(d68, size), dst_pts)
    # Blend donor luminance into the face region (feathered hull), keep the photo's colour.
    mask = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(mask, np.round(dst_pts[:78]).astype(np.int32), 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), size / 40)[..., None]
    lab = cv2.cvtColor(shaped, cv2.COLOR_RGB2LAB).astype(np.float32)
    d_l = donor_shaped.astype(np.float32)
    d_l = (d_l - d_l.mean()) / (d_l.std() + 1e-6) * lab[..., 0].std() + lab[..., 0].mean()
    beta = rng.uniform(0.35, 0.55)
    lab[..., 0] = lab[..., 0] * (1 - beta * mask[..., 0]) + d_l * beta * mask[..., 0]
    lab[..., 1] += rng.uniform(-6, 6) * mask[..., 0]  # skin tone variation per identity
    lab[..., 2] += rng.uniform(-8, 8) * mask[..., 0]
    return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def augment(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Identity-preserving augmentation: pose, scale, shift, colour, blur, occlusion."""
    size = img.shape[0]
    c = size / 2
    angle, scale = rng.uniform(-15, 15), rng.uniform(0.8, 1.15)
    shift = rng.uniform(-0.05, 0.05, 2) * size
    m = cv2.getRotationMatrix2D((c, c), angle, scale)
    m[:, 2] += shift
    out = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT101)
    yaw = rng.uniform(-0.12, 0.12)  # perspective "turn": one side narrower
    if abs(yaw) > 0.03:
        d = abs(yaw) * size
        src = np.float32([[0, 0], [size, 0], [size, size], [0, size]])
        dst = src.copy()
        side = [1, 2] if yaw > 0 else [0, 3]
        dst[side[0], 1] += d / 2
        dst[side[1], 1] -= d / 2
        out = cv2.warpPerspective(out, cv2.getPerspectiveTransform(src, dst), (size, size),
                                  borderMode=cv2.BORDER_REFLECT101)
    if rng.random() < 0.3:
        out = out[:, ::-1].copy()
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-4, 4)) % 180
    hsv[..., 1] *= rng.uniform(0.75, 1.25)
    hsv[..., 2] = hsv[..., 2] * rng.uniform(0.75, 1.2) + rng.uniform(-15, 15)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.2))
    occluded = rng.random() < 0.2
    if occluded:  # a small patch on the forehead or a cheek
        w = int(size * rng.uniform(0.06, 0.1))
        x = int(c + rng.choice([-1, 1]) * size * 0.12 + rng.uniform(-10, 10))
        y = int(c + rng.uniform(-0.1, 0.12) * size)
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.rectangle(out, (x - w // 2, y - w // 2), (x + w // 2, y + w // 2), colour, -1)
    return out, {"angle": angle, "scale": scale, "yaw_warp": yaw, "occluded": occluded}


def build_demo_corpus(root: str | Path, identities: int, per_identity: int, size: int = 512, seed: int = 0) -> Path:
    """Write the demo corpus under `root` (identity sub-folders) unless it is already complete."""
    root = Path(root)
    key = fingerprint(CORPUS_VERSION, identities, per_identity, size, seed)
    marker = root / ".demo_corpus.json"
    if marker.exists() and json.loads(marker.read_text()).get("key") == key:
        return root
    det = DlibDetector(DetectConfig(max_side=size))
    base = _base_astronaut(size)
    base68 = _detect68(det, base)
    if base68 is None:
        raise RuntimeError("demo corpus: dlib found no face in the astronaut photograph")
    donors = _donors(det, identities - 1)
    if len(donors) < identities - 1:
        raise RuntimeError(f"demo corpus: only {len(donors)} LFW donors usable, need {identities - 1}")
    records = []
    for k in range(identities):
        rng = np.random.default_rng([seed, k])
        ident = base if k == 0 else make_identity(base, base68, *donors[k - 1], rng)
        folder = root / f"id_{k:03d}"
        for j in range(per_identity):
            r = np.random.default_rng([seed, k, j])
            img, info = augment(ident, r)
            fmt = "png" if j % 5 == 4 else "jpg"
            name = folder / f"{j:03d}.{fmt}"
            atomic_write_bytes(name, encode_image(img, fmt, jpeg_quality=int(r.integers(60, 96))))
            records.append({"file": str(name.relative_to(root)), "identity": f"id_{k:03d}", **info})
    _write_extras(root, base)
    atomic_write_text(marker, json.dumps({"key": key, "version": CORPUS_VERSION, "images": records}, indent=1))
    return root


def _write_extras(root: Path, base: np.ndarray) -> None:
    """Deliberately bad inputs so `filter` shows its reasons on the demo run."""
    from skimage import data

    extras = {
        "id_001/x_no_face.jpg": data.coffee(),
        "id_002/x_tiny.png": cv2.resize(base, (40, 40), interpolation=cv2.INTER_AREA),
        "id_003/x_blurred.jpg": cv2.GaussianBlur(base, (0, 0), 9),
    }
    for rel, img in extras.items():
        atomic_write_bytes(root / rel, encode_image(img, rel.rsplit(".", 1)[1]))
    dup = (root / "id_000/000.jpg").read_bytes()
    atomic_write_bytes(root / "id_004/x_duplicate_of_id000.jpg", dup)
