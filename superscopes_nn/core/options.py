"""How a run runs, as one frozen object: :class:`RunOptions`.

:func:`~superscopes_nn.engine.run.run_rows`, the planner (:func:`~superscopes_nn.engine.plan.plan`),
the public calls and the paper scripts take one ``options=RunOptions(...)`` beside their own
parameters; a keyword naming a field (``run_rows(model, rows, max_new_tokens=3)``) replaces that
field for one call. :func:`options_from_args` builds it from parsed command-line arguments, for the
``superscopes`` command and the paper scripts alike::

    opts = RunOptions(max_new_tokens=20, max_batch_size=16, remote=True)
    df = run_rows(model, rows, opts)
    plan(model, rows, opts).check()
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from .sampling import Sampling
from .validate import check_remote

__all__ = ["RunOptions", "DEFAULT_MAX_NEW_TOKENS", "options_from_args", "parse_remote", "add_remote_argument"]

DEFAULT_MAX_NEW_TOKENS = 10
"""New tokens per row when neither the options nor the entry point say otherwise."""


@dataclass(frozen=True)
class RunOptions:
    """The settings of a run, none of which is a parameter of the experiment itself.

    ``max_new_tokens``: tokens generated per row (None: the entry point's default, 10 unless it says
    otherwise). ``max_batch_size``: rows per batched pass (a chunk). ``chunks_per_request``: chunks per
    session / NDIF request (None: 8 remote, 1 local). ``exact``: one row per chunk, no prefix reuse
    (bit-reproducible half precision). ``shared_prefix``: reuse the KV cache of the target tokens before
    the first patched position. ``sampling``: None (greedy) or a :class:`~superscopes_nn.core.sampling.Sampling`.
    ``remote``: ``False`` | ``"local"`` | ``True`` | ``"https://host"``, as given; ``backend``: an nnsight
    backend. ``progress``: a progress bar (None: the entry point's default). ``run_dir`` / ``resume`` /
    ``config``: the run store (:mod:`superscopes_nn.core.store`). ``retries`` / ``backoff`` / ``sleep``:
    NDIF retries of remote sessions.
    """

    max_new_tokens: int | None = None
    max_batch_size: int = 64
    chunks_per_request: int | None = None
    exact: bool = False
    shared_prefix: bool = True
    sampling: Sampling | None = None
    remote: Any = False
    backend: Any = None
    progress: bool | None = None
    run_dir: Any = None
    resume: bool = False
    config: dict | None = None
    retries: int = 3
    backoff: float = 1.0
    sleep: Callable | None = None

    @classmethod
    def of(cls, options: "RunOptions | None" = None, **settings) -> "RunOptions":
        """``options`` (default ``RunOptions()``) with ``settings`` (field names) replaced; an unknown name
        is a one-line TypeError naming it."""
        if options is not None and not isinstance(options, RunOptions):
            raise TypeError(f"options must be a RunOptions, got {options!r}")
        return (options or cls()).replace(**settings)

    def replace(self, **settings) -> "RunOptions":
        """A copy with ``settings`` replaced; an unknown field is a TypeError naming it and the fields."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise TypeError(f"unknown run option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"RunOptions has {', '.join(sorted(names))}")
        return dataclasses.replace(self, **settings) if settings else self

    def with_defaults(self, *, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, progress: bool = False) -> "RunOptions":
        """The entry point's defaults filled in where a field is None (``max_new_tokens``, ``progress``)."""
        return self.replace(max_new_tokens=max_new_tokens if self.max_new_tokens is None else self.max_new_tokens,
                            progress=progress if self.progress is None else self.progress)

    def __post_init__(self):
        object.__setattr__(self, "remote", check_remote(self.remote).value)  # one spelling per meaning

    @property
    def ndif(self) -> bool:
        """True when sessions go to NDIF (``remote=True`` or a host), not for ``"local"``."""
        return check_remote(self.remote).is_ndif


def parse_remote(s: Any):
    """A ``--remote`` value: ``false``/``0``/``no``/``""`` -> False, ``true``/``1``/``yes``/``ndif`` -> True,
    ``local`` or an ``https://`` host as :func:`~superscopes_nn.core.validate.check_remote` takes them;
    a bool (a ``store_true`` flag) as it is."""
    if isinstance(s, bool) or s is None:
        return bool(s)
    low = str(s).strip().lower()
    if low in ("false", "0", "no", ""):
        return False
    if low in ("true", "1", "yes", "ndif"):
        return True
    try:
        return check_remote(s).value
    except ValueError:
        raise ValueError(f"bad --remote {s!r}: use false, local, true or an https:// host") from None


REMOTE_HELP = ("where the patched runs go: bare --remote = NDIF; --remote local = nnsight's serialization "
               "round trip on this machine; --remote https://HOST = NDIF at HOST; false = here, plain")


def add_remote_argument(parser, *, parse_now: bool = True) -> None:
    """The one ``--remote`` of the ``superscopes`` command and every paper script: absent = local,
    bare ``--remote`` = NDIF, ``--remote local`` / ``true`` / ``false`` / ``ndif`` / ``https://HOST``
    (:func:`parse_remote`). ``parse_now``: ``args.remote`` holds the parsed value (``False``, ``"local"``,
    ``True`` or the host) and a bad value is the parser's one-line error; else the text as given, parsed
    by :func:`options_from_args` (``superscopes explain``: its own ``error:`` line)."""
    import argparse

    def remote_value(s: str):
        try:
            return parse_remote(s)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser.add_argument("--remote", nargs="?", const=True if parse_now else "true",
                        default=False if parse_now else "false", type=remote_value if parse_now else str,
                        metavar="WHERE", help=REMOTE_HELP)


def options_from_args(args, **settings) -> RunOptions:
    """The :class:`RunOptions` of parsed command-line arguments: ``--max-new-tokens``, ``--max-batch-size``,
    ``--chunks-per-request``, ``--exact``, ``--remote`` (:func:`parse_remote`), ``--progress`` /
    ``--no-progress`` and ``--resume``, each where the parser has it; ``settings`` (field names) set or
    replace the rest (``run_dir``, ``config``, ``sampling``, ...)."""
    found = {}
    for name in ("max_new_tokens", "max_batch_size", "chunks_per_request", "exact", "resume"):
        if getattr(args, name, None) is not None:
            found[name] = getattr(args, name)
    if hasattr(args, "remote"):
        found["remote"] = parse_remote(args.remote)
    if getattr(args, "no_progress", None) is not None:
        found["progress"] = not args.no_progress
    elif getattr(args, "progress", None) is not None:
        found["progress"] = bool(args.progress)
    return RunOptions().replace(**{**found, **settings})
