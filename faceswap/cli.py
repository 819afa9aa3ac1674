"""The `faceswap` console script: the stage CLIs and the user commands, dispatched by name.

It sits above every layer (it imports the stages it dispatches), so nothing imports it but tests.
Each command's module is imported only when that command runs: a stage's imports (torch, mediapipe,
Ray) take seconds that `faceswap verify` or `faceswap --help` should not pay.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

COMMANDS = ("ingest", "filter", "align", "segment", "threedmm", "split", "train_aux", "pretrain_mae",
            "train_shape", "train_swap", "train_faceshifter", "train_hearnet", "ifsr_margins",
            "train_facedancer", "train_hififace", "train", "evaluate", "register",
            "swap", "verify")


def command(name: str) -> Callable[[list[str]], int]:
    """The function behind `faceswap NAME` (argv without the name -> exit code)."""
    match name:
        case "swap" | "verify":
            from faceswap.serving import swap_cli
            return swap_cli.swap_main if name == "swap" else swap_cli.verify_main
        case "ingest":
            from stages import ingest as stage
        case "filter":
            from stages import filter as stage
        case "align":
            from stages import align as stage
        case "segment":
            from stages import segment as stage
        case "threedmm":
            from stages import threedmm as stage
        case "split":
            from stages import split as stage
        case "train_aux":
            from stages import train_aux as stage
        case "pretrain_mae":
            from stages import pretrain_mae as stage
        case "train_shape":
            from stages import train_shape as stage
        case "train_swap":
            from stages import train_swap as stage
        case "train_faceshifter":
            from stages import train_faceshifter as stage
        case "train_hearnet":
            from stages import train_hearnet as stage
        case "ifsr_margins":
            from stages import ifsr_margins as stage
        case "train_facedancer":
            from stages import train_facedancer as stage
        case "train_hififace":
            from stages import train_hififace as stage
        case "train":
            return train_main
        case "evaluate":
            from stages import evaluate as stage
        case "register":
            from stages import register as stage
        case _:
            raise KeyError(name)
    return stage.main


def train_main(argv: list[str]) -> int:
    """`faceswap train ARCHITECTURE`: run the architecture's training stages in order (dvc.yaml's train@<name>).

    Each stage is its own Ray run, checkpoint folder and MLflow run. A stage before the last writes its
    bundle to `<out-dir>/<stage>` and the next one reads it (`--input-bundle`); the last writes `--out-dir`.
    Per-step curves go to `<plots-dir>/<stage>_steps.csv`; `--metrics` gets {stage: its metrics}. Other
    options (the data tables' paths, FlowFace++'s --mae-dir ...) go to every stage as given."""
    import argparse
    import json
    import tempfile
    from pathlib import Path

    from faceswap.core.cli import write_metrics
    from faceswap_models.architectures import architecture

    p = argparse.ArgumentParser(prog="faceswap train", description=train_main.__doc__.splitlines()[0])
    p.add_argument("architecture", help="a key of faceswap_models/architectures.py (params `architectures`)")
    p.add_argument("--out-dir", required=True, help="the architecture's bundle folder")
    p.add_argument("--metrics", default=None, help="JSON {stage: metrics}")
    p.add_argument("--plots-dir", default=None, help="folder for each stage's per-step CSV")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--checkpoint-root", default=None, help="override train.checkpoint_root")
    p.add_argument("--init-bundle", default=None, help="fine-tune from this bundle (same architecture)")
    a, passed_on = p.parse_known_args(argv)
    arch = architecture(a.architecture)
    out, previous, report = Path(a.out_dir), None, {}
    if a.plots_dir:
        Path(a.plots_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i, stage in enumerate(arch.train_stages):
            stage_out = out if i == len(arch.train_stages) - 1 else out / stage
            args = ["--out-dir", str(stage_out), "--params", a.params, "--metrics", str(Path(tmp) / f"{stage}.json")]
            args += ["--plots", str(Path(a.plots_dir) / f"{stage}_steps.csv")] if a.plots_dir else []
            args += ["--checkpoint-root", a.checkpoint_root] if a.checkpoint_root else []
            args += ["--init-bundle", a.init_bundle] if a.init_bundle else []
            args += ["--input-bundle", str(previous)] if previous is not None else []
            rc = command(stage)(args + passed_on)
            if rc:
                return rc
            report[stage] = json.loads((Path(tmp) / f"{stage}.json").read_text("utf-8"))
            previous = stage_out
    write_metrics(a.metrics, report)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: faceswap {" + ",".join(COMMANDS) + "} [options]  (see: faceswap COMMAND --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return command(argv[0])(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
