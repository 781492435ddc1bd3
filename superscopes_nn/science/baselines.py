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

from ..engine.api import generate_plain
from ..structure.info import model_name


def fill_placeholder(prompt: str, text: str, placeholder: str = "x") -> str:
    """``prompt`` with its only whole-word ``placeholder`` replaced by ``text``."""
    pattern = r"(?<![\w])" + re.escape(placeholder) + r"(?![\w])"
    hits = len(re.findall(pattern, prompt))
    if hits != 1:
        raise ValueError(f"prompt {prompt!r} must contain the placeholder {placeholder!r} exactly once, found {hits}")
    return re.sub(pattern, lambda _: text, prompt)


def _paired(items, per_item, items_name: str, per_name: str) -> tuple[list, list]:
    """``items`` and ``per_item`` as equal-length lists (a single string is repeated); none is an error."""
    items = list(items)
    per = [per_item] * len(items) if isinstance(per_item, str) else list(per_item)
    if len(per) != len(items):
        raise ValueError(f"got {len(per)} {per_name} for {len(items)} {items_name}")
    if not items:
        raise ValueError(f"no {items_name} given")
    return items, per


def input_only(model, target_prompts: Sequence[str] | str, subjects: Sequence[str], *, placeholder: str = "x",
               max_new_tokens: int = 10, max_batch_size: int = 64, remote: bool | str = False) -> pd.DataFrame:
    """The input-only baseline: answer each target prompt with the subject's *text* in place of the placeholder.

    Steps: fill the placeholder of each target prompt with its subject; greedy-generate
    ``max_new_tokens`` tokens; no activation is read or written.

    Columns: ``subject``, ``target_prompt``, ``prompt`` (the filled prompt), ``model``,
    ``interpretation`` (the generated text, comparable with a Patchscope's).
    """
    subjects, prompts = _paired(subjects, target_prompts, "subjects", "target prompts")
    filled = [fill_placeholder(p, s, placeholder) for p, s in zip(prompts, subjects)]
    texts = generate_plain(model, filled, max_new_tokens, max_batch_size, remote)
    return pd.DataFrame({"subject": subjects, "target_prompt": prompts, "prompt": filled,
                         "model": model_name(model), "interpretation": texts})


def contains(text, answer: str) -> bool:
    """Case-insensitive substring test (the Patchscopes attribute-extraction criterion)."""
    return isinstance(text, str) and answer.strip().lower() in text.lower()


# ------------------------------------------------------------------ Li et al.'s zero-shot baseline

PLAIN_CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}")
"""The fallback for a tokenizer without a chat template (a base model, e.g. Gemma 3 270M here):
one ``role: content`` line per message after the BOS token, then ``assistant:``."""

ZERO_SHOT_PREFIX = {"feature_extraction": "Complete the sentence: ", "personaqa": ""}
"""Li et al.'s question prefix per dataset (``src/utils/eval_utils.py``, ``PredictionDataset``)."""


def zero_shot_messages(context: str, question: str, *, dataset: str = "personaqa", llama: bool = False) -> list[dict]:
    """The chat of Li et al.'s zero-shot baseline (``PredictionDataset.__getitem__``): the source
    context as an assistant turn, then the question as a user turn.

    Their branches, followed as written: a ``llama`` tokenizer gets no leading turn and the
    question with every ``x`` removed (``question.replace('x', '').strip()``); any other gets an
    empty user turn first, and keeps the question as is for PersonaQA (x and all) but removes
    the x's for feature extraction. The prefix is ``"Complete the sentence: "`` for feature
    extraction and empty for PersonaQA (:data:`ZERO_SHOT_PREFIX`).
    """
    if dataset not in ZERO_SHOT_PREFIX:
        raise ValueError(f"unknown zero-shot dataset {dataset!r}; choose one of {sorted(ZERO_SHOT_PREFIX)}")
    prefix = ZERO_SHOT_PREFIX[dataset]
    stripped = f"{prefix}{question.replace('x', '').strip()}"
    if llama:
        return [{"role": "assistant", "content": context}, {"role": "user", "content": stripped}]
    ask = stripped if dataset == "feature_extraction" else f"{prefix}{question}"
    return [{"role": "user", "content": ""}, {"role": "assistant", "content": context},
            {"role": "user", "content": ask}]


def zero_shot_prompt(tokenizer, context: str, question: str, *, dataset: str = "personaqa",
                     llama: bool | None = None) -> tuple[str, str]:
    """``(prompt text, template used)``: :func:`zero_shot_messages` rendered with the tokenizer's chat
    template (``"tokenizer"``), or :data:`PLAIN_CHAT_TEMPLATE` where it has none (``"plain"``), with the
    generation prompt. ``llama`` None = Li's rule: ``"llama"`` in the tokenizer's ``name_or_path``."""
    if llama is None:
        llama = "llama" in str(getattr(tokenizer, "name_or_path", "")).lower()
    own = getattr(tokenizer, "chat_template", None)
    msgs = zero_shot_messages(context, question, dataset=dataset, llama=llama)
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                         chat_template=own or PLAIN_CHAT_TEMPLATE)
    return text, "tokenizer" if own else "plain"


def zero_shot(model, contexts: Sequence[str], questions: Sequence[str] | str, *, dataset: str = "personaqa",
              llama: bool | None = None, max_new_tokens: int = 20, max_batch_size: int = 64,
              remote: bool | str = False) -> pd.DataFrame:
    """Li et al.'s zero-shot baseline (``src/predict_zeroshot.py``): the model reads the source context
    as an assistant turn and answers the question, greedy, ``max_new_tokens`` (their ``n_tokens`` = 20).

    The rendered prompt is tokenized without adding special tokens (their ``DataCollatorForPrediction``);
    no activation is read or written. Columns: ``context``, ``question``, ``prompt`` (the rendered
    chat), ``template`` (``tokenizer`` or ``plain``), ``model``, ``interpretation`` (the new text).
    """
    contexts, qs = _paired(contexts, questions, "contexts", "questions")
    rendered = [zero_shot_prompt(model.tokenizer, c, q, dataset=dataset, llama=llama) for c, q in zip(contexts, qs)]
    texts = generate_plain(model, [p for p, _ in rendered], max_new_tokens, max_batch_size, remote,
                           add_special_tokens=False)
    return pd.DataFrame({"context": contexts, "question": qs, "prompt": [p for p, _ in rendered],
                         "template": [t for _, t in rendered], "model": model_name(model), "interpretation": texts})
