"""One-line errors on the command line: ``error: <what is wrong and what to do>`` on stderr, exit code 2.

The mains of train.py, sample.py, eval.py and scripts/ are wrapped in :func:`cli_errors`. It turns the errors a
user can cause and fix (a bad config value, a missing, truncated or wrong checkpoint or image, an unsafe
checkpoint) into one line; any other exception is a bug and keeps its traceback. ``GRN_DEBUG=1`` shows the
traceback of these too (docs/errors.md).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf.errors import OmegaConfBaseException

DEBUG_ENV = "GRN_DEBUG"

# ValueError covers ConfigError, grn.checkpoints.UnsafeCheckpointError and the loaders' checkpoint errors;
# OSError covers FileNotFoundError; OmegaConf's errors are config keys that are missing or do not resolve
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, OmegaConfBaseException)


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what to change."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (KeyError without its quotes, OmegaConf's without its key dump)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]
    elif isinstance(err, OSError) and err.strerror and err.filename:  # the OS's own: "[Errno 2] ..." otherwise
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err)
    if isinstance(err, OmegaConfBaseException):
        text = text.strip().splitlines()[0] if text.strip() else ""
    return " ".join(text.split()) or type(err).__name__


def cli_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn``; a user error (:data:`USER_ERRORS`, or ``SystemExit("message")``) prints ``error: <one line>``
    to stderr and exits with 2 (``$GRN_DEBUG`` set: it is re-raised instead, traceback and all). Under
    ``@hydra.main``, put it below the Hydra decorator: Hydra prints a traceback for any exception that leaves the
    task function, but lets SystemExit through."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (*USER_ERRORS, SystemExit) as err:
            message = err.code if isinstance(err, SystemExit) else one_line(err)
            if isinstance(message, str):
                message = " ".join(message.split()).removeprefix("error: ")
            if not isinstance(message, str) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise  # an exit status (argparse's usage error: 2), or the debug switch
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
