"""User-facing errors: one paragraph naming the problem and the fix, a non-zero exit, no traceback."""
from __future__ import annotations

import argparse
import functools
import sys
import textwrap
from collections.abc import Callable

from semisup.errors import SemisupError


class UserError(Exception):
    """A problem with the user's input or environment that the user can fix."""


class ConfigError(UserError):
    """A parameter or a run config that is not allowed (pipeline/validation.py names the key,
    the value and what is allowed)."""


USER_ERRORS = (UserError, SemisupError)
EXIT_USER_ERROR = 2


def report(error: BaseException, stream=None) -> None:
    # sys.stderr looked up at call time (a default argument would pin the one at import time).
    stream = stream or sys.stderr
    message = " ".join(str(error).split())
    # Never break inside a word: paths and keys in the message must stay whole to be copied.
    print(textwrap.fill(f"ssl-repro error: {message}", width=100, break_long_words=False,
                        break_on_hyphens=False), file=stream)


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """The argument parser of a module's CLI: its docstring as the help, line breaks kept."""
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def cli(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], None]:
    """Wrap a module's main(): user errors print one paragraph and exit 2; bugs keep tracebacks."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        except USER_ERRORS as error:
            report(error)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
