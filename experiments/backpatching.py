"""Back-patching (Biran et al. 2024, "Hopping Too Late").

A two-hop query ``e1 --r1--> bridge --r2--> answer`` ("The spouse of the
performer of Imagine is") is often answered wrongly although the model knows
both hops. The paper's explanation: the bridge entity is resolved too late in
the layers for the second hop to use it. Back-patching tests this by reading
the last token's hidden state at a *later* layer ``s`` and writing it into the
same prompt at an *earlier* layer ``t < s``, giving the second hop more layers::

    from superscopes_nn import load_model
    from experiments.backpatching import backpatching, summarize
    df = backpatching(load_model(), limit=20)
    summarize(df)       # fixed share of wrong queries, overall and "both hops known"

Run::

    .venv/bin/python experiments/backpatching.py --limit 20 --out runs/backpatching [--population paper|wrong|all]

Protocol against the official code (edenbiran/HoppingTooLate):

=====================  ===========================================================  ==================================
step                   official code (file: function)                               here
=====================  ===========================================================  ==================================
hop checks             ``src/evaluate_dataset.py``: ``eval_first_hop``,             :func:`hop_answers`: the dataset's
                       ``eval_second_hop``, ``eval_composition``;                   first/second-hop and two-hop
                       ``src/utils.py``: ``generate_and_test_answers``              prompts, 10 tokens; ``--match
                       (10 greedy tokens), ``check_answer_in_pred``                 substring`` (default); ``word``
                       (case-insensitive substring of the label or an               (whole words): the earlier design
                       alias > 1 character)
shortcuts              ``eval_entity_shortcut`` (r2 applied to e1),                 ``entity_shortcut_prompt`` (the
                       ``eval_relation_shortcut`` (r2(r1('')) without e1)           second-hop prompt with e1 for the
                                                                                    bridge), ``relation_shortcut_prompt``
                                                                                    (the two-hop prompt without e1, no
                                                                                    final " is"): our prompts are not
                                                                                    templates, so these are approximations
population             composition wrong, both hops right, no shortcut right        ``--population paper`` (default);
                       (``composition_incorrect`` dataset)                          ``wrong`` = every wrong two-hop query
                                                                                    (the earlier design); ``all``
patch                  ``src/patched_generation.py``:                               residual at the last token, layer s
                       ``generate_with_patching_all_layers``: hidden state at the   -> same prompt/position, layer t;
                       last token, every (source, target) pair, prompt pass only,   prompt pass only, 10 greedy tokens
                       10 greedy tokens
pairs counted          ``src/analyze_results.py``: ``load_backpatching`` masks      s > t only
                       ``source_layer <= target_layer``
success                ``calc_backpatching_oracle_success``: some pair answers      "some pair fixes", beside the
                                                                                    shuffled-answer chance level
                                                                                    (:func:`fix_chance`)
=====================  ===========================================================  ==================================
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import int_list, parser, setup, some_pair_chance, store_kwargs  # noqa: E402
from experiments.two_hop import (  # noqa: E402,F401  (re-exported)
    MATCH_RULES, QUERY_FIELDS, alias_match, answer_aliases, bridge_aliases, load_queries,
)
from superscopes_nn.architectures import num_layers  # noqa: E402
from superscopes_nn.api import generate_plain, patchscope  # noqa: E402
from superscopes_nn.resolver import model_name  # noqa: E402
from superscopes_nn.specs import Source, Target  # noqa: E402

__all__ = ["QUERY_FIELDS", "load_queries", "hop_answers", "backpatching", "fix_chance", "summarize"]
CATEGORIES = ("both_correct_composition_correct", "both_correct_composition_wrong",
              "first_hop_wrong", "second_hop_wrong")
"""Query classes of the paper: both hops answered correctly alone and the composition
right / wrong; the first hop (e1 -> bridge) wrong; the first right but the second wrong."""

HOP_COLUMNS = ["id", "two_hop_output", "two_hop_correct", "first_hop_output", "first_hop_correct",
               "second_hop_output", "second_hop_correct", "entity_shortcut_output", "entity_shortcut_correct",
               "relation_shortcut_output", "relation_shortcut_correct", "category", "paper_population"]
POPULATIONS = ("paper", "wrong", "all")
"""Queries back-patched: ``paper`` = the official population (composition wrong, both hops
right, neither shortcut right); ``wrong`` = every wrong two-hop query; ``all`` = every query."""
BACKPATCH_COLUMNS = ["id", "source_layer", "target_layer", "interpretation", "correct", "error",
                     "two_hop_correct", "category"]


# ------------------------------------------------------------------ queries and scoring


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


def layer_pairs(n_layers: int, layers: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """All ``(s, t)`` with ``s > t`` over ``layers`` (default every layer): L(L-1)/2 pairs."""
    ls = list(range(n_layers)) if layers is None else sorted(set(layers))
    bad = [l for l in ls if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {n_layers} layers (valid 0..{n_layers - 1})")
    pairs = [(s, t) for s in ls for t in ls if s > t]
    if not pairs:
        raise ValueError(f"need at least two layers for back-patching, got {ls}")
    return pairs


def backpatch_patches(queries: pd.DataFrame, pairs: Sequence[tuple[int, int]]) -> list:
    """``(Source, Target, None)`` triples: last token of the two-hop prompt, layer s -> same prompt
    and position, layer t. Query-major, then pairs in order."""
    for s, t in pairs:
        if not s > t:
            raise ValueError(f"back-patching needs source layer > target layer, got (s={s}, t={t})")
    return [(Source(p, s, -1, "residual"), Target(p, layer=t, position=-1), None)
            for p in queries.two_hop_prompt for s, t in pairs]


# ------------------------------------------------------------------ the experiment


def backpatching(model, queries=None, *, limit: int | None = None, stratify: bool = False,
                 layers: Iterable[int] | None = None,
                 pairs: Sequence[tuple[int, int]] | None = None, max_new_tokens: int = 10,
                 max_batch_size: int = 64, remote: bool | str = False, progress: bool = False,
                 hops: pd.DataFrame | None = None, population: str = "paper", match: str = "substring",
                 run_dir=None, resume: bool = False, config: dict | None = None) -> pd.DataFrame:
    """Back-patch every two-hop query for every layer pair ``(s, t)``, ``s > t``.

    Steps:

    1. :func:`hop_answers`: greedy answers to the two-hop, first-hop and second-hop
       prompts and the query class (skipped when ``hops`` is given);
    2. source = the two-hop prompt's last token, residual stream after layer ``s``;
       target = the same prompt and position, layer ``t``; greedy-generate
       ``max_new_tokens`` tokens (prompt pass patched only), all rows batched;
    3. a row is correct when its output contains the answer or an alias (``match``:
       ``substring`` = case-insensitive substring, the official test; ``word`` = whole words).

    ``pairs`` overrides ``layers`` (default: all layers, L(L-1)/2 pairs); ``limit`` and
    ``stratify``: see :func:`load_queries`; ``population``: which queries are back-patched
    (:data:`POPULATIONS`; default ``paper``, the official population; the result may be empty).

    Columns: :data:`BACKPATCH_COLUMNS` -- ``id``, ``source_layer`` (s), ``target_layer``
    (t), ``interpretation``, ``correct`` (bool), ``error`` (None unless the patch gave
    non-finite values), and the query's ``two_hop_correct`` and ``category``; one row
    per (query, s, t). The per-query hop answers are in ``df.attrs["hops"]``.
    """
    qs = load_queries(queries, limit, stratify)
    n = num_layers(model._module.config)
    pairs = layer_pairs(n, layers) if pairs is None else [tuple(p) for p in pairs]
    for s, t in pairs:
        for l in (s, t):
            if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n:
                raise ValueError(f"layer {l!r} in pair (s={s}, t={t}) out of range for {model_name(model)} "
                                 f"with {n} layers (valid 0..{n - 1})")
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
    if hops is None:
        hops = hop_answers(model, qs, max_new_tokens=max_new_tokens, max_batch_size=max_batch_size, remote=remote,
                           match=match)
    keep = {"paper": hops.paper_population.astype(bool) if "paper_population" in hops else hops.id.isna(),
            "wrong": ~hops.two_hop_correct.astype(bool), "all": hops.id.notna()}[population]
    qs = qs[qs.id.isin(set(hops.id[keep.to_numpy()]))].reset_index(drop=True)
    if qs.empty:
        df = pd.DataFrame(columns=BACKPATCH_COLUMNS)
        df.attrs.update(hops=hops, model=model_name(model), population=population, answers={}, match=match)
        return df
    res = patchscope(model, backpatch_patches(qs, pairs), max_new_tokens=max_new_tokens,
                     max_batch_size=max_batch_size, remote=remote, progress=progress,
                     run_dir=run_dir, resume=resume, config=config)
    ids = [q for q in qs.id for _ in pairs]
    aliases = {q["id"]: answer_aliases(q) for _, q in qs.iterrows()}
    df = pd.DataFrame({
        "id": ids, "source_layer": res.source_layer.astype(int), "target_layer": res.target_layer.astype(int),
        "interpretation": res.interpretation, "error": res.error,
    })
    df["correct"] = [alias_match(t, aliases[i], match) for t, i in zip(df.interpretation, df.id)]
    df = df.merge(hops[["id", "two_hop_correct", "category"]], on="id", how="left")[BACKPATCH_COLUMNS]
    df.attrs.update(hops=hops, model=model_name(model), population=population, answers=aliases, match=match)
    return df


def fix_chance(df: pd.DataFrame, answers: dict | None = None, n_boot: int = 2000,
               match: str | None = None) -> pd.DataFrame | None:
    """"Some pair fixes" beside its chance level: each wrong query's back-patched outputs (every
    (s, t) pair) matched against another query's answer aliases, averaged over all derangements
    (:func:`superscopes_nn.chance.chance_table`), under ``match`` (default ``df.attrs["match"]``, else
    ``substring``). None with fewer than 2 wrong queries."""
    answers = df.attrs.get("answers") if answers is None else answers
    if answers is None:
        return None
    return some_pair_chance(df[~df.two_hop_correct.astype(bool)], answers, item="id",
                            rule=match or df.attrs.get("match") or "substring", n_boot=n_boot)


def summarize(df: pd.DataFrame, hops: pd.DataFrame | None = None) -> dict:
    """Counts per class and the share of wrong two-hop queries fixed by some back-patch.

    Keys: ``n_queries``, ``n_rows``, ``categories`` (class -> count), ``n_wrong`` (two-hop
    answer wrong), ``n_fixed`` / ``fix_rate`` (wrong queries with at least one correct
    (s, t)), the same restricted to ``both_correct_composition_wrong`` (``*_both_known``),
    ``best_pair`` (the (s, t) fixing most wrong queries) and ``best_pair_fix_rate``.
    """
    hops = df.attrs.get("hops") if hops is None else hops
    if hops is None:
        hops = df.groupby("id", sort=False)[["two_hop_correct", "category"]].first().reset_index()
    fixed = df.groupby("id").correct.any()
    wrong = hops[~hops.two_hop_correct.astype(bool)]
    if df.attrs.get("population") == "paper":  # only the official population was back-patched
        wrong = wrong[wrong.paper_population.astype(bool)]
    known = wrong[wrong.category == "both_correct_composition_wrong"]

    def rate(part):
        k = int(fixed.reindex(part.id).fillna(False).astype(bool).sum())
        return k, (k / len(part) if len(part) else float("nan"))

    n_fixed, fix_rate = rate(wrong)
    n_fixed_known, fix_rate_known = rate(known)
    grid = fix_rate_grid(df)
    best = grid.stack().idxmax() if grid.notna().any().any() else None
    return {
        "model": df.attrs.get("model"),
        "n_queries": int(len(hops)), "n_rows": int(len(df)),
        "categories": {c: int((hops.category == c).sum()) for c in CATEGORIES},
        "two_hop_accuracy": float(hops.two_hop_correct.mean()) if len(hops) else float("nan"),
        "n_wrong": int(len(wrong)), "n_fixed": n_fixed, "fix_rate": fix_rate,
        "n_wrong_both_known": int(len(known)), "n_fixed_both_known": n_fixed_known,
        "fix_rate_both_known": fix_rate_known,
        "population": df.attrs.get("population"),
        "n_paper_population": int(hops.paper_population.sum()) if "paper_population" in hops else None,
        "best_pair": None if best is None else [int(best[0]), int(best[1])],
        "best_pair_fix_rate": None if best is None else float(grid.loc[best[0], best[1]]),
    }


def fix_rate_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Share of the wrong two-hop queries that each (s, t) fixes: rows s, columns t
    (NaN where s <= t or no query was wrong)."""
    wrong = df[~df.two_hop_correct.astype(bool)]
    layers = sorted(set(df.source_layer) | set(df.target_layer))
    if wrong.empty:
        return pd.DataFrame(float("nan"), index=layers, columns=layers)
    grid = wrong.pivot_table(index="source_layer", columns="target_layer", values="correct", aggfunc="mean")
    return grid.reindex(index=layers, columns=layers).astype(float)


