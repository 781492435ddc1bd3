"""Superscopes Figure 1: "Saturday Night Live", token "Live", MLP output, early layers, alpha sweep.

    python -m experiments.superscopes_fig1 [--model gemma-3-270m] [--layers 0-7] [--out DIR]

Writes ``fig1_<model>.csv`` (every row, with scores) and ``fig1_<model>.png`` (layers x
alpha grid: interpretation and MiniLM cosine to the prompt in each cell).
Default layers 0-7 (the paper's early layers; on an 18-layer model that is
about the first 40 % of depth, a superset of the scaled paper range).
"""

from __future__ import annotations

from experiments.superscopes_common import run_single_prompt
from superscopes_nn.superscopes import MLP_ALPHAS

PROMPT, TOKEN, SITE = "Saturday Night Live", "Live", "mlp_out"


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    return run_single_prompt("fig1", PROMPT, TOKEN, SITE, MLP_ALPHAS, lambda n: list(range(min(8, n))),
                             argv=argv, model=model, cosine=cosine, embedder=embedder, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
