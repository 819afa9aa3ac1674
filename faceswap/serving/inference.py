"""Swap inference: photo in, photo out (detect -> align -> Fswa -> warp back -> blend).

Steps for `SwapPipeline.swap_image(source, target)`:
1. Detect faces with the data-preparation detector (faceswap.faces.detectors, params `detect`); the
   largest face of each photo is used (a photo with several faces swaps only its largest one).
2. Align both faces with the bundle's `align_size` / `template_scale`, exactly as stages/align.py
   made the training crops, then resize to the generator's `img_size` when the two differ.
3. Run the generator: source identity onto target attributes, (1, 3, n, n) in [-1, 1].
4. Warp the output back into the target with the inverse similarity, restricted to the crop's
   footprint, and blend it in with a feathered face mask (faceswap.faces.parsing: the segment
   stage's offline landmark-polygon parser). Default blend `shape`: the union of the target's face
   and the *generated* face (dlib HOG on the output crop around the target's face box, then the
   pipeline's own 68-point landmarker in the box found), so a changed contour (FlowFace++'s point)
   survives the paste; where the target's face reaches beyond the new one its contour is covered
   by the swap too (no double contour). When the output shows no face the blend falls back to the
   target's mask (`parsing`) and the pipeline records it (`blend_fallbacks`, `last_blend`).
   Background, hair, ears and neck outside both faces stay the target's.
Every pixel outside the crop's footprint is returned unchanged.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import cv2
import numpy as np
import torch
from torch import Tensor

from faceswap.artifacts import SwapBundle, load_bundle
from faceswap.core.config import DetectConfig
from faceswap.faces.detectors import (  # noqa: F401  (NoFaceError: re-exported, the swap CLI's error)
    Face, FaceDetector, NoFaceError, align_face, build_detector, transform_points,
)
from faceswap.faces.parsing import parse_from_landmarks
from faceswap.serving.config import BLENDS, DEFAULT_BLEND
from faceswap.serving.video_faces import FaceChooser, FaceTrack, iou, map_box

# The check that the output crop shows a face where the target's was (find_output_face).
OUTPUT_FACE_BOX_PX = 100  # the expected face box is resampled to this width for dlib's HOG detector
OUTPUT_FACE_MARGIN = 0.3  # search window: the box grown by this fraction of its width on every side
OUTPUT_FACE_MIN_SCORE = 0.0  # HOG score (the pipeline's own detection threshold)
OUTPUT_FACE_MIN_IOU = 0.4  # overlap with the target's box
NOMINAL_FPS = 25.0  # frame times for `swap_frames` when none are given (the One-Euro filter's clock)

log = logging.getLogger(__name__)


def default_blend(generator: Any) -> str:
    """The blend a swap uses unless told: the generator's own mask when it predicts one, else DEFAULT_BLEND."""
    return "model" if getattr(generator, "has_output_mask", False) else DEFAULT_BLEND


class EncodedSource(NamedTuple):
    """A source face encoded once for many targets: the generator's `encode_source` output (1 or B) and
    the image (1 or B, 3, n, n)."""

    tokens: Any
    image: Tensor


@dataclass(frozen=True)
class AlignedFace:
    """One detected face prepared for the generator."""

    crop: np.ndarray  # (S, S, 3) uint8, S = bundle align_size
    matrix: np.ndarray  # (2, 3) image -> crop
    face: Face  # detection in image pixels
    landmarks68: np.ndarray | None  # (68, 2) in crop pixels (targets only)


def _check_rgb(img: np.ndarray, which: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        got = f"{img.shape} {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{which} image must be an (H, W, 3) uint8 RGB array, got {got}")
    return np.ascontiguousarray(img)


