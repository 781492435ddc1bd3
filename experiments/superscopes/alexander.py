"""Superscopes hidden-state example: "Alexander the Great", token "Great", residual stream.

    python -m experiments.superscopes.alexander [--model gemma-3-270m] [--layers 1-3] [--alphas official|all] [--out DIR]

=================  ==========================================================  ==============================
step               official code (GalNivs/Superscopes,                          here
                   ``code/hidden_states_amplification.ipynb``, test number 1)
=================  ==========================================================  ==============================
source             "Alexander the Great", token "Great", hidden state           same, ``residual``
layers             4-5 of 40                                                    scaled: floor(4n/40)..ceil(5n/40)
                                                                                (1-3 of Gemma 3 270M's 18)
α                  ``range(2, 7, 1)`` (and 1.3, 1.5, 1.7, 1.9 for               1 and 2..6 (``--alphas all``:
                   "Red Hot Chili Peppers")                                     the union ``HIDDEN_ALPHAS``)
target             ``patchscope_interpret(vec)``: default ``target_layer=0``,   ``--protocol official``,
                   hidden state at the last target token                        ``--target-layer 0`` (default)
=================  ==========================================================  ==============================
"""

from __future__ import annotations

from experiments.common import first_paragraph
from experiments.superscopes.single_prompt import run_single_prompt, scaled_range
from superscopes_nn.science.superscopes import HIDDEN_ALPHAS, HIDDEN_ALPHAS_MID

PROMPT, TOKEN, SITE, TARGET_LAYER = "Alexander the Great", "Great", "residual", 0


ALPHAS = {"official": (1.0, *HIDDEN_ALPHAS_MID), "all": HIDDEN_ALPHAS}


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    return run_single_prompt("alexander", PROMPT, TOKEN, SITE, ALPHAS, lambda n: scaled_range(4, 5, n),
                             argv=argv, model=model, cosine=cosine, embedder=embedder,
                             description=first_paragraph(__doc__), target_layer=TARGET_LAYER)


if __name__ == "__main__":
    main()
