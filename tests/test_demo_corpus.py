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
    """From the corpus record: anchor embeddings and every kept perturbed face, recomputed from its
    candidate index (`candidate_latent` with the recorded expression directions)."""
    meta = json.loads((root / ".demo_corpus.json").read_text())
    state = dc._make_state()
    latents = np.array([i["latent"] for i in meta["identities"]], np.float32)
    anchor_faces = dc.render(state["net"], latents)
    anchors = np.stack([dc.embed_face(state, f) for f in anchor_faces])
    wanted = int(np.ceil(meta["per_identity"] / meta["images_per_face"])) - 1
    expression = dc.expression_directions(meta["seed"])
    np.testing.assert_allclose(expression["directions"], meta["expression"]["directions"], atol=1e-9)
    kept = []
    seen = set()
    for r in meta["images"]:
        k = int(r["identity"][3:])
        if r["candidate"] < 0 or (k, r["candidate"]) in seen:
            continue
        seen.add((k, r["candidate"]))
        z, s = dc.candidate_latent(latents[k], meta["seed"], k, r["candidate"], wanted, expression)
        assert s == pytest.approx(r["latent_scale"])
        np.testing.assert_allclose(dc.expression_offsets(meta["seed"], k, r["candidate"], wanted),
                                   r["expression_offsets"], atol=1e-12)
        face = dc.render(state["net"], z[None])[0]
        np.testing.assert_allclose(dc.face_measures(state, face), r["measures"], atol=1e-6)
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

    def fake_evaluate(latents, workers, desc, size=None, measure=True):
        out = []
        for z in latents:
            k, j = int(round(z[0])), int(round(z[1]))
            calls.append((k, j))
            e = script.get((k, j), [9.0, 9.0])
            out.append((np.zeros((64, 64, 3), np.uint8), None if e is None else np.array(e),
                        None if e is None else np.zeros(7)))
        return out

    def fake_perturbation(seed, k, j, wanted):
        return 1.0, np.array([k, j] + [0] * (dc.LATENT_DIM - 2), np.float32)

    monkeypatch.setattr(dc, "_evaluate", fake_evaluate)
    monkeypatch.setattr(dc, "_perturbation", fake_perturbation)
    monkeypatch.setattr(dc, "_make_state", dict)  # no models: the face mesh below is faked too
    monkeypatch.setattr(dc, "_measure_face", lambda state, face: np.zeros(7))
    kept = dc.perturb_identities(anchors, wanted=2, seed=0, max_tries=6)
    assert [e["candidate"] for e in kept[0]] == [0, 4]
    assert [e["candidate"] for e in kept[1]] == [1]  # (1, 2..5) embed far away: nothing else kept
    assert all(e["own_distance"] < dc.KEEP_DISTANCE and e["own_distance"] < e["nearest_other"]
               for ks in kept for e in ks)


def test_expression_directions_move_their_measure_and_little_else(tiny_corpus):
    """A step of +-EXPRESSION_OFFSET / 2 stds (a typical candidate's |offset|) along each learned direction,
    from 12 random faces the mesh reads, moves that measure the right way by about the intended size, and
    no other measure twice as far."""
    meta = json.loads((tiny_corpus / ".demo_corpus.json").read_text())
    assert meta["expression"]["anchor_offset"].startswith("none")
    ex = dc.expression_directions(meta["seed"])
    state = dc._make_state()
    draws = np.random.default_rng([meta["seed"], 0xE59]).standard_normal((32, dc.LATENT_DIM)).astype(np.float32)
    base = [z for z in draws if dc.face_measures(state, dc.render(state["net"], z[None])[0]) is not None][:12]
    assert len(base) == 12  # faces the mesh reads before the step (about 3 in 4 random latents)
    for i, name in enumerate(dc.EXPRESSION_DIRECTIONS):
        a = dc.EXPRESSION_OFFSET[i] / 2
        off = np.zeros(len(dc.EXPRESSION_DIRECTIONS))
        off[i] = a
        moved = []
        for z in base:
            up = dc.face_measures(state, dc.render(state["net"], (z + dc.expression_step(ex, off))[None])[0])
            down = dc.face_measures(state, dc.render(state["net"], (z - dc.expression_step(ex, off))[None])[0])
            if up is not None and down is not None:
                moved.append((dc.direction_measures(up) - dc.direction_measures(down)) / ex["measure_std"])
        moved = np.array(moved)  # (faces, 5): the real change, in stds, for an intended 2a on measure i
        assert len(moved) >= 8, f"{name}: the face mesh lost most moved faces"
        own = float(np.median(moved[:, i]))
        assert 0.3 * 2 * a < own < 2.5 * 2 * a, f"{name}: moved {own:.2f} stds for an intended {2 * a}"
        assert (moved[:, i] > 0).mean() >= 0.75, f"{name}: the step moves the measure the wrong way too often"
        # unconditioned directions (CONDITIONAL False) move the other measures too: measured, the brows step also
        # lowers the corner lift by 1.76 stds for its own 1.33; a broken direction would move others far more
        others = np.delete(np.abs(np.median(moved, axis=0)), i)
        assert others.max() < 2 * own, f"{name}: another measure moves far more ({others.round(2)}) than its own {own:.2f}"


