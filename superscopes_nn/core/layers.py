"""The one layer grammar of the command line: ``0-8``, ``1,3,5``, ``2``, negatives from the end (``-1``,
``-3--1``, ``-2,-1``) and ``all``; read by :func:`parse_layers`, for the ``superscopes`` command and the
paper scripts alike."""

from __future__ import annotations

import re

__all__ = ["parse_layers", "attach_negative_values", "resolve_layers"]

_RANGE = re.compile(r"(-?\d+)-(-?\d+)")


def parse_layers(spec: str | None, flag: str = "--layers") -> list[int] | None:
    """``"0-8"`` -> 0..8, ``"1,3,5"``, ``"2"``, negative ones from the end (``"-3--1"``, ``"-2,-1"``);
    ``"all"`` or None -> None (every layer). A range from a layer to one counted from the end (``5--1``)
    depends on the model's depth and is refused, as is an empty or descending range."""
    if spec is None or spec.strip().lower() == "all":
        return None
    out = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if m := _RANGE.fullmatch(part):
                a, b = int(m[1]), int(m[2])
                if b < a or (a < 0) != (b < 0):  # 5--1 would depend on the model's depth
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ValueError(f"bad {flag} {spec!r}: use e.g. 0-8, 1,3,5, -3--1 or all") from None
    return out


def resolve_layers(layers: list[int] | None, n_layers: int, flag: str = "--layers") -> list[int]:
    """:func:`parse_layers`' list as absolute layers of a model with ``n_layers`` (None: all; negatives from
    the end), sorted and unique; a layer out of range is a ValueError naming it."""
    if layers is None:
        return list(range(n_layers))
    bad = [l for l in layers if not -n_layers <= l < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range for a model with {n_layers} layers "
                         f"(valid 0..{n_layers - 1}, or -{n_layers}..-1 from the end)")
    if not layers:
        raise ValueError(f"empty layer list from {flag}")
    return sorted({l % n_layers for l in layers})


def attach_negative_values(argv: list[str], flags=("--layers",)) -> list[str]:
    """``--layers -2,-1`` -> ``--layers=-2,-1``: argparse takes a value that starts with ``-`` for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv) and re.fullmatch(r"-\d[\d,\s-]*", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out
