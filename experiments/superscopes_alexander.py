"""Superscopes hidden-state example: "Alexander the Great", token "Great", residual stream.

    python -m experiments.superscopes_alexander [--model gemma-3-270m] [--layers 1-3] [--out DIR]

The paper amplifies the hidden state of "Great" at layers 4-5 of Llama-2-13B (40
layers); here the layers are scaled by n_layers/40 (floor of 4, ceil of 5: layers
1-3 on Gemma 3 270M's 18). Alphas: 1 (Patchscopes) and the paper's three
hidden-state lists 1.3..1.9, 2..6 and 3..21 (``HIDDEN_ALPHAS``).
"""

from __future__ import annotations

from experiments.superscopes_common import run_single_prompt, scaled_range
from superscopes_nn.superscopes import HIDDEN_ALPHAS

PROMPT, TOKEN, SITE = "Alexander the Great", "Great", "residual"


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    return run_single_prompt("alexander", PROMPT, TOKEN, SITE, HIDDEN_ALPHAS, lambda n: scaled_range(4, 5, n),
                             argv=argv, model=model, cosine=cosine, embedder=embedder, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
