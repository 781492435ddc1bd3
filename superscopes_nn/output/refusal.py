"""How the commands answer a refusal: one ``error: ...`` line, exit status 2, no traceback.

``superscopes explain`` / ``demo`` / ``plan``, ``superscopes run NAME`` and ``python -m experiments NAME``
all run through :func:`guarded`, so a bad value, a step a run cannot take (e.g. ``--remote`` on a script
that needs local weights) or an NDIF error reads the same everywhere.
"""

from __future__ import annotations

import sys
import warnings

from ..core.dirlock import RunDirBusy

__all__ = ["ERRORS", "guarded", "one_line"]

ERRORS = (ValueError, KeyError, FloatingPointError, OSError, RunDirBusy)
"""Errors printed as one line ``error: ...`` with exit status 2 (``OSError`` covers FileNotFound/FileExists)."""


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (an ``OSError`` as ``strerror: filename``)."""
    if isinstance(err, KeyError) and err.args:
        msg = str(err.args[0])
    elif isinstance(err, OSError) and err.strerror:
        msg = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def guarded(fn) -> int:
    """``fn()``'s exit status (None: 0), every library refusal (:data:`ERRORS`, NDIF's errors) answered as
    one ``error: ...`` line with status 2 and no traceback, Ctrl-C as one line with 130; a library warning
    is one ``warning:`` line. ``superscopes explain``, ``superscopes run`` and ``python -m experiments``."""
    shown = warnings.showwarning
    warnings.showwarning = warning_line  # a library warning is one line too
    try:
        rc = fn()
        return rc if isinstance(rc, int) else 0
    except ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rows are on disk; rerun with --resume to continue", file=sys.stderr)
        return 130
    except Exception as err:  # remote errors and friends: one line, no traceback
        if type(err).__name__ in ("NDIFError", "RemoteError"):
            print(f"error: {one_line(err)}", file=sys.stderr)
            return 2
        raise
    finally:
        warnings.showwarning = shown
