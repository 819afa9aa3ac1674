"""The `faceswap` console script: the stage CLIs and the user commands, dispatched by name.

It sits above every layer (it imports the stages it dispatches), so nothing imports it but tests.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

from faceswap.serving import swap_cli
from stages import (
    align, evaluate, filter, ingest, pretrain_mae, register, segment, split, threedmm, train_aux, train_shape,
    train_swap,
)

# name -> function taking argv (without the name) and returning an exit code.
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "ingest": ingest.main, "filter": filter.main, "align": align.main, "segment": segment.main,
    "threedmm": threedmm.main, "split": split.main, "train_aux": train_aux.main,
    "pretrain_mae": pretrain_mae.main, "train_shape": train_shape.main, "train_swap": train_swap.main,
    "evaluate": evaluate.main, "register": register.main,
    "swap": swap_cli.swap_main, "verify": swap_cli.verify_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: faceswap {" + ",".join(COMMANDS) + "} [options]  (see: faceswap COMMAND --help)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
