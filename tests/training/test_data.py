"""Training data: record join, face/pair items, pair sampling, sharded loader, exact resume."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from faceswap.faces.threedmm import LinearFaceModel
from faceswap.data.records import (
    IBUG68_MIRROR, FaceDataset, FaceRecords, PairDataset, batches_per_epoch, color_jitter, decode_only_rate,
    loader_rate, make_loader, resume_position, shard,
)
from paramsutil import augment  # noqa: E402

NO_AUG = augment(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, hflip=False)
FLIP_ONLY = augment(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, hflip=True)


def _load(t, split="train"):
    return FaceRecords.load(t["aligned_parquet"], t["aligned_dir"], t["segments_parquet"], t["parsing_dir"],
                            t["threedmm_parquet"], t["splits_parquet"], split=split)


# ----------------------------------------------------------------------------- records


def test_records_join_and_dropped(train_tables, train_records):
    r = train_records
    assert r.n == 16 and r.identities == ["id_0", "id_1", "id_2", "id_3"]
    assert np.bincount(r.identity_index).tolist() == [4, 4, 4, 4]
    assert r.dropped == {"no_segment": 1, "split_val": 2}
    assert r.landmarks68.shape == (16, 68, 2) and r.contour.shape == (16, 6, 2)
    assert r.shape.shape == (16, 3) and r.expression.shape == (16, 2) and r.camera.shape == (16, 3)
    everything = _load(train_tables, split=None)
    assert everything.n == 18 and everything.dropped == {"no_segment": 1}
    with pytest.raises(ValueError, match="no usable rows"):
        _load(train_tables, split="test")


# ----------------------------------------------------------------------------- face items


def test_face_item_shapes_dtypes_ranges(train_records):
    ds = FaceDataset(train_records, 32, augment=augment(hue=0.1, hflip=True), seed=1)
    assert len(ds) == 16
    it = ds[5]
    expect = {"image": (3, 32, 32), "parsing": (32, 32), "landmarks68": (68, 2), "contour": (6, 2),
              "shape": (3,), "expression": (2,), "pose": (3,), "camera": (3,), "identity": (), "index": ()}
    assert {k: tuple(v.shape) for k, v in it.items()} == expect
    for k in ("image", "landmarks68", "contour", "shape", "expression", "pose", "camera"):
        assert it[k].dtype == torch.float32, k
    assert it["parsing"].dtype == torch.int64 and it["identity"].dtype == torch.int64
    assert -1.0 <= float(it["image"].min()) < float(it["image"].max()) <= 1.0
    assert 0 <= int(it["parsing"].min()) and int(it["parsing"].max()) <= 6
    assert int(it["identity"]) == int(train_records.identity_index[5])


def test_item_at_stored_size_is_the_stored_data(train_records):
    r = train_records
    it = FaceDataset(r, 64)[3]
    png = cv2.cvtColor(cv2.imread(r.crop_paths[3]), cv2.COLOR_BGR2RGB)
    assert torch.allclose(it["image"], torch.from_numpy(png).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    assert np.array_equal(it["parsing"].numpy(), cv2.imread(r.parsing_paths[3], cv2.IMREAD_UNCHANGED))
    assert np.allclose(it["landmarks68"], r.landmarks68[3]) and np.allclose(it["contour"], r.contour[3])
    assert np.allclose(it["camera"], r.camera[3])


def test_coordinates_scale_with_size(train_tables, train_records):
    model = LinearFaceModel.load(train_tables["threedmm_model"])
    big, small = FaceDataset(train_records, 64)[7], FaceDataset(train_records, 32)[7]
    for k in ("landmarks68", "contour"):
        assert np.allclose(small[k], (big[k] + 0.5) * 0.5 - 0.5, atol=1e-5), k
    # the rescaled camera projects the model contour onto the rescaled contour
    c = train_records.coefficients(7).replace(camera=small["camera"].numpy().astype(np.float64))
    assert np.allclose(model.contour2d(c), small["contour"], atol=1e-3)
    assert small["image"].shape == (3, 32, 32)
    # downscaling keeps the content: the mean colour is preserved
    assert torch.allclose(small["image"].mean((1, 2)), big["image"].mean((1, 2)), atol=0.02)


def test_augmentation_is_a_pure_function_of_seed_epoch_index(train_records):
    ds = FaceDataset(train_records, 32, augment=augment(hue=0.05), seed=3)
    plain = FaceDataset(train_records, 32, augment=NO_AUG)[2]["image"]
    a, b = ds[(0, 2)]["image"], ds[(0, 2)]["image"]
    assert torch.equal(a, b)
    assert not torch.equal(a, ds[(1, 2)]["image"])  # another epoch, another jitter
    assert not torch.equal(a, plain)
    ds.set_epoch(1)
    assert torch.equal(ds[2]["image"], ds[(1, 2)]["image"])
    assert torch.equal(FaceDataset(train_records, 32, augment=augment(hue=0.05), seed=3)[(0, 2)]["image"], a)


def test_color_jitter_hand_cases():
    grey = np.full((2, 2, 3), 0.5, np.float32)
    assert np.allclose(color_jitter(grey, np.array([1.5, 1, 1, 0])), 0.75)  # brightness
    assert np.allclose(color_jitter(grey, np.array([1, 0.2, 1, 0])), 0.5)  # contrast keeps the mean
    rgb = np.array([[[0.8, 0.2, 0.4]]], np.float32)
    desat = color_jitter(rgb, np.array([1, 1, 0.0, 0]))
    assert np.allclose(desat, rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)  # saturation 0 -> grey
    soft = np.array([[[0.6, 0.45, 0.5]]], np.float32)
    turned = color_jitter(soft, np.array([1, 1, 1, 0.1]))  # no channel clips: the luma Y is kept
    assert np.abs(turned - soft).max() > 0.02
    assert np.allclose(turned @ np.array([0.299, 0.587, 0.114]), soft @ np.array([0.299, 0.587, 0.114]), atol=1e-4)
    assert np.allclose(color_jitter(rgb, np.array([1, 1, 1, 1.0])), rgb, atol=1e-5)  # a full turn
    with pytest.raises(ValueError):
        augment(brightness=1.5).validate()


def test_hflip_mirrors_everything_consistently(train_records):
    assert sorted(IBUG68_MIRROR.tolist()) == list(range(68))
    assert np.array_equal(IBUG68_MIRROR[IBUG68_MIRROR], np.arange(68))  # an involution
    s = 32
    plain_ds, flip_ds = FaceDataset(train_records, s, augment=NO_AUG), FaceDataset(train_records, s, augment=FLIP_ONLY)
    flipped = 0
    for i in range(8):
        p, f = plain_ds[i], flip_ds[i]
        if torch.equal(p["image"], f["image"]):
            assert torch.equal(p["landmarks68"], f["landmarks68"])
            continue
        flipped += 1
        assert torch.equal(f["image"], p["image"].flip(-1)) and torch.equal(f["parsing"], p["parsing"].flip(-1))
        mirror = lambda xy: torch.stack([(s - 1) - xy[:, 0], xy[:, 1]], 1)  # noqa: E731
        assert torch.allclose(f["landmarks68"], mirror(p["landmarks68"])[IBUG68_MIRROR])
        assert torch.allclose(f["contour"], mirror(p["contour"]).flip(0))
        assert torch.allclose(f["pose"], p["pose"] * torch.tensor([-1.0, 1.0, -1.0]))
        assert math.isclose(float(f["camera"][1]), (s - 1) - float(p["camera"][1]), abs_tol=1e-4)
    assert 0 < flipped < 8


# ----------------------------------------------------------------------------- pairs


def test_same_identity_ratio_and_pair_rules(train_records):
    r = train_records
    pairs = PairDataset(r, 32, same_identity_ratio=0.25, seed=0, length=4000, same="identity")
    chosen = [pairs.choose(0, i) for i in range(4000)]
    same = np.array([s for _, _, s in chosen])
    assert abs(same.mean() - 0.25) < 0.03
    for src, tgt, s in chosen:
        assert s == (r.identity_index[src] == r.identity_index[tgt])
        if s:
            assert src != tgt  # every identity has 4 faces: another face of the same person
    # the paper's reconstruction pairs (default): I_s = I_t, the very same image and augmentation
    paper = PairDataset(r, 32, same_identity_ratio=0.5, seed=0, length=200, augment=augment())
    n_same = 0
    for i in range(40):
        src, tgt, s = paper.choose(0, i)
        item = paper[i]
        assert bool(item["same_identity"]) == s
        if s:
            n_same += 1
            assert src == tgt and torch.equal(item["source"]["image"], item["target"]["image"])
        else:
            assert r.identity_index[src] != r.identity_index[tgt]
            assert not torch.equal(item["source"]["image"], item["target"]["image"])
    assert 10 <= n_same <= 30
    with pytest.raises(ValueError, match="same"):
        PairDataset(r, 32, same="twin")
    assert not any(s for _, _, s in (PairDataset(r, 32, same_identity_ratio=0.0).choose(0, i) for i in range(200)))
    assert all(s for _, _, s in (PairDataset(r, 32, same_identity_ratio=1.0).choose(0, i) for i in range(200)))


def test_pairs_depend_only_on_seed_epoch_index(train_records):
    def plan(seed, epoch):
        p = PairDataset(train_records, 32, seed=seed)
        return [p.choose(epoch, i) for i in range(len(p))]

    assert plan(0, 0) == plan(0, 0)
    assert plan(0, 0) != plan(1, 0) and plan(0, 0) != plan(0, 1)
    assert sorted(t for _, t, _ in plan(0, 2)) == list(range(16))  # each face is a target once per epoch
    p = PairDataset(train_records, 32, seed=0)
    p.set_epoch(1)
    a = p[4]
    assert int(a["target"]["index"]) == plan(0, 1)[4][1] and int(a["source"]["index"]) == plan(0, 1)[4][0]


def test_p12_is_build_p12_of_source_identity_and_target_rest(train_tables, train_records):
    model = LinearFaceModel.load(train_tables["threedmm_model"])
    pairs = PairDataset(train_records, 32, seed=2, threedmm_model=train_tables["threedmm_model"])
    for i in range(6):
        it = pairs[i]
        src, tgt = int(it["source"]["index"]), int(it["target"]["index"])
        ref = model.build_p12(train_records.coefficients(src), train_records.coefficients(tgt))  # crop px
        assert it["p12"].shape == (6, 2) and it["p12"].dtype == torch.float32
        assert np.allclose(it["p12"], (ref + 0.5) * 0.5 - 0.5, atol=1e-3)
        if src == tgt:
            assert np.allclose(it["p12"], it["target"]["contour"], atol=1e-3)
    # identity of the source changes P12 away from the target's own contour
    diffs = [float((pairs[i]["p12"] - pairs[i]["target"]["contour"]).abs().max()) for i in range(6)]
    assert max(diffs) > 0.1


def test_model_with_other_contour_is_refused(train_tables, train_records, tmp_path):
    m = LinearFaceModel.load(train_tables["threedmm_model"])
    other = LinearFaceModel(mean=m.mean, id_basis=m.id_basis, exp_basis=m.exp_basis, contour_idx=np.arange(4))
    other.save(tmp_path / "k4.npz")
    with pytest.raises(ValueError, match="4 contour points"):
        PairDataset(train_records, 16, threedmm_model=tmp_path / "k4.npz")


# ----------------------------------------------------------------------------- loader


def _keys(loader) -> list[int]:
    return [int(i) for b in loader for i in b["index"]]


def test_ranks_get_disjoint_shards_covering_the_epoch(train_records):
    ds = FaceDataset(train_records, 16)
    shards = [_keys(make_loader(ds, 4, seed=5, rank=k, world_size=2, epoch=3)) for k in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(16))
    assert _keys(make_loader(ds, 4, seed=5, rank=0, world_size=2, epoch=4)) != shards[0]
    # uneven: 18 items over 4 ranks -> padded to 20, every rank the same number of batches
    lens = [len(shard(18, seed=0, epoch=0, rank=k, world_size=4)) for k in range(4)]
    assert lens == [5, 5, 5, 5]
    assert set(np.concatenate([shard(18, seed=0, epoch=0, rank=k, world_size=4) for k in range(4)])) == set(range(18))
    assert batches_per_epoch(18, 2, 4) == 2 and batches_per_epoch(18, 2, 4, drop_last=False) == 3


def test_pair_batches_collate(train_tables, train_records):
    pairs = PairDataset(train_records, 16, threedmm_model=train_tables["threedmm_model"], augment=augment())
    b = next(iter(make_loader(pairs, 4)))
    assert b["source"]["image"].shape == (4, 3, 16, 16) and b["target"]["parsing"].shape == (4, 16, 16)
    assert b["same_identity"].shape == (4,) and b["same_identity"].dtype == torch.bool
    assert b["p12"].shape == (4, 6, 2) and b["target"]["pose"].shape == (4, 3)


def test_resume_mid_epoch_is_exact(train_records):
    pairs = PairDataset(train_records, 16, augment=augment(), seed=4)
    straight = make_loader(pairs, 4, seed=4, epochs=None)  # 4 batches per epoch
    it = iter(straight)
    ref = [next(it) for _ in range(7)]
    assert resume_position(5, batches_per_epoch(16, 4)) == (1, 1)
    resumed = iter(make_loader(pairs, 4, seed=4, epochs=None, skip_batches=5))
    for want in ref[5:]:
        got = next(resumed)
        assert torch.equal(got["source"]["image"], want["source"]["image"])
        assert torch.equal(got["target"]["index"], want["target"]["index"])
    assert len(make_loader(pairs, 4, epochs=2, skip_batches=3)) == 5


def test_workers_deliver_the_same_stream(train_records):
    ds = FaceDataset(train_records, 16, augment=augment(), seed=1)
    a = list(make_loader(ds, 4, seed=1, epoch=2))
    b = list(make_loader(ds, 4, seed=1, epoch=2, num_workers=2))
    assert len(a) == len(b) == 4
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["index"], y["index"]) for x, y in zip(a, b))


def test_preload_gives_the_same_items(train_tables, train_records):
    kw = dict(same_identity_ratio=0.5, seed=6, augment=augment(hflip=True),
              threedmm_model=train_tables["threedmm_model"])
    disk, mem = PairDataset(train_records, 32, **kw), PairDataset(train_records, 32, preload=True, **kw)
    assert mem.faces._cache[0].shape == (16, 32, 32, 3) and mem.faces._cache[1].shape == (16, 32, 32)
    for i in (0, 5, 11):
        a, b = disk[(1, i)], mem[(1, i)]
        for role in ("source", "target"):
            assert all(torch.equal(a[role][k], b[role][k]) for k in a[role]), (i, role)
        assert torch.equal(a["p12"], b["p12"])
    before = mem.faces._cache[0].copy()
    next(iter(make_loader(mem, 4)))
    assert np.array_equal(mem.faces._cache[0], before)  # items never write into the shared arrays


def test_rates_are_positive(train_records):
    assert 0 < decode_only_rate(train_records, 8) < math.inf
    assert 0 < loader_rate(FaceDataset(train_records, 16), 4, 0, 2) < math.inf
