"""The per-query hop checks of back-patching (Biran et al. 2024): greedy answers to the two-hop,
first-hop, second-hop and the two shortcut prompts, the paper's query class and population
(the official ``src/evaluate_dataset.py``; see :mod:`experiments.hopping_too_late.backpatching` for the protocol)."""

from __future__ import annotations

import pandas as pd

from experiments.common import alias_match, answer_aliases, bridge_aliases
from superscopes_nn.engine.api import generate_plain

__all__ = ["CATEGORIES", "HOP_COLUMNS", "classify", "entity_shortcut_prompt", "relation_shortcut_prompt",
           "hop_answers"]
CATEGORIES = ("both_correct_composition_correct", "both_correct_composition_wrong",
              "first_hop_wrong", "second_hop_wrong")
"""Query classes of the paper: both hops answered correctly alone and the composition
right / wrong; the first hop (e1 -> bridge) wrong; the first right but the second wrong."""

HOP_COLUMNS = ["id", "two_hop_output", "two_hop_correct", "first_hop_output", "first_hop_correct",
               "second_hop_output", "second_hop_correct", "entity_shortcut_output", "entity_shortcut_correct",
               "relation_shortcut_output", "relation_shortcut_correct", "category", "paper_population"]


def classify(first_ok: bool, second_ok: bool, two_hop_ok: bool) -> str:
    """The paper's query class (see :data:`CATEGORIES`); a wrong first hop takes precedence."""
    if not first_ok:
        return "first_hop_wrong"
    if not second_ok:
        return "second_hop_wrong"
    return "both_correct_composition_correct" if two_hop_ok else "both_correct_composition_wrong"


def entity_shortcut_prompt(q) -> str:
    """The second hop asked of e1 directly (``eval_entity_shortcut``): the second-hop prompt with e1
    in place of the bridge."""
    return q["second_hop_prompt"].replace(q["bridge"], q["e1"], 1)


def relation_shortcut_prompt(q) -> str:
    """The composed relation without its subject (``eval_relation_shortcut``): the two-hop prompt
    without e1 and without a final " is"."""
    p = q["two_hop_prompt"].replace(" " + q["e1"], "", 1)
    return p[:-3] if p.endswith(" is") else p


def hop_answers(model, queries: pd.DataFrame, *, max_new_tokens: int = 10, max_batch_size: int = 64,
                remote: bool | str = False, match: str = "substring") -> pd.DataFrame:
    """Greedy answers to the two-hop, first-hop, second-hop and the two shortcut prompts of every query.

    Steps: one batched :func:`generate_plain` over all 5 x N prompts; the two-hop,
    second-hop and shortcut outputs are correct when they contain the answer or an alias,
    the first-hop output when it contains the bridge or an alias (``match``, :data:`MATCH_RULES`); :func:`classify`;
    ``paper_population`` = composition wrong, both hops right, neither shortcut right.

    Columns: :data:`HOP_COLUMNS`, one row per query, in query order.
    """
    n = len(queries)
    prompts = (queries.two_hop_prompt.tolist() + queries.first_hop_prompt.tolist()
               + queries.second_hop_prompt.tolist()
               + [entity_shortcut_prompt(q) for _, q in queries.iterrows()]
               + [relation_shortcut_prompt(q) for _, q in queries.iterrows()])
    texts = generate_plain(model, prompts, max_new_tokens, max_batch_size, remote)
    rows = []
    for i, (_, q) in enumerate(queries.iterrows()):
        two, first, second, ent, rel = (texts[k * n + i] for k in range(5))
        ans = answer_aliases(q)
        ok2, ok1, okb = (alias_match(two, ans, match), alias_match(first, bridge_aliases(q), match),
                         alias_match(second, ans, match))
        oke, okr = alias_match(ent, ans, match), alias_match(rel, ans, match)
        rows.append(dict(id=q["id"], two_hop_output=two, two_hop_correct=ok2, first_hop_output=first,
                         first_hop_correct=ok1, second_hop_output=second, second_hop_correct=okb,
                         entity_shortcut_output=ent, entity_shortcut_correct=oke,
                         relation_shortcut_output=rel, relation_shortcut_correct=okr,
                         category=classify(ok1, okb, ok2),
                         paper_population=bool(ok1 and okb and not ok2 and not oke and not okr)))
    return pd.DataFrame(rows, columns=HOP_COLUMNS)
