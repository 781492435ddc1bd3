"""Superscopes Figure 1: "Saturday Night Live", token "Live", MLP output, early layers, alpha sweep.

    python -m experiments.superscopes.fig1 [--model gemma-3-270m] [--layers 0-7] [--target-layer 0] [--out DIR]

=================  ==========================================================  ==============================
step               official code (GalNivs/Superscopes,                          here
                   ``code/mlp_outputs_amplification.ipynb``, test number 3)
=================  ==========================================================  ==============================
source             "Saturday Night Live", token "Live" (``find_token_id``)      same
site / layers      MLP output, ``range(realization_layer - 1, +2)`` = 2-4       ``mlp_out``, layers 0-7 (a
                   of 40                                                        superset of the scaled range)
α                  ``range(3, 18, 3)``                                          1 (Patchscopes) and 3..15
target             ``patchscope_interpret(..., target_layer=0)``: hidden        ``--protocol official``,
                   state at the last token of the entity prompt, layer 0        ``--target-layer 0`` (default)
=================  ==========================================================  ==============================

Writes ``fig1_<model>_<protocol>.csv`` (every row, with scores) and ``.png`` (layers x alpha
grid: interpretation and MiniLM cosine to the prompt in each cell).
"""

from __future__ import annotations

from experiments.common import first_paragraph
from experiments.superscopes.single_prompt import run_single_prompt
from superscopes_nn.science.superscopes import MLP_ALPHAS

PROMPT, TOKEN, SITE, TARGET_LAYER = "Saturday Night Live", "Live", "mlp_out", 0


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    return run_single_prompt("fig1", PROMPT, TOKEN, SITE, MLP_ALPHAS, lambda n: list(range(min(8, n))),
                             argv=argv, model=model, cosine=cosine, embedder=embedder,
                             description=first_paragraph(__doc__), target_layer=TARGET_LAYER)


if __name__ == "__main__":
    main()
