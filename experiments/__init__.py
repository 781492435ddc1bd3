"""The paper scripts, one sub-package per paper, each script reachable by one stable name.

    python -m experiments --list                       # the names
    python -m experiments superscopes_fig3 --out runs  # = python -m experiments.superscopes.fig3 --out runs

- ``superscopes/``: Jacobi & Niv 2025 (Figures 1-3, the hidden-state examples)
- ``patchscopes/``: Ghandeharioun et al. 2024 (token identity, attribute extraction, entity resolution, multi-hop CoT)
- ``hopping_too_late/``: Biran et al. 2024 (back-patching, where the bridge entity resolves)
- ``li2025/``: Li et al. 2025 (verbalizer vs source, PersonaQA control)
- ``common.py``: what the scripts share (argument parser, run-store flags, chance lines, two-hop queries)
"""

from __future__ import annotations

import importlib
from typing import Sequence

EXPERIMENTS = {
    "superscopes_fig1": "experiments.superscopes.fig1",
    "superscopes_fig2": "experiments.superscopes.fig2",
    "superscopes_fig3": "experiments.superscopes.fig3",
    "superscopes_alexander": "experiments.superscopes.alexander",
    "superscopes_wales": "experiments.superscopes.wales",
    "token_identity": "experiments.patchscopes.token_identity",
    "attribute_extraction": "experiments.patchscopes.attribute_extraction",
    "entity_resolution": "experiments.patchscopes.entity_resolution",
    "multihop_cot": "experiments.patchscopes.multihop_cot",
    "backpatching": "experiments.hopping_too_late.backpatching",
    "entity_resolution_bridge": "experiments.hopping_too_late.bridge_resolution",
    "controls": "experiments.li2025.controls",
    "persona_control": "experiments.li2025.persona_control",
}
"""Stable name -> module. A name never changes when a module moves; its ``main(argv)`` runs it."""


def module_of(name: str) -> str:
    if name not in EXPERIMENTS:
        raise SystemExit(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run(name: str, argv: Sequence[str] | None = None, prog: str | None = None):
    """Run experiment ``name`` with command-line arguments ``argv``; ``prog``: the ``usage:`` name its
    ``--help`` shows (default ``python -m experiments NAME``)."""
    from experiments import run_folders

    module = importlib.import_module(module_of(name))
    run_folders.PROG = prog or f"python -m experiments {name}"
    try:
        return module.main(list(argv or []))
    finally:
        run_folders.PROG = None


def list_text() -> str:
    from experiments.run_folders import first_paragraph

    return "\n".join(f"{name:26s} {first_paragraph(importlib.import_module(mod).__doc__)}"
                     for name, mod in EXPERIMENTS.items())
