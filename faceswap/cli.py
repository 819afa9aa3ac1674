"""The `faceswap` console script: the stage CLIs and the user commands, dispatched by name.

It sits above every layer (it imports the stages it dispatches), so nothing imports it but tests.
Each command's module is imported only when that command runs: a stage's imports (torch, mediapipe,
Ray) take seconds that `faceswap verify` or `faceswap --help` should not pay.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

COMMANDS = ("ingest", "filter", "align", "segment", "threedmm", "split", "train_aux", "pretrain_mae",
            "train_shape", "train_swap", "evaluate", "register", "swap", "verify")


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
        case "evaluate":
            from stages import evaluate as stage
        case "register":
            from stages import register as stage
        case _:
            raise KeyError(name)
    return stage.main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: faceswap {" + ",".join(COMMANDS) + "} [options]  (see: faceswap COMMAND --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return command(argv[0])(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
