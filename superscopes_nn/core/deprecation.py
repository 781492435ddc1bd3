"""Old spellings, accepted for one release: a keyword (:func:`renamed`) or a command-line flag
(:func:`add_renamed_flag`) under its earlier name still works and says, on one line, what replaced it."""

from __future__ import annotations

import argparse
import sys
import warnings

__all__ = ["renamed", "add_renamed_flag", "UNTIL"]

UNTIL = "accepted until the next release"


def renamed(kwargs: dict, old: str, new: str, value, default, where: str):
    """``value`` of the keyword ``new``, or of ``old`` popped from ``kwargs`` with a one-line
    DeprecationWarning; both given (``new`` not at its ``default``) is a ValueError naming them."""
    if old not in kwargs:
        return value
    got = kwargs.pop(old)
    warnings.warn(f"{where}({old}=) is deprecated: use {new}= ({UNTIL})", DeprecationWarning, stacklevel=3)
    if value is not default and value != default:
        raise ValueError(f"{where}: pass {new}= only ({old}= is its deprecated spelling), got both")
    return got


class _Renamed(argparse.Action):
    """Stores the value under the new flag's ``dest``; one ``warning:`` line on stderr and a DeprecationWarning."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        msg = f"{option_string} is deprecated: use {self.new} ({UNTIL})"
        print(f"warning: {msg}", file=sys.stderr)
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs) -> None:
    """``old`` as a hidden spelling of the flag ``new`` (stored in ``dest``; ``kwargs``: its ``type``)."""
    parser.add_argument(old, dest=dest, action=_Renamed, new=new, help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                        **kwargs)