def test_varied_passing_equals_testing_every_candidate_with_fewer_recogniser_calls(monkeypatch):
    """The lazy choice (face mesh on every candidate, recogniser only where the greedy choice reaches) keeps
    exactly what `choose_varied` keeps of all passing candidates, FAR_SHARE rule included; an identity with
    too few passes gets top-ups up to max_tries and keeps what passed."""
    rng = np.random.default_rng(3)
    wanted, max_tries = 4, 48
    n_cand = dc.CANDIDATE_POOL * wanted
    measures = rng.normal(0.0, 0.05, (2, max_tries, 7))
    measures[0, rng.random(max_tries) < 0.1] = np.nan  # the face mesh misses these
    passes = np.stack([rng.random(max_tries) < 0.45, np.arange(max_tries) == 40])  # identity 1: one pass, late
    own = rng.uniform(0.2, 0.5, (2, max_tries))
    expression = {"identity": np.zeros((dc.LATENT_DIM, 0), np.float32), "measure_std": np.ones(5),
                  "gain": np.ones(5), "directions": np.zeros((5, dc.LATENT_DIM), np.float32)}
    anchors = {"latents": np.zeros((2, dc.LATENT_DIM), np.float32), "embeddings": np.array([[0.0, 0.0], [5.0, 0.0]]),
               "measures": [np.zeros(7), np.zeros(7)]}
    tested = []

    def fake_map(fn, jobs, workers, desc):
        if fn is dc._render_and_measure_face:  # job: latent; k, j read back from the faked perturbation
            kj = [(int(round(z[0] / dc.EXPRESSION_PERTURB)), int(round(z[1] / dc.EXPRESSION_PERTURB))) for z in jobs]
            return [(np.array(c), None if np.isnan(measures[c]).any() else measures[c], (0, 0, 9, 9)) for c in kj]
        assert fn is dc._embed_job
        assert all(box == (0, 0, 9, 9) for _, box in jobs)  # the HOG box found while measuring
        tested.extend(tuple(int(v) for v in f) for f, _ in jobs)
        return [np.array([5.0 * k + own[k, j], 0.0]) if passes[k, j] else np.array([9.0, 9.0]) for (k, j), _ in jobs]

    monkeypatch.setattr(dc, "_map", fake_map)
    monkeypatch.setattr(dc, "_perturbation", lambda seed, k, j, w: (1.0, np.array([k, j] + [0] * (dc.LATENT_DIM - 2),
                                                                                  np.float32)))
    kept = dc.perturb_identities(anchors, wanted, seed=0, max_tries=max_tries, expression=expression)
    passers = [{"candidate": j, "measures": measures[0, j], "own_distance": own[0, j]} for j in range(n_cand)
               if passes[0, j] and not np.isnan(measures[0, j]).any()]
    assert len(passers) > wanted
    expected = [p["candidate"] for p in dc.choose_varied(passers, np.zeros(7), expression, wanted)]
    assert [e["candidate"] for e in kept[0]] == expected
    assert sum(own[0, j] >= dc.FAR_DISTANCE for j in expected) <= int(dc.FAR_SHARE * wanted)
    assert len([t for t in tested if t[0] == 0]) <= n_cand // 2  # measured: 11 of the 32 candidates
    assert [e["candidate"] for e in kept[1]] == [40] and len([t for t in tested if t[0] == 1]) <= max_tries
    assert all(e["offsets"].shape == (5,) and e["own_distance"] < dc.KEEP_DISTANCE for ks in kept for e in ks)


def test_spread_selection_picks_the_most_varied():
    pts = np.array([[0.1, 0.0], [3.0, 0.0], [0.0, 2.9], [2.9, 0.1], [-3.0, -3.0]])
    assert dc.spread_selection(pts, np.zeros(2), 2) == [1, 4]  # (-3,-3) first, then (3, 0)
    assert dc.spread_selection(pts, np.zeros(2), 3) == [1, 2, 4]
    assert dc.spread_selection(pts, np.zeros(2), 9) == [0, 1, 2, 3, 4]


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
