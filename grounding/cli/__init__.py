"""The `grounding` command. Errors become one line on stderr and a non-zero exit; subcommands live in
repos.py (ingest, ask, serve), models.py (eval and training), access.py (grants, tokens) and service.py
(api, mcp)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings

from grounding.cli import access, models, repos, service
from grounding.cli.common import EXIT_ERROR, EXIT_USAGE
from grounding.errors import GroundingError

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grounding", description="Grounded answers about your code, cited to file and line."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (repos, models, access, service):
        group.register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is logged, not to the stream of the first call (a test's
    captured stream is closed after the test; a handler holding it would fail every later record)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _quiet_libraries() -> None:
    """Only grounding's own lines on a terminal: no library's warnings (a deprecation in a dependency is not the
    user's to act on) and no progress bar of Hugging Face's ("Loading weights 103/103"); -v shows them again.
    Our own progress bars (ingest, training) are plain tqdm and stay."""
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"grounding(\.|$)")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it at import
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # imported before main ran (a test, an embedding script)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _log_to_stderr(level: int) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:
        _quiet_libraries()
    _log_to_stderr(logging.INFO if args.verbose else logging.WARNING)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that closed the pipe is met here, not in an error at exit
        return code
    except GroundingError as err:
        print(f"grounding: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("grounding: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `grounding ask ... | head -1`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except Exception as err:  # a bug, not bad input: still one line, the traceback with -v
        if args.verbose:
            raise
        first = (str(err).splitlines() or [""])[0][:300]
        print(
            f"grounding: unexpected error: {type(err).__name__}: {first} (run with -v for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR
