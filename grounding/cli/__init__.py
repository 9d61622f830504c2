"""The `grounding` command. Errors become one line on stderr and a non-zero exit; subcommands live in
repos.py (ingest, ask, serve), models.py (eval and training) and access.py (grants)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from grounding.cli import access, models, repos
from grounding.cli.common import EXIT_ERROR, EXIT_USAGE
from grounding.errors import GroundingError

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grounding", description="Grounded answers about your code, cited to file and line."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (repos, models, access):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except GroundingError as err:
        print(f"grounding: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("grounding: interrupted", file=sys.stderr)
        return 130
