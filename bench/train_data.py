"""Training-loader benchmark: decode-only ceiling vs what the pair loader delivers (0 and 2 workers).

A training sample is a (source, target) pair: two crops + two parsing maps decoded, resized,
jittered, plus P12 from the 3DMM. The ceiling is one process decoding the PNGs alone, in pairs/s
(faces/s / 2); the fractions compare the loader with 0 workers to it and with 2 workers to twice it.
"preloaded" is the same loader with the faces decoded and resized once up front (preload=True).

Usage: python -m bench.train_data [--data data] [--size 64 --batch-size 4] [--json out.json]
(size and batch default to params.yaml train_swap, the demo config).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("FACESWAP_NO_PROGRESS", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from faceswap import params  # noqa: E402
from faceswap.core.layout import DataLayout  # noqa: E402
from faceswap.data.records import (  # noqa: E402
    FaceRecords, PairDataset, decode_only_rate, loader_rate,
)

REPO = Path(__file__).resolve().parents[1]

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
AUGMENT = params.load(REPO_PARAMS).train_swap.augment  # as the swap stage trains


def tables_in(data: str | os.PathLike) -> dict[str, str]:
    """The prepared-table paths of a data folder as the stages write them (dvc.yaml outs)."""
    d = DataLayout(data)
    return {
        "aligned_parquet": str(d.aligned), "aligned_dir": str(d.aligned_dir),
        "segments_parquet": str(d.segments), "parsing_dir": str(d.parsing_dir),
        "threedmm_parquet": str(d.threedmm), "threedmm_model": str(d.threedmm_model),
        "splits_parquet": str(d.splits),
    }


def loader_figures(tables: dict, size: int, batch_size: int, *, n_batches: int = 40,
                   train_samples_per_s: float | None = None) -> dict:
    """Decode-only pairs/s (ceiling), pair-loader pairs/s with 0 and 2 workers, fractions of the
    ceiling, and (given the training step's consumption) the loader's headroom over it."""
    torch.set_num_threads(1)  # as a training worker with one thread; more only contend with the workers
    records = FaceRecords.load(tables["aligned_parquet"], tables["aligned_dir"], tables["segments_parquet"],
                               tables["parsing_dir"], tables["threedmm_parquet"], tables["splits_parquet"])
    pairs = PairDataset(records, size, same_identity_ratio=0.25, augment=AUGMENT,
                        threedmm_model=tables.get("threedmm_model"))
    decode_faces = decode_only_rate(records, max(2 * n_batches * batch_size, 200))
    ceiling = decode_faces / 2.0
    w0 = loader_rate(pairs, batch_size, 0, n_batches)
    w2 = loader_rate(pairs, batch_size, 2, n_batches)
    t = time.perf_counter()
    cached = PairDataset(records, size, same_identity_ratio=0.25, augment=AUGMENT,
                         threedmm_model=tables.get("threedmm_model"), preload=True)
    preload_s = time.perf_counter() - t
    p0 = loader_rate(cached, batch_size, 0, n_batches)
    p2 = loader_rate(cached, batch_size, 2, n_batches)
    out = {
        "size": size, "batch_size": batch_size, "faces": records.n,
        "decode_only_faces_per_s": round(decode_faces, 1),
        "decode_only_pairs_per_s": round(ceiling, 1),
        "loader_pairs_per_s_0_workers": round(w0, 1),
        "loader_pairs_per_s_2_workers": round(w2, 1),
        "fraction_of_ceiling_0_workers": round(w0 / ceiling, 3),
        "fraction_of_ceiling_2_workers": round(w2 / (2 * ceiling), 3),
        "preload_seconds": round(preload_s, 2),
        "preloaded_pairs_per_s_0_workers": round(p0, 1),
        "preloaded_pairs_per_s_2_workers": round(p2, 1),
    }
    if train_samples_per_s:
        out["train_samples_per_s"] = round(train_samples_per_s, 2)
        for k in ("loader_pairs_per_s_0_workers", "loader_pairs_per_s_2_workers",
                  "preloaded_pairs_per_s_0_workers", "preloaded_pairs_per_s_2_workers"):
            out[k.replace("_pairs_per_s", "_over_train")] = round(out[k] / train_samples_per_s, 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    swap = params.get("train_swap", {})
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "data"), help="folder holding the prepared tables")
    ap.add_argument("--size", type=int, default=int(params["pretrain_mae"]["image_size"]))
    ap.add_argument("--batch-size", type=int, default=int(swap.get("batch_size", 4)))
    ap.add_argument("--batches", type=int, default=40, help="timed batches per loader figure")
    ap.add_argument("--train-samples-per-s", type=float, default=None,
                    help="training consumption (samples/s) to compare the loader with")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    figs = loader_figures(tables_in(args.data), args.size, args.batch_size, n_batches=args.batches,
                          train_samples_per_s=args.train_samples_per_s)
    width = max(map(len, figs))
    print("training loader (pairs = source + target faces)")
    for k, v in figs.items():
        print(f"  {k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(figs, indent=2) + "\n")
    return figs


if __name__ == "__main__":
    main()
