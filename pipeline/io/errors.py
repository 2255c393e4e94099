"""Exceptions whose message is one line naming the bad input, and the wrapper that prints them as such."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

DEBUG_ENV = "HSPACE_DEBUG"
"""Environment variable: set to 1 to see the full traceback of a :class:`PipelineError` (off by default)."""


class PipelineError(Exception):
    """Base class: a user-facing error whose ``str`` is one line naming the cause."""


class ConfigError(PipelineError, ValueError):
    """A configuration value (or function argument) is unknown, of the wrong type or out of range."""


class ModelNotFoundError(PipelineError, FileNotFoundError):
    """A model id or folder cannot be resolved to weights available on this machine."""


class NumericalError(PipelineError, FloatingPointError):
    """A model produced NaN or inf; the message names where (for example the timestep)."""


def debug_enabled() -> bool:
    """True when ``HSPACE_DEBUG`` asks for tracebacks (any value but empty, 0, false or no)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def run_main(main: Callable[[], object]) -> None:
    """Run a command's ``main``: a :class:`PipelineError` prints ``error: <message>`` on stderr, alone, and exits
    with status 1 (the message names the key or file at fault and the fix; a traceback would bury it). With
    ``HSPACE_DEBUG=1`` the error propagates with its traceback. Other exceptions are bugs and keep theirs."""
    try:
        main()
    except PipelineError as error:
        if debug_enabled():
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
