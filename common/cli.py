"""The command-line convention of every stage: a user's mistake is one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn


class CliError(Exception):
    """A problem with the user's input or environment: printed as one line, never as a traceback."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_dir():
        raise CliError(f"{what} {path} is not a directory{'; ' + hint if hint else ''}")
    return path


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a stage's main(); a CliError becomes one line on stderr and exit status 1."""
    try:
        code = main(argv)
    except CliError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
