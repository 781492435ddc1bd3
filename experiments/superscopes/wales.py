"""Superscopes, the official notebook's first test: "Diana, Princess of Wales", token "Wales", MLP output.

    python -m experiments.superscopes.wales [--model gemma-3-270m] [--layers 0-7] [--out DIR]

=================  ==========================================================  ==============================
step               official code (GalNivs/Superscopes,                          here
                   ``code/mlp_outputs_amplification.ipynb``, test number 1)
=================  ==========================================================  ==============================
source             "Diana, Princess of Wales", token "Wales"                    same
site / layers      MLP output, ``range(realization_layer - 1, +2)`` = 2-4       ``mlp_out``, layers 0-7
α                  ``range(3, 18, 3)``                                          1 and 3..15
target             ``patchscope_interpret(..., target_layer=layer)``            official protocol, target
                                                                                layer = source layer
=================  ==========================================================  ==============================
"""

from __future__ import annotations

from experiments.common import first_paragraph
from experiments.superscopes.single_prompt import run_single_prompt
from superscopes_nn.science.superscopes import MLP_ALPHAS

PROMPT, TOKEN, SITE = "Diana, Princess of Wales", "Wales", "mlp_out"


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    return run_single_prompt("wales", PROMPT, TOKEN, SITE, MLP_ALPHAS, lambda n: list(range(min(8, n))),
                             argv=argv, model=model, cosine=cosine, embedder=embedder,
                             description=first_paragraph(__doc__))


if __name__ == "__main__":
    main()
