"""The rows of Superscopes Figure 3 (kept apart from the scoring so a long sweep can run alone)."""

from __future__ import annotations

from superscopes_nn.science.chance import random_vector_rows
from superscopes_nn.engine.rows import sweep_rows
from superscopes_nn.science.superscopes import last_token_position, protocol_target

FIG3_LAYERS = tuple(range(1, 8))


def fig3_rows(model, prompts, *, protocol: str = "official", control: str = "source", layers=FIG3_LAYERS,
              alphas=(1, 3, 6, 9, 12, 15), seed: int = 0, token: str = "official"):
    """Rows of Figure 3. ``control``: ``source`` (the real MLP output) or ``random`` (norm-matched
    random vector). ``token``: ``official`` (first occurrence of the last token's string, the
    notebook's ``find_token_id(prompt, find_last_token(prompt))``) or ``last`` (-1)."""
    positions = [last_token_position(model.tokenizer, p) for p in prompts] if token == "official" else [-1] * len(prompts)
    target = protocol_target(protocol)
    if control == "source":
        return sweep_rows(model, prompts, layers=list(layers), sites=["mlp_out"], alphas=list(alphas), position=positions,
                          target=target)
    if control == "random":
        return random_vector_rows(model, prompts, layers=list(layers), alphas=list(alphas), site="mlp_out",
                                  target=target, positions=positions, seed=seed)
    raise ValueError(f"control must be 'source' or 'random', got {control!r}")
