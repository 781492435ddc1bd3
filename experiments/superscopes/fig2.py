"""Superscopes Figure 2: "Back to the Future", token "Future", MLP output, early layers, alpha sweep.

    python -m experiments.superscopes.fig2 [--model gemma-3-270m] [--layers 0-7] [--out DIR]

=================  ==========================================================  ==============================
step               official code (GalNivs/Superscopes,                          here
                   ``code/mlp_outputs_amplification.ipynb``, test number 2)
=================  ==========================================================  ==============================
source             "Back to the Future", token "Future"                         same
site / layers      MLP output, layers 1-3 of 40                                 ``mlp_out``, layers 0-7
α                  ``range(3, 18, 3)``                                          1 and 3..15
target             ``patchscope_interpret(..., target_layer=layer)``: hidden    ``--protocol official``, target
                   state at the last target token, the source layer             layer = source layer
=================  ==========================================================  ==============================
"""

from __future__ import annotations

from experiments.common import first_paragraph
from experiments.superscopes.single_prompt import run_single_prompt
from superscopes_nn.science.superscopes import MLP_ALPHAS

PROMPT, TOKEN, SITE = "Back to the Future", "Future", "mlp_out"


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    return run_single_prompt("fig2", PROMPT, TOKEN, SITE, MLP_ALPHAS, lambda n: list(range(min(8, n))),
                             argv=argv, model=model, cosine=cosine, embedder=embedder,
                             description=first_paragraph(__doc__))


if __name__ == "__main__":
    main()
