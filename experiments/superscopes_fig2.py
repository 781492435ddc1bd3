"""Superscopes Figure 2: "Back to the Future", token "Future", MLP output, early layers, alpha sweep.

    python -m experiments.superscopes_fig2 [--model gemma-3-270m] [--layers 0-7] [--out DIR]

Writes ``fig2_<model>.csv`` and ``fig2_<model>.png`` (same layout as Figure 1).
"""

from __future__ import annotations

from experiments.superscopes_common import run_single_prompt
from superscopes_nn.superscopes import MLP_ALPHAS

PROMPT, TOKEN, SITE = "Back to the Future", "Future", "mlp_out"


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    return run_single_prompt("fig2", PROMPT, TOKEN, SITE, MLP_ALPHAS, lambda n: list(range(min(8, n))),
                             argv=argv, model=model, cosine=cosine, embedder=embedder, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
