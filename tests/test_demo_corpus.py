"""The generated demo corpus: deterministic, offline, and made of identities dlib tells apart."""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from faceswap.data import demo_corpus as dc

ROOT = Path(__file__).parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a[1:] if len(a) > 1 else a}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_same_seed_same_bytes_offline_without_the_package_code(tiny_corpus, tmp_path, offline, monkeypatch):
    """A fresh build (models reloaded, network refused) equals the session's corpus byte for byte,
    and nothing of the gan_face_generate package (its dataset download helper) was imported."""
    monkeypatch.setattr(dc, "_STATE", {})  # reload the generator weights and dlib models under `offline`
    monkeypatch.setattr(dc, "_LAYOUTS", {})
    again = dc.build_demo_corpus(tmp_path / "raw", identities=5, per_identity=4)
    a, b = _files(tiny_corpus), _files(again)
    assert a.keys() == b.keys() and len(a) == 5 * 4 + 4 + 1
    assert [k for k in a if a[k] != b[k]] == []
    assert not [m for m in sys.modules if m.split(".")[0] == "gan_face_generate"]
    assert dc.generator_weights_path().is_file()


def test_other_seed_other_faces(tiny_corpus, tmp_path):
    other = dc.build_demo_corpus(tmp_path / "raw", identities=2, per_identity=1, seed=1)
    assert (other / "id_000/000.jpg").read_bytes() != (tiny_corpus / "id_000/000.jpg").read_bytes()


def _anchors_and_faces(root: Path) -> tuple[dict, np.ndarray, list[tuple[int, np.ndarray]]]:
    """From the corpus record: anchor embeddings and every kept perturbed face, recomputed."""
    meta = json.loads((root / ".demo_corpus.json").read_text())
    state = dc._make_state()
    latents = np.array([i["latent"] for i in meta["identities"]], np.float32)
    anchor_faces = dc.render(state["net"], latents)
    anchors = np.stack([dc.embed_face(state, f) for f in anchor_faces])
    wanted = int(np.ceil(meta["per_identity"] / meta["images_per_face"])) - 1
    kept = []
    seen = set()
    for r in meta["images"]:
        k = int(r["identity"][3:])
        if r["candidate"] < 0 or (k, r["candidate"]) in seen:
            continue
        seen.add((k, r["candidate"]))
        s, noise = dc._perturbation(meta["seed"], k, r["candidate"], wanted)
        assert s == pytest.approx(r["latent_scale"])
        face = dc.render(state["net"], (latents[k] + s * noise)[None])[0]
        kept.append((k, dc.embed_face(state, face)))
    return meta, anchors, kept


def test_identities_are_distinct_and_every_face_is_nearest_its_own_anchor(tiny_corpus):
    meta, anchors, kept = _anchors_and_faces(tiny_corpus)
    d = np.linalg.norm(anchors[:, None] - anchors[None], axis=2)
    off = d[~np.eye(len(anchors), dtype=bool)]
    assert off.min() > dc.ANCHOR_MARGIN, "two identities' anchors are closer than the margin"
    assert meta["min_anchor_distance"] == pytest.approx(off.min(), abs=1e-6)
    assert len(kept) == 5 * (2 - 1)  # per identity: 4 images = 2 faces (anchor + 1 perturbation)
    for k, e in kept:
        assert e is not None, "a kept face is no longer found by dlib"
        dist = np.linalg.norm(anchors - e, axis=1)
        assert dist[k] < dc.KEEP_DISTANCE
        assert int(np.argmin(dist)) == k, f"identity {k}: face nearer anchor {int(np.argmin(dist))}"


def test_selection_rules_reject_what_they_should(monkeypatch):
    """Perturbations far from their anchor, or nearer another anchor, are not kept (fake embeddings)."""
    anchors = {"latents": np.zeros((2, dc.LATENT_DIM), np.float32), "faces": np.zeros((2, 64, 64, 3), np.uint8),
               "embeddings": np.array([[0.0, 0.0], [0.6, 0.0]])}
    # candidate j of identity k embeds at a scripted point (KEEP_DISTANCE 0.5)
    script = {(0, 0): [0.1, 0.0],    # near anchor 0: kept
              (0, 1): [0.35, 0.0],   # within 0.5 of anchor 0, but anchor 1 is nearer: refused
              (0, 2): [0.0, 0.55],   # too far from anchor 0: refused
              (0, 3): None,          # no face: refused
              (0, 4): [-0.1, 0.1],   # kept
              (1, 0): [0.25, 0.0],   # within 0.5 of anchor 1, but anchor 0 is nearer: refused
              (1, 1): [0.7, 0.1]}    # kept; every other candidate embeds far away
    calls = []

    def fake_evaluate(latents, workers, desc, size=None):
        out = []
        for z in latents:
            k, j = int(round(z[0])), int(round(z[1]))
            calls.append((k, j))
            e = script.get((k, j), [9.0, 9.0])
            out.append((np.zeros((64, 64, 3), np.uint8), None if e is None else np.array(e)))
        return out

    def fake_perturbation(seed, k, j, wanted):
        return 1.0, np.array([k, j] + [0] * (dc.LATENT_DIM - 2), np.float32)

    monkeypatch.setattr(dc, "_evaluate", fake_evaluate)
    monkeypatch.setattr(dc, "_perturbation", fake_perturbation)
    kept = dc.perturb_identities(anchors, wanted=2, seed=0, max_tries=6)
    assert [e["candidate"] for e in kept[0]] == [0, 4]
    assert [e["candidate"] for e in kept[1]] == [1]  # (1, 2..5) embed far away: nothing else kept
    assert all(e["own_distance"] < dc.KEEP_DISTANCE and e["own_distance"] < e["nearest_other"]
               for ks in kept for e in ks)


def test_independent_set_respects_the_margin():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8)) * 0.3
    chosen = dc._independent_set(emb, 0.5)
    d = np.linalg.norm(emb[chosen][:, None] - emb[chosen][None], axis=2)
    assert (d[~np.eye(len(chosen), dtype=bool)] > 0.5).all()
    # maximal: every face left out conflicts with a chosen one
    others = [i for i in range(60) if i not in chosen]
    assert all(np.linalg.norm(emb[chosen] - emb[i], axis=1).min() <= 0.5 for i in others)


def test_generator_is_only_used_by_the_demo_source():
    """Training and evaluation code never imports the generator or its package."""
    offenders = []
    for folder in ("faceswap_models", "flows", "stages"):
        for p in (ROOT / folder).rglob("*.py"):
            text = p.read_text()
            if "gan_face_generate" in text or ("demo_corpus" in text and p.name != "ingest.py"):
                offenders.append(str(p.relative_to(ROOT)))
    assert offenders == []