def plot_heatmap(grid: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(grid.values.astype(float), origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(grid.columns)), grid.columns)
    ax.set_yticks(range(len(grid.index)), grid.index)
    ax.set_xlabel("target layer t (patched into)")
    ax.set_ylabel("source layer s (read from)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="share of wrong queries fixed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ script


def parse_args(argv):
    p = parser("Back-patching (Biran et al. 2024) on two-hop queries.", out="runs/backpatching", two_hop=True, limit_help="first N queries",
                       layers_help="comma-separated layers to pair (default: all)")
    p.add_argument("--population", choices=POPULATIONS, default="paper",
                   help="paper: the official population (both hops known, composition wrong, no shortcut); "
                        "wrong: every wrong two-hop query; all: every query")
    p.add_argument("--match", choices=MATCH_RULES, default="substring",
                   help="answer test: substring (official, case-insensitive); word: whole words (earlier design)")
    return p.parse_args(argv)


def main(argv=None, model=None) -> pd.DataFrame:
    args = parse_args(argv)
    model, out = setup(args, model)
    layers = int_list(getattr(args, "layers", None))
    t0 = time.perf_counter()
    df = backpatching(model, args.data, limit=args.limit, stratify=args.stratify, layers=layers,
                      max_new_tokens=args.max_new_tokens,
                      max_batch_size=args.max_batch_size, remote=args.remote, progress=True,
                      population=args.population, match=args.match, **store_kwargs(args, out, "backpatching"))
    hops = df.attrs["hops"]
    summary = summarize(df)
    chance = fix_chance(df)
    summary["chance"] = None if chance is None else chance.to_dict(orient="records")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    df.to_csv(out / "backpatching.csv", index=False)
    hops.to_csv(out / "backpatching_hops.csv", index=False)
    (out / "backpatching_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if len(df):
        plot_heatmap(fix_rate_grid(df), out / "backpatching.png",
                     f"Back-patching fix rate, {summary['model']} ({summary['n_wrong']} wrong of "
                     f"{summary['n_queries']} queries, population {args.population})")
    print(f"classes: {summary['categories']}")
    print(f"two-hop accuracy {summary['two_hop_accuracy']:.3f}; fixed by some back-patch: "
          f"{summary['n_fixed']}/{summary['n_wrong']} ({summary['fix_rate']:.1%}); both hops known: "
          f"{summary['n_fixed_both_known']}/{summary['n_wrong_both_known']} ({summary['fix_rate_both_known']:.1%})")
    print(f"population {args.population}: {summary['n_paper_population']} queries in the paper's population")
    if chance is not None:
        c = chance.iloc[0]
        print(f"some pair fixes {c.raw_count:.0f}/{c.n} [{c.raw_lo:.2f}, {c.raw_hi:.2f}]; shuffled-answer chance "
              f"{c.null_count:.1f}/{c.n}; above chance {c.above:+.2f} [{c.above_lo:+.2f}, {c.above_hi:+.2f}]")
    print(f"{len(df)} rows in {summary['seconds']:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
