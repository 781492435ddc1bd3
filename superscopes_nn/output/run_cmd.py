"""``superscopes run NAME [args]``: run a paper script by its stable name from any directory.

The names are the registry ``experiments.EXPERIMENTS`` (the ``experiments`` package installs with
the wheel), so ``superscopes run --list`` and ``python -m experiments --list`` print the same table::

    superscopes run --list
    superscopes run superscopes_fig3 --model smollm2-135m --out runs/fig3
    superscopes run attribute_extraction --limit 5 --layer-stride 3

Every script reads its data from the package (``superscopes_nn/data``) and writes under ``--out``
(relative to the current directory), so nothing depends on where the repository is. A refusal
(a bad value, a step that needs local weights under ``--remote``, an NDIF error) is one ``error:``
line with exit status 2, as ``superscopes explain`` answers it. The registry
is imported by name when the command runs: the library never imports ``experiments`` itself.
"""

from __future__ import annotations

import importlib
import sys

USAGE = "usage: superscopes run NAME [args...] | superscopes run --list"


def registry():
    """The ``experiments`` package (its ``EXPERIMENTS``, ``run``, ``list_text``)."""
    try:
        return importlib.import_module("experiments")
    except ModuleNotFoundError as err:
        if err.name != "experiments":
            raise
        raise SystemExit("error: the experiments package is not installed (reinstall superscopes_nn: "
                         "pip install superscopes_nn)") from None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__.split("\n\n")[0])
        return 0 if argv else 2
    exp = registry()
    if argv[0] == "--list":
        print(exp.list_text())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in exp.EXPERIMENTS:
        print(f"error: unknown experiment {name!r}; choose one of {', '.join(exp.EXPERIMENTS)} "
              "(superscopes run --list)", file=sys.stderr)
        return 2
    from .refusal import guarded

    return guarded(lambda: exp.run(name, rest, prog=f"superscopes run {name}"))  # a refusal: one error: line
