"""Back-patching (Biran et al. 2024, "Hopping Too Late").

A two-hop query ``e1 --r1--> bridge --r2--> answer`` ("The spouse of the
performer of Imagine is") is often answered wrongly although the model knows
both hops. The paper's explanation: the bridge entity is resolved too late in
the layers for the second hop to use it. Back-patching tests this by reading
the last token's hidden state at a *later* layer ``s`` and writing it into the
same prompt at an *earlier* layer ``t < s``, giving the second hop more layers::

    from superscopes_nn import load_model
    from experiments.hopping_too_late.backpatching import backpatching, summarize
    df = backpatching(load_model(), limit=20, control="random")
    summarize(df)       # fixed share of wrong queries, overall and "both hops known"
    fix_chance(df)      # "some pair fixes" beside the shuffled-answer null and the random-vector arm

Run::

    .venv/bin/python experiments/hopping_too_late/backpatching.py --limit 20 --out runs/backpatching [--population paper|wrong|all] \
        [--control random [--control-seed 0]]

Files in ``--out``: ``backpatching.csv`` (:data:`BACKPATCH_COLUMNS`, one row per query and
(s, t)), ``backpatching_hops.csv`` (:data:`HOP_COLUMNS`), with ``--control random``
``backpatching_random.csv`` (:data:`RANDOM_COLUMNS`, one row per back-patched row, same order),
``backpatching_summary.json`` (:func:`summarize`; ``chance`` = the :func:`fix_chance` table:
``raw`` / ``null`` / ``above`` and, with the random arm, ``random`` / ``above_random``, each
with ``_lo`` / ``_hi`` bootstrap bounds and ``*_count``), ``backpatching.png`` (fix-rate heatmap).

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
chance                 none in the official code                                    our addition: shuffled answers (a
                                                                                    derangement of queries, exact) and,
                                                                                    with ``control="random"``, every
                                                                                    back-patched row rerun with the
                                                                                    state at s replaced by a random
                                                                                    direction of the same norm, written
                                                                                    at t; same substring rule
                                                                                    (``random``, ``above_random``)
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import save_csv  # noqa: E402
from experiments.common import (  # noqa: E402
    add_control, check_control, int_list, parser, random_arm, run_options, setup, some_pair_chance,
)
from experiments.common import rows_dir  # noqa: E402
from superscopes_nn.core.options import RunOptions  # noqa: E402
from experiments.hopping_too_late.hop_checks import (  # noqa: E402,F401  (re-exported)
    CATEGORIES, HOP_COLUMNS, classify, entity_shortcut_prompt, hop_answers, relation_shortcut_prompt,
)
from experiments.common import (  # noqa: E402,F401  (re-exported)
    QUERY_FIELDS, alias_match, answer_aliases, load_queries,
)
from superscopes_nn.science.scoring import MATCH_RULES  # noqa: E402

from superscopes_nn.engine.rows import resolve  # noqa: E402
from superscopes_nn.engine.run import run_rows  # noqa: E402
from superscopes_nn.core.specs import Source, Target  # noqa: E402
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

__all__ = ["QUERY_FIELDS", "CATEGORIES", "HOP_COLUMNS", "classify", "entity_shortcut_prompt",
           "relation_shortcut_prompt", "load_queries", "hop_answers", "backpatching", "fix_chance", "summarize"]
POPULATIONS = ("paper", "wrong", "all")
"""Queries back-patched: ``paper`` = the official population (composition wrong, both hops
right, neither shortcut right); ``wrong`` = every wrong two-hop query; ``all`` = every query."""
BACKPATCH_COLUMNS = ["id", "source_layer", "target_layer", "interpretation", "correct", "error",
                     "two_hop_correct", "category"]
RANDOM_COLUMNS = BACKPATCH_COLUMNS + ["mapping", "mapping_key"]
"""The random arm's rows: :data:`BACKPATCH_COLUMNS` plus the mapping's name (``random``) and key
(``random:d<width>:seed<seed>:...``), one-to-one with the back-patched rows."""


# ------------------------------------------------------------------ queries and scoring


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
                 pairs: Sequence[tuple[int, int]] | None = None,
                 hops: pd.DataFrame | None = None, population: str = "paper", match: str = "substring",
                 control: str = "none", control_seed: int = 0, random_run_dir=None,
                 options: RunOptions | None = None, **settings) -> pd.DataFrame:
    """Back-patch every two-hop query for every layer pair ``(s, t)``, ``s > t``.

    Steps:

    1. :func:`hop_answers`: greedy answers to the two-hop, first-hop and second-hop
       prompts and the query class (skipped when ``hops`` is given);
    2. source = the two-hop prompt's last token, residual stream after layer ``s``;
       target = the same prompt and position, layer ``t``; greedy-generate
       ``max_new_tokens`` tokens (prompt pass patched only), all rows batched;
    3. a row is correct when its output contains the answer or an alias (``match``:
       ``substring`` = case-insensitive substring, the official test; ``word`` = whole words);
    4. ``control="random"``: the same resolved rows with each source vector replaced by a
       norm-matched random direction (:func:`superscopes_nn.science.random_control.random_rows`, seed
       ``control_seed``), run and scored as in 2-3 (``random_run_dir``: its own run store).

    ``pairs`` overrides ``layers`` (default: all layers, L(L-1)/2 pairs); ``limit`` and
    ``stratify``: see :func:`load_queries`; ``population``: which queries are back-patched
    (:data:`POPULATIONS`; default ``paper``, the official population; the result may be empty).
    ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields, as
    :func:`~superscopes_nn.engine.run.run_rows` takes them.

    Columns: :data:`BACKPATCH_COLUMNS` -- ``id``, ``source_layer`` (s), ``target_layer``
    (t), ``interpretation``, ``correct`` (bool), ``error`` (None unless the patch gave
    non-finite values), and the query's ``two_hop_correct`` and ``category``; one row
    per (query, s, t). The per-query hop answers are in ``df.attrs["hops"]``; with
    ``control="random"`` the random arm (:data:`RANDOM_COLUMNS`, row for row) in ``df.attrs["random"]``.
    """
    check_control(control)
    opts = RunOptions.of(options, **settings).with_defaults()
    qs = load_queries(queries, limit, stratify)
    n = model_info(model).n_layers
    pairs = layer_pairs(n, layers) if pairs is None else [tuple(p) for p in pairs]
    for s, t in pairs:
        for l in (s, t):
            if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n:
                raise ValueError(f"layer {l!r} in pair (s={s}, t={t}) out of range for {model_name(model)} "
                                 f"with {n} layers (valid 0..{n - 1})")
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
    if hops is None:
        hops = hop_answers(model, qs, max_new_tokens=opts.max_new_tokens, max_batch_size=opts.max_batch_size,
                           remote=opts.remote, match=match)
    keep = {"paper": hops.paper_population.astype(bool) if "paper_population" in hops else hops.id.isna(),
            "wrong": ~hops.two_hop_correct.astype(bool), "all": hops.id.notna()}[population]
    qs = qs[qs.id.isin(set(hops.id[keep.to_numpy()]))].reset_index(drop=True)
    attrs = dict(hops=hops, model=model_name(model), population=population, match=match, control=control)
    if qs.empty:
        df = pd.DataFrame(columns=BACKPATCH_COLUMNS)
        df.attrs.update(attrs, answers={})
        if control == "random":
            df.attrs["random"] = pd.DataFrame(columns=RANDOM_COLUMNS)
        return df
    rows = resolve(model, backpatch_patches(qs, pairs))
    ids = [q for q in qs.id for _ in pairs]
    aliases = {q["id"]: answer_aliases(q) for _, q in qs.iterrows()}

    def frame(res, columns):
        df = pd.DataFrame({
            "id": ids, "source_layer": res.source_layer.astype(int), "target_layer": res.target_layer.astype(int),
            "interpretation": res.interpretation, "error": res.error,
            "mapping": res.mapping, "mapping_key": res.mapping_key,
        })
        df["correct"] = [alias_match(t, aliases[i], match) for t, i in zip(df.interpretation, df.id)]
        return df.merge(hops[["id", "two_hop_correct", "category"]], on="id", how="left")[columns]

    df = frame(run_rows(model, rows, opts), BACKPATCH_COLUMNS)
    df.attrs.update(attrs, answers=aliases)
    if control == "random":
        rnd = random_arm(model, rows, options=opts.replace(run_dir=random_run_dir), seed=control_seed)
        df.attrs["random"] = frame(rnd, RANDOM_COLUMNS)
    return df


def fix_chance(df: pd.DataFrame, answers: dict | None = None, n_boot: int = 2000,
               match: str | None = None, random_df: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """"Some pair fixes" beside its chance levels: each wrong query's back-patched outputs (every
    (s, t) pair) matched against another query's answer aliases, averaged over all derangements
    (:func:`superscopes_nn.science.chance.chance_table`), under ``match`` (default ``df.attrs["match"]``, else
    ``substring``). ``random_df`` (default ``df.attrs["random"]``, if any): the random arm, scored
    by the same rule against each query's own aliases: adds ``random`` / ``above_random``.
    None with fewer than 2 wrong queries."""
    answers = df.attrs.get("answers") if answers is None else answers
    if answers is None:
        return None
    random_df = df.attrs.get("random") if random_df is None else random_df
    return some_pair_chance(df[~df.two_hop_correct.astype(bool)], answers, item="id",
                            rule=match or df.attrs.get("match") or "substring", n_boot=n_boot,
                            random_rows=random_df)


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
        **random_summary(df, wrong),
    }


def random_summary(df: pd.DataFrame, wrong: pd.DataFrame) -> dict:
    """With a random arm (``df.attrs["random"]``): ``control`` and ``n_fixed_random`` (the counted
    wrong queries that some norm-matched random-vector pair "fixes"); else nothing."""
    rnd = df.attrs.get("random")
    if rnd is None:
        return {}
    fixed = rnd.groupby("id").correct.any().reindex(wrong.id).fillna(False).astype(bool)
    return {"control": "random", "n_rows_random": int(len(rnd)), "n_fixed_random": int(fixed.sum())}


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


def chance_line(c) -> str:
    """The printed chance line: raw, shuffled-answer null, random-vector rate (when run), both "above"."""
    line = (f"some pair fixes {c.raw_count:.0f}/{c.n} [{c.raw_lo:.2f}, {c.raw_hi:.2f}]; shuffled-answer null "
            f"{c.null_count:.1f}/{c.n} [{c.null_lo:.2f}, {c.null_hi:.2f}]")
    if "random" in c and pd.notna(c.random):
        line += f"; random vector {c.random_count:.0f}/{c.n} [{c.random_lo:.2f}, {c.random_hi:.2f}]"
    line += f"; above null {c.above:+.2f} [{c.above_lo:+.2f}, {c.above_hi:+.2f}]"
    if "random" in c and pd.notna(c.random):
        line += f"; above random {c.above_random:+.2f} [{c.above_random_lo:+.2f}, {c.above_random_hi:+.2f}]"
    return line + f" (n={c.n})"


def parse_args(argv):
    p = parser("Back-patching (Biran et al. 2024) on two-hop queries.", out="runs/backpatching", two_hop=True, limit_help="first N queries",
                       layers_help="comma-separated layers to pair (default: all)")
    p.add_argument("--population", choices=POPULATIONS, default="paper",
                   help="paper: the official population (both hops known, composition wrong, no shortcut); "
                        "wrong: every wrong two-hop query; all: every query")
    p.add_argument("--match", choices=MATCH_RULES, default="substring",
                   help="answer test: substring (official, case-insensitive); word: whole words (earlier design)")
    add_control(p)
    return p.parse_args(argv)


def main(argv=None, model=None) -> pd.DataFrame:
    args = parse_args(argv)
    model, out = setup(args, model)
    layers = int_list(getattr(args, "layers", None))
    t0 = time.perf_counter()
    df = backpatching(model, args.data, limit=args.limit, stratify=args.stratify, layers=layers,
                      population=args.population, match=args.match, control=args.control,
                      control_seed=args.control_seed, random_run_dir=rows_dir(out, "backpatching_random", args),
                      options=run_options(args, out, "backpatching", progress=True))
    hops = df.attrs["hops"]
    summary = summarize(df)
    chance = fix_chance(df)
    summary["chance"] = None if chance is None else chance.to_dict(orient="records")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    save_csv(df, out / "backpatching.csv")
    save_csv(hops, out / "backpatching_hops.csv")
    if "random" in df.attrs:
        save_csv(df.attrs["random"], out / "backpatching_random.csv")
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
        print(chance_line(chance.iloc[0]))
    print(f"{len(df)} rows in {summary['seconds']:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
