"""The `swarmnode` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmnode",
        description=(
            "Swarm Learning node: train one model across sites whose data never leaves them, "
            "with a BFT ledger and threshold-CKKS secure merges."
        ),
    )
    parser.add_argument("--version", action="version", version=f"swarmnode {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0