def _disk(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def face_mask(landmarks68: np.ndarray | None, size: int, blend: str,
              swapped_landmarks68: np.ndarray | None = None) -> np.ndarray:
    """Feathered blend weight in crop pixels, (size, size) float32 in [0, 1].

    `parsing`: every parsed face class (labels 1-5) of the target, eroded by ~1.5 % of the crop and
    blurred (sigma = size / 64), so the seam lies just inside the face outline.
    `shape`: the same on the union of the target's face and the generated face
    (`swapped_landmarks68`, the output crop's 68 landmarks), so the new contour is kept. Where the
    two outlines differ (the part of either face outside the other, less slivers narrower than the
    erosion radius: landmark noise), that region is grown by 2.5 sigma before the blur, so both contours
    lie under full swap weight: the new one is pasted crisp instead of fading into the target's
    background, and the target's own one (a narrower new face) does not show beside the new one
    as a double contour. Where the outlines agree the seam is `parsing`'s, just inside the face.
    Without `swapped_landmarks68` it is `parsing`.
    `crop`: the whole square with a soft border.
    """
    sigma = max(0.5, size / 64.0)
    if blend in ("parsing", "shape"):
        if landmarks68 is None:
            raise ValueError(f"blend={blend!r} needs the target's 68 landmarks")
        r = max(1, round(size * 0.015))
        target = (parse_from_landmarks(landmarks68, size) > 0).astype(np.uint8)
        if blend == "shape" and swapped_landmarks68 is not None:
            new = (parse_from_landmarks(swapped_landmarks68, size) > 0).astype(np.uint8)
            m = cv2.erode(target | new, _disk(r))
            # where the outlines differ (the new face wider or narrower), cover both at full weight:
            # the new contour is the point of the swap, the old one must not show beside it
            differ = cv2.morphologyEx(target ^ new, cv2.MORPH_OPEN, _disk(max(1, r // 2)))
            if differ.any():
                m |= cv2.dilate(differ, _disk(math.ceil(2.5 * sigma)))
        else:
            m = cv2.erode(target, _disk(r))
        m = m.astype(np.float32)
    elif blend == "crop":
        m = np.zeros((size, size), np.float32)
        b = max(1, round(size * 0.06))
        m[b:-b, b:-b] = 1.0
    else:
        raise ValueError(f"unknown blend {blend!r}; expected one of {BLENDS}")
    return cv2.GaussianBlur(m, (0, 0), sigma)


@functools.lru_cache(maxsize=1)
def _hog_detector():
    import dlib

    return dlib.get_frontal_face_detector()


def find_output_face(crop: np.ndarray, box: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The generated face's box in its aligned crop, or (None, why) when there is none.

    dlib's HOG detector is run only on the window around `box` (the target's face box in crop
    pixels; the generator keeps pose and framing), resampled so the box is OUTPUT_FACE_BOX_PX wide
    (a fixed ~5 ms whatever the crop size; HOG finds faces of 80 px and up). A face counts when its
    score is at least OUTPUT_FACE_MIN_SCORE and it overlaps `box` by IoU >= OUTPUT_FACE_MIN_IOU.
    """
    box = np.asarray(box, np.float64)
    w = float(box[2] - box[0])
    if not w > 0 or not box[3] > box[1]:
        return None, "empty face box"
    sc = OUTPUT_FACE_BOX_PX / w
    x0, y0 = box[:2] - OUTPUT_FACE_MARGIN * w
    side = int(round((1 + 2 * OUTPUT_FACE_MARGIN) * OUTPUT_FACE_BOX_PX))
    window = cv2.warpAffine(crop, np.array([[sc, 0, -x0 * sc], [0, sc, -y0 * sc]]), (side, side),
                            flags=cv2.INTER_AREA if sc < 1 else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    rects, scores, _ = _hog_detector().run(window, 0, OUTPUT_FACE_MIN_SCORE)
    best, best_iou = None, 0.0
    for r in rects:
        cand = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64) / sc + (x0, y0, x0, y0)
        overlap = iou(cand, box)
        if overlap > best_iou:
            best, best_iou = cand, overlap
    if best is None:
        return None, f"no face detected in the output crop (score >= {OUTPUT_FACE_MIN_SCORE})"
    if best_iou < OUTPUT_FACE_MIN_IOU:
        return None, f"the output's face is not where the target's was (IoU {best_iou:.2f} < {OUTPUT_FACE_MIN_IOU})"
    return best, ""


def paste_back(target_rgb: np.ndarray, swapped_crop: np.ndarray, matrix: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
    """Warp `swapped_crop` (S, S, 3) into the target with the inverse of `matrix` and blend by
    `mask` (S, S); only the crop's footprint (bounding box) is touched. Returns a new uint8 image."""
    h, w = target_rgb.shape[:2]
    s = swapped_crop.shape[0]
    inv = cv2.invertAffineTransform(matrix)  # crop -> image
    corners = transform_points(np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float64), inv)
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    out = target_rgb.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    inv_roi = inv.copy()
    inv_roi[:, 2] -= (x0, y0)  # crop -> ROI pixels
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(swapped_crop, inv_roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, inv_roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0.0)[..., None]  # (h', w', 1)
    roi = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(np.rint(roi + alpha * (face.astype(np.float32) - roi)), 0, 255).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=2)
def _shared_detector(cfg: DetectConfig, min_score: float) -> FaceDetector:
    """One detector per config and process: loading dlib's 68-point model takes most of a second."""
    return build_detector(cfg, min_score=min_score)


class SwapPipeline:
    """Face swap with a swap-model bundle. Build with `SwapPipeline.from_bundle(dir)`.

    Example:
        >>> pipe = SwapPipeline.from_bundle("models/swap")
        >>> out = pipe.swap_image(source_rgb, target_rgb)  # (H_t, W_t, 3) uint8
        >>> frames_out = pipe.swap_frames(source_rgb, video_frames)  # lazy iterator
    """

    def __init__(self, bundle: SwapBundle, detector: FaceDetector, *, device: str | torch.device = "cpu",
                 blend: str | None = None) -> None:
        """blend: one of BLENDS; None = `default_blend` of the bundle's generator."""
        blend = default_blend(bundle.generator) if blend is None else blend
        if blend not in BLENDS:
            raise ValueError(f"unknown blend {blend!r}; expected one of {BLENDS}")
        if blend == "model" and not getattr(bundle.generator, "has_output_mask", False):
            raise ValueError(f"blend 'model': the {bundle.architecture.title} generator predicts no blend mask; "
                             f"use one of {[b for b in BLENDS if b != 'model']}")
        self.bundle = bundle
        self.generator = bundle.generator.to(device).eval()
        self.detector = detector
        self.device = torch.device(device)
        self.blend = blend
        self.align_size = bundle.align_size
        self.template_scale = bundle.template_scale
        self.img_size = bundle.img_size
        self._mask_cache: np.ndarray | None = None
        self.blend_fallbacks = 0  # swaps blended with the target's mask because the output showed no face
        self.last_blend = ""  # the blend the last swap used, with the fallback reason if any

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike | SwapBundle, *, detect: DetectConfig | None = None,
                    device: str | torch.device = "cpu", blend: str | None = None,
                    min_score: float = 0.0) -> SwapPipeline:
        """A bundle directory (or an already loaded SwapBundle) and the face detector (`detect`: the
        bundle's, i.e. the one the training data was found with, unless given)."""
        bundle = bundle_dir if isinstance(bundle_dir, SwapBundle) else load_bundle(bundle_dir, device)
        return cls(bundle, _shared_detector(detect or bundle.detect, min_score), device=device, blend=blend)

    # ------------------------------------------------------------------ faces
    def find_face(self, rgb: np.ndarray, which: str, choose: FaceChooser | None = None) -> Face:
        """The face of `rgb` that `choose` picks (default: the largest); raises NoFaceError naming `which`."""
        faces = self.detector.detect(rgb)
        if not faces:
            raise NoFaceError(which, f"the {type(self.detector).__name__} found no face in the "
                                     f"{rgb.shape[1]}x{rgb.shape[0]} image")
        return (choose or FaceChooser())(rgb, faces)

    def align(self, rgb: np.ndarray, which: str, landmarks68: bool = False, *, face: Face | None = None,
              choose: FaceChooser | None = None,
              landmarker: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> AlignedFace:
        """Align `face` (default: detect, and take the face `choose` picks, the largest by default) of
        `rgb`; raises NoFaceError naming `which`. `landmarker` (rgb, box) -> (68, 2) replaces the
        detector's 68-point landmarker (a FaceTrack's smoothed one)."""
        rgb = _check_rgb(rgb, which)
        face = face or self.find_face(rgb, which, choose)
        crop, m = align_face(rgb, face.landmarks5, self.align_size, self.template_scale)
        pts = None
        if landmarks68:
            pts = transform_points((landmarker or self.detector.landmarker)(rgb, face.box), m)  # type: ignore[attr-defined]
        return AlignedFace(crop=crop, matrix=m, face=face, landmarks68=pts)

    # ------------------------------------------------------------------ tensors
    def to_tensor(self, crops: np.ndarray) -> Tensor:
        """(B, S, S, 3) or (S, S, 3) uint8 crops -> (B, 3, n, n) float in [-1, 1] on the device."""
        crops = crops[None] if crops.ndim == 3 else crops
        if crops.shape[1] != self.img_size:
            crops = np.stack([cv2.resize(c, (self.img_size,) * 2, interpolation=cv2.INTER_AREA) for c in crops])
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (B, 3, n, n)

    def to_crops(self, x: Tensor) -> np.ndarray:
        """(B, 3, n, n) in [-1, 1] -> (B, S, S, 3) uint8 at the bundle's align_size."""
        a = x.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, n, n, 3)
        if a.shape[1] != self.align_size:
            a = np.stack([cv2.resize(c, (self.align_size,) * 2, interpolation=cv2.INTER_CUBIC) for c in a])
        return a

    @torch.inference_mode()
    def encode(self, x: Tensor) -> EncodedSource:
        """(B, 3, n, n) source faces -> the generator's per-source encoding (FlowFace++: encoder tokens,
        FaceShifter: identity embedding) and the faces themselves (the part `swap_frames` computes once)."""
        return EncodedSource(self.generator.encode_source(x), x)

    @torch.inference_mode()
    def generate(self, source: EncodedSource, target: Tensor) -> Tensor:
        """Encoded source (1 or B) + target (B, 3, n, n) -> swap (B, 3, n, n) in [-1, 1]: the same
        computation as the generator's forward."""
        return self.generator.swap_encoded(source.tokens, source.image, target)

    def swap_aligned(self, source_crops: np.ndarray | Tensor, target_crops: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Batch swap of already aligned faces.

        Tensors: (B, 3, n, n) in [-1, 1] at the generator's img_size -> same (source batch 1 is
        broadcast). Arrays: (B, S, S, 3) uint8 at align_size -> (B, S, S, 3) uint8.
        """
        if isinstance(source_crops, Tensor):
            assert isinstance(target_crops, Tensor), "mix of tensor and array inputs"
            return self.generate(self.encode(source_crops.to(self.device)), target_crops.to(self.device))
        out = self.generate(self.encode(self.to_tensor(source_crops)), self.to_tensor(target_crops))
        return self.to_crops(out)

    # ------------------------------------------------------------------ photos
    def generate_crop(self, e_s: EncodedSource, crop: np.ndarray) -> np.ndarray:
        """Source tokens + one aligned target crop (S, S, 3) uint8 -> the swapped crop, same shape."""
        return self.to_crops(self.generate(e_s, self.to_tensor(crop)))[0]

    def blend_mask(self, target: AlignedFace, swapped_crop: np.ndarray | None = None) -> np.ndarray:
        """The blend weight (S, S) float32 for pasting `swapped_crop` onto `target`.

        `shape` finds the generated face in `swapped_crop` (dlib HOG on the window around the
        target's face box, `find_output_face`) and reads its 68 landmarks with the pipeline's
        landmarker; when the output shows no face there, it uses the target's mask
        (`parsing`), counts the swap in `blend_fallbacks` and says why in `last_blend`."""
        if self.blend == "crop":  # independent of the face: compute once
            if self._mask_cache is None:
                self._mask_cache = face_mask(None, self.align_size, "crop")
            self.last_blend = "crop"
            return self._mask_cache
        if self.blend == "parsing" or swapped_crop is None:
            self.last_blend = "parsing"
            return face_mask(target.landmarks68, self.align_size, "parsing")
        box, why = find_output_face(swapped_crop, map_box(target.face.box, target.matrix))
        if box is None:
            self.blend_fallbacks += 1
            self.last_blend = f"parsing (fallback from shape: no face in the swap output: {why})"
            log.debug("blend %s", self.last_blend)
            return face_mask(target.landmarks68, self.align_size, "parsing")
        self.last_blend = "shape"
        pts = self.detector.landmarker(swapped_crop, box)  # type: ignore[attr-defined]  # (68, 2) crop pixels
        return face_mask(target.landmarks68, self.align_size, "shape", pts)

    @torch.inference_mode()
    def generate_with_mask(self, e_s: EncodedSource, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blend `model`: (the swapped crop (S, S, 3) uint8, the generator's own mask (S, S) float32 in [0, 1])."""
        out, mask = self.generator.output_mask(e_s.tokens, e_s.image, self.to_tensor(crop))
        m = mask[0, 0].float().cpu().numpy()  # (n, n)
        if m.shape[0] != self.align_size:
            m = cv2.resize(m, (self.align_size,) * 2, interpolation=cv2.INTER_LINEAR)
        return self.to_crops(out)[0], np.clip(m, 0.0, 1.0).astype(np.float32)

    def _swap_onto(self, e_s: EncodedSource, target_rgb: np.ndarray, which: str, **face) -> np.ndarray:
        """`face`: align()'s face / choose / landmarker, passed on only when set."""
        face = {k: v for k, v in face.items() if v is not None}
        if self.blend == "model":
            t = self.align(target_rgb, which, **face)
            out, mask = self.generate_with_mask(e_s, t.crop)
            self.last_blend = "model"
            return paste_back(target_rgb, out, t.matrix, mask)
        t = self.align(target_rgb, which, landmarks68=self.blend != "crop", **face)
        out = self.generate_crop(e_s, t.crop)  # (S, S, 3)
        return paste_back(target_rgb, out, t.matrix, self.blend_mask(t, out))

    def source_tokens(self, source_rgb: np.ndarray) -> EncodedSource:
        """Detect, align and encode the source once: tokens (1, N, L) and the face (1, 3, n, n)."""
        return self.encode(self.to_tensor(self.align(source_rgb, "source").crop))

    def swap_image(self, source_rgb: np.ndarray, target_rgb: np.ndarray, *,
                   target_face: FaceChooser | None = None) -> np.ndarray:
        """Source identity onto the target photo: (H_t, W_t, 3) uint8, same size as the target.
        `target_face` picks the swapped face when the target shows several (default: the largest).

        Raises NoFaceError ("source" / "target") when a photo has no detectable face; `last_blend`
        says which blend was used (`shape` falls back to `parsing` when the output has no face)."""
        e_s = self.source_tokens(source_rgb)
        return self._swap_onto(e_s, _check_rgb(target_rgb, "target"), "target", choose=target_face)

    def swap_frames(self, source_rgb: np.ndarray, frames: Iterable[np.ndarray], *, on_no_face: str = "keep",
                    target_face: FaceChooser | None = None, track: FaceTrack | None = None,
                    times: Iterable[float] | None = None) -> Iterator[np.ndarray]:
        """Swap every frame (RGB uint8), encoding the source once. A frame without a face is
        yielded unchanged (`on_no_face="keep"`, counted in `self.frames_without_face`) or raises
        NoFaceError("frame N") with `on_no_face="raise"`. Frames whose output showed no face for
        the `shape` blend are counted in `self.blend_fallbacks` (reset here).

        Without `track` every frame is detected on its own and `target_face` picks its face (default:
        the largest). With a FaceTrack the face is followed (detection every N frames, tracking and
        One-Euro smoothing in between; the track's own chooser picks the face); `times` are the frames'
        presentation times in seconds (default: frame index / NOMINAL_FPS)."""
        if on_no_face not in ("keep", "raise"):
            raise ValueError(f"on_no_face must be 'keep' or 'raise', got {on_no_face!r}")
        e_s = self.source_tokens(source_rgb)
        self.frames_without_face = 0
        self.blend_fallbacks = 0
        clock = iter(times) if times is not None else (i / NOMINAL_FPS for i in itertools.count())
        for i, frame in enumerate(frames):
            which, t = f"frame {i}", next(clock)
            try:
                frame = _check_rgb(frame, which)
                if track is None:
                    yield self._swap_onto(e_s, frame, which, choose=target_face)
                    continue
                face = track.locate(frame, t)
                if face is None:
                    raise NoFaceError(which, "no face found or tracked")
                yield self._swap_onto(e_s, frame, which, face=face, landmarker=track.landmarks68)
            except NoFaceError:
                if on_no_face == "raise":
                    raise
                self.frames_without_face += 1
                yield frame
