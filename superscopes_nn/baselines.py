"""Input-only baselines: what a model answers from the prompt text alone, with no activation patched.

A Patchscope accuracy means something only beside the answer the model gives when the
subject's *text* replaces the placeholder (Li et al. 2025, "Do natural language
descriptions of model activations convey privileged information?"):
``"The official currency of x"`` -> ``"The official currency of Japan"``, generated plainly.
``experiments/entity_resolution`` and ``experiments/attribute_extraction`` report it beside
every Patchscopes accuracy; ``experiments/controls`` compares two models' baselines.
"""

from __future__ import annotations

import re
from typing import Sequence

import pandas as pd

from .api import generate_plain
from .resolver import model_name


def fill_placeholder(prompt: str, text: str, placeholder: str = "x") -> str:
    """``prompt`` with its only whole-word ``placeholder`` replaced by ``text``."""
    pattern = r"(?<![\w])" + re.escape(placeholder) + r"(?![\w])"
    hits = len(re.findall(pattern, prompt))
    if hits != 1:
        raise ValueError(f"prompt {prompt!r} must contain the placeholder {placeholder!r} exactly once, found {hits}")
    return re.sub(pattern, lambda _: text, prompt)


def input_only(model, target_prompts: Sequence[str] | str, subjects: Sequence[str], *, placeholder: str = "x",
               max_new_tokens: int = 10, max_batch_size: int = 64, remote: bool | str = False) -> pd.DataFrame:
    """The input-only baseline: answer each target prompt with the subject's *text* in place of the placeholder.

    Steps: fill the placeholder of each target prompt with its subject; greedy-generate
    ``max_new_tokens`` tokens; no activation is read or written.

    Columns: ``subject``, ``target_prompt``, ``prompt`` (the filled prompt), ``model``,
    ``interpretation`` (the generated text, comparable with a Patchscope's).
    """
    subjects = list(subjects)
    prompts = [target_prompts] * len(subjects) if isinstance(target_prompts, str) else list(target_prompts)
    if len(prompts) != len(subjects):
        raise ValueError(f"got {len(prompts)} target prompts for {len(subjects)} subjects")
    if not subjects:
        raise ValueError("no subjects given")
    filled = [fill_placeholder(p, s, placeholder) for p, s in zip(prompts, subjects)]
    texts = generate_plain(model, filled, max_new_tokens, max_batch_size, remote)
    return pd.DataFrame({"subject": subjects, "target_prompt": prompts, "prompt": filled,
                         "model": model_name(model), "interpretation": texts})


def contains(text, answer: str) -> bool:
    """Case-insensitive substring test (the Patchscopes attribute-extraction criterion)."""
    return isinstance(text, str) and answer.strip().lower() in text.lower()
