"""Multi-hop reasoning by patching (Patchscopes, Ghandeharioun et al. 2024, Sec. 4.5).

A two-hop query ("The spouse of the performer of Imagine is") is split in two:
the *first hop* is read from the model as a hidden state -- the last token of the
first-hop prompt ("The performer of Imagine is") at source layer ``l`` -- and
written at the placeholder of the *second hop* ("The spouse of x is") at target
layer ``l*``; the model then generates. The query counts as solved when some
``(l, l*)`` gives the answer (the paper's best-over-layers accuracy); the
baselines are the plain two-hop prompt and a chain-of-thought variant
("Let's think step by step. <two-hop prompt>")::

    from superscopes_nn import load_model
    from experiments.patchscopes.multihop_cot import multihop_cot, summarize
    df = multihop_cot(load_model(), limit=20)
    summarize(df)

Run::

    .venv/bin/python experiments/patchscopes/multihop_cot.py --limit 20 --out runs/multihop_cot [--direction reversed]

Protocol against the official code (PAIR-code/interpretability, ``patchscopes/code/multihop-CoT.ipynb``,
"Experiment 2: CoT", ``generate_CoT_data_prod`` / ``run_experiment`` /
``evaluate_attriburte_exraction_batch_multihop``):

=================  ==========================================================  ===============================
step               official code                                               here
=================  ==========================================================  ===============================
source             ``prompt_source = "Who is the current CEO of "``: the       ``--direction official``: the
                   second-hop prefix, ``position_source = -1``                  second-hop prompt up to the bridge
                                                                               (:func:`second_hop_prefix`), last token
target             ``prompt_target = "the company that created {hop1}"``:      the first-hop phrase of the two-hop
                   the first-hop phrase, ``position_target = -1``              prompt (:func:`first_hop_phrase`),
                                                                               last token
layers             every (source, target) layer pair                           same
population         ``only_correct``: ``is_correct_baseline_hop2`` and          ``only_correct=True``: the first-hop
                   ``is_correct_baseline_hop3``                                phrase continues to the bridge and
                                                                               the second-hop prompt to the answer
patched tokens     ``max_gen_len=10``                                          10
vanilla baseline   ``baseline_multihop3`` (the whole query), 20 tokens         ``vanilla``, 20 tokens
correct            ``object in generation`` (also without spaces),             ``--match patchscopes`` (default):
                   case-sensitive                                              the same test on the answer or any
                                                                               alias of our data set; ``word``
                                                                               (whole words): the earlier design
data               45 (product, company, CEO) triples (``multihop_samples``)   ``two_hop.jsonl`` (182 queries;
                                                                               named deviation, ``--data``)
CoT baseline       none                                                        ``cot`` ("Let's think step by step.")
                                                                               kept as an extra
chance             none                                                        our addition: shuffled answers
                                                                               (:func:`pair_chance`, exact over
                                                                               derangements) and, with
                                                                               ``--control random``, every patched
                                                                               row rerun with a norm-matched random
                                                                               vector (same rows, same match rule)
=================  ==========================================================  ===============================

``--direction reversed`` is the earlier design (the first-hop prompt's last token written at the
``x`` of "The spouse of x is"), and ``--all-queries`` drops ``only_correct``. The best-pair
accuracy is reported beside its shuffled-answer chance level (:func:`pair_chance`) and, with
``--control random`` (``control="random"``; not in the official code), beside the same "some pair"
rule on the random arm: each patched row's source vector replaced by a random direction of its
norm (:func:`superscopes_nn.science.random_control.random_rows`, one direction per source vector, seed
``--control-seed``), written at the same target and layer. The vanilla and CoT baselines patch
nothing and get no random arm.

Outputs (``--out``): ``multihop_cot.csv`` (:data:`COT_COLUMNS`), ``multihop_cot_random.csv``
(:data:`RANDOM_COLUMNS`, the random arm, one row per patched row), ``multihop_cot_hops.csv`` (the
``only_correct`` filter), ``multihop_cot_chance.csv`` (``raw`` / ``null`` / ``above`` and with the
random arm ``random`` / ``above_random``, each with ``_lo`` / ``_hi`` bootstrap 95% bounds over
queries, ``raw_count`` / ``null_count`` / ``random_count``), ``multihop_cot_summary.csv``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import save_csv  # noqa: E402
from experiments.common import (add_control, check_control, int_list, parser, random_arm,  # noqa: E402
                                report_pair_chance, rows_dir, run_options, setup, some_pair_chance)
from superscopes_nn.core.options import RunOptions  # noqa: E402

from superscopes_nn.engine.api import generate_plain  # noqa: E402
from superscopes_nn.engine.rows import resolve  # noqa: E402
from superscopes_nn.engine.run import run_rows  # noqa: E402
from superscopes_nn.core.specs import Source, Target  # noqa: E402

from experiments.common import alias_match, answer_aliases, bridge_aliases, load_queries  # noqa: E402
from superscopes_nn.science.scoring import MATCH_RULES  # noqa: E402
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

COT_PREFIX = "Let's think step by step."
METHODS = ("patchscope", "vanilla", "cot")
COT_COLUMNS = ["id", "method", "source_layer", "target_layer", "prompt", "target_prompt", "interpretation",
               "correct", "error"]
RANDOM_COLUMNS = COT_COLUMNS + ["mapping", "mapping_key"]
"""The random arm's rows (``df.attrs["random"]``, ``method == "random"``): :data:`COT_COLUMNS` plus
the mapping name (``random``) and key (``random:d<width>:seed<s>:...``, the direction's seed)."""


def second_hop_template(q, placeholder: str = "x") -> str:
    """The second hop with ``placeholder`` in place of the bridge: ``second_hop_prompt`` with its
    only occurrence of the bridge replaced, else ``"The {r2} of x is"``."""
    prompt, bridge = q["second_hop_prompt"], q["bridge"]
    if bridge and prompt.count(bridge) == 1:
        return prompt.replace(bridge, placeholder)
    return f"The {q['r2']} of {placeholder} is"


def second_hop_prefix(q) -> str | None:
    """The second-hop prompt up to the bridge ("The spouse of"); None when the bridge is absent."""
    prompt, bridge = q["second_hop_prompt"], q["bridge"]
    if not bridge or bridge not in prompt:
        return None
    return prompt[: prompt.index(bridge)].rstrip() or None


def first_hop_phrase(q) -> str | None:
    """The part of the two-hop prompt after the second-hop prefix, up to and including e1
    ("the performer of Imagine"); None when the two-hop prompt does not start with the prefix."""
    prefix, two = second_hop_prefix(q), q["two_hop_prompt"]
    if prefix is None or not two.startswith(prefix) or q["e1"] not in two[len(prefix):]:
        return None
    end = two.index(q["e1"], len(prefix)) + len(q["e1"])
    return two[len(prefix):end].strip() or None


DIRECTIONS = ("official", "reversed")


def check_pairs(pairs, n: int, name: str) -> list[tuple[int, int]]:
    out = []
    for p in pairs:
        if len(tuple(p)) != 2:
            raise ValueError(f"a layer pair must be (source_layer, target_layer), got {p!r}")
        for l in p:
            if isinstance(l, bool) or not isinstance(l, int) or not 0 <= l < n:
                raise ValueError(f"layer {l!r} in pair {tuple(p)} out of range for {name} with {n} layers "
                                 f"(valid 0..{n - 1})")
        out.append(tuple(p))
    if not out:
        raise ValueError("no layer pairs given")
    return out


def cot_patches(queries: pd.DataFrame, pairs: Sequence[tuple[int, int]], placeholder: str = "x",
                direction: str = "reversed") -> list:
    """``(Source, Target, None)``, query-major, then pairs in order. ``official``: second-hop prefix's
    last token at l -> first-hop phrase's last token at l*; ``reversed``: first-hop prompt's last
    token at l -> second-hop template's placeholder at l*."""
    if direction == "official":
        return [(Source(second_hop_prefix(q), l, -1, "residual"), Target(first_hop_phrase(q), layer=ls, position=-1),
                 None) for _, q in queries.iterrows() for l, ls in pairs]
    return [(Source(q["first_hop_prompt"], l, -1, "residual"),
             Target(second_hop_template(q, placeholder), layer=ls, placeholder=placeholder), None)
            for _, q in queries.iterrows() for l, ls in pairs]


def multihop_cot(model, queries=None, *, limit: int | None = None, stratify: bool = False,
                 layers: Iterable[int] | None = None, pairs: Sequence[tuple[int, int]] | None = None,
                 cot_max_new_tokens: int | None = None, baselines: bool = True, direction: str = "official",
                 only_correct: bool = True, baseline_max_new_tokens: int = 20, match: str = "patchscopes",
                 control: str = "none", control_seed: int = 0, random_run_dir=None,
                 options: RunOptions | None = None, **settings) -> pd.DataFrame:
    """Multi-hop Patchscope over layer pairs plus the vanilla and CoT baselines.

    Steps:

    0. ``only_correct``: keep the queries whose first-hop phrase names the bridge and whose
       second-hop prompt names the answer (``baseline_max_new_tokens`` each);
    1. ``direction="official"``: source = :func:`second_hop_prefix`, target =
       :func:`first_hop_phrase`, both at their last token (queries whose prompts do not split
       so are skipped, ``df.attrs["skipped"]``); ``reversed``: source = ``first_hop_prompt``'s
       last token, target = :func:`second_hop_template` at ``x``; residual at ``l`` -> ``l*``;
       greedy-generate ``max_new_tokens`` (all rows batched);
    3. if ``baselines``: plain generation on the two-hop prompt (``vanilla``,
       ``baseline_max_new_tokens``) and on ``"Let's think step by step. " + two-hop prompt``
       (``cot``, ``cot_max_new_tokens`` tokens, default 2 x ``max_new_tokens``);
    4. correct = the output contains the answer or an alias under ``match`` (:data:`MATCH_RULES`;
       ``patchscopes``: case-sensitive substring, also with spaces removed, as the notebook);
    5. ``control="random"`` (our addition): every patched row again with its source vector replaced
       by a norm-matched random direction (:func:`superscopes_nn.science.random_control.random_rows`, seeded by
       ``control_seed``; same resolved rows, same target, α 1), scored by the same ``match`` rule
       against the same answers: ``df.attrs["random"]`` (:data:`RANDOM_COLUMNS`, one row per patched
       row, same order; run store ``random_run_dir``). The baselines have no vector, so no random arm.

    ``pairs`` (``(l, l*)``) overrides ``layers`` (default: every layer x every layer). ``options`` /
    ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields, as
    :func:`~superscopes_nn.engine.run.run_rows` takes them (``max_new_tokens``: the patched rows', default 10).

    Columns: :data:`COT_COLUMNS` -- ``id``, ``method`` (``patchscope`` / ``vanilla`` /
    ``cot``), ``source_layer`` and ``target_layer`` (-1 for the baselines), ``prompt``
    (source prompt or baseline prompt), ``target_prompt`` (the template; empty for
    baselines), ``interpretation``, ``correct`` (bool), ``error``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    check_control(control)
    opts = RunOptions.of(options, **settings).with_defaults()
    max_new_tokens, max_batch_size, remote = opts.max_new_tokens, opts.max_batch_size, opts.remote
    n = model_info(model).n_layers
    if pairs is None:
        ls = list(range(n)) if layers is None else list(layers)
        pairs = [(a, b) for a in ls for b in ls]
    pairs = check_pairs(pairs, n, model_name(model))
    qs = load_queries(queries, limit, stratify)
    skipped: list = []
    if direction == "official":
        ok = [first_hop_phrase(q) is not None for _, q in qs.iterrows()]
        skipped = qs.id[[not o for o in ok]].tolist()
        qs = qs[ok].reset_index(drop=True)
    hops = None
    if only_correct and len(qs):
        phrase = [first_hop_phrase(q) or q["first_hop_prompt"] for _, q in qs.iterrows()]
        texts = generate_plain(model, phrase + qs.second_hop_prompt.tolist(), baseline_max_new_tokens,
                               max_batch_size, remote)
        n_q = len(qs)
        hops = pd.DataFrame({"id": qs.id, "hop1_output": texts[:n_q], "hop2_output": texts[n_q:]})
        rows = [q for _, q in qs.iterrows()]
        hops["hop1_correct"] = [alias_match(t, bridge_aliases(q), match) for t, q in zip(texts[:n_q], rows)]
        hops["hop2_correct"] = [alias_match(t, answer_aliases(q), match) for t, q in zip(texts[n_q:], rows)]
        keep = (hops.hop1_correct & hops.hop2_correct).tolist()
        qs = qs[keep].reset_index(drop=True)
    if qs.empty:
        out = pd.DataFrame(columns=COT_COLUMNS)
        out.attrs.update(model=model_name(model), skipped=skipped, hops=hops, direction=direction, match=match)
        return out
    rows = resolve(model, cot_patches(qs, pairs, direction=direction))
    aliases = {q["id"]: answer_aliases(q) for _, q in qs.iterrows()}
    ids = [i for i in qs.id for _ in pairs]
    frames = [patched_frame(run_rows(model, rows, opts), ids, "patchscope")]
    rnd = None
    if control == "random":
        rnd = patched_frame(random_arm(model, rows, opts.replace(run_dir=random_run_dir), seed=control_seed), ids,
                            "random")
        rnd["correct"] = [alias_match(t, aliases[i], match) for t, i in zip(rnd.interpretation, rnd.id)]
        rnd = rnd[RANDOM_COLUMNS]
    if baselines:
        cot_tokens = 2 * max_new_tokens if cot_max_new_tokens is None else cot_max_new_tokens
        for method, prompts, k in (("vanilla", qs.two_hop_prompt.tolist(), baseline_max_new_tokens),
                                   ("cot", [f"{COT_PREFIX} {p}" for p in qs.two_hop_prompt], cot_tokens)):
            texts = generate_plain(model, prompts, k, max_batch_size, remote)
            frames.append(pd.DataFrame({"id": qs.id, "method": method, "source_layer": -1, "target_layer": -1,
                                        "prompt": prompts, "target_prompt": "", "interpretation": texts,
                                        "error": None}))
    out = pd.concat(frames, ignore_index=True)
    out["correct"] = [alias_match(t, aliases[i], match) for t, i in zip(out.interpretation, out.id)]
    out = out[COT_COLUMNS]
    out.attrs.update(model=model_name(model), skipped=skipped, hops=hops, direction=direction, answers=aliases,
                     match=match, random=rnd)
    return out


def patched_frame(res: pd.DataFrame, ids: list, method: str) -> pd.DataFrame:
    """Run results (:func:`superscopes_nn.engine.run.run_rows`, one per patch, query-major) as rows of ``method``."""
    return pd.DataFrame({"id": ids, "method": method, "source_layer": res.source_layer.astype(int),
                         "target_layer": res.target_layer.astype(int), "prompt": res.source_prompt,
                         "target_prompt": res.target_prompt, "interpretation": res.interpretation,
                         "error": res.error, "mapping": res.mapping, "mapping_key": res.mapping_key})


def pair_chance(df: pd.DataFrame, answers: dict | None = None, n_boot: int = 2000, match: str | None = None,
                random_df: pd.DataFrame | None = None):
    """"Some (l, l*) pair answers" beside its chance level: each query's patched outputs matched
    (``match``, default ``df.attrs["match"]``, else ``patchscopes``) against another query's answer
    aliases, exact over derangements. ``random_df`` (default ``df.attrs["random"]``): the random arm's
    rows, scored by the same rule, add ``random`` / ``above_random``. None with < 2 queries."""
    answers = df.attrs.get("answers") if answers is None else answers
    if answers is None:
        return None
    random_df = df.attrs.get("random") if random_df is None else random_df
    return some_pair_chance(df[df.method == "patchscope"], answers, item="id",
                            rule=match or df.attrs.get("match") or "patchscopes", n_boot=n_boot,
                            random_rows=random_df)


def summarize(df: pd.DataFrame, random_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Accuracy per method over queries. ``patchscope_best_pairs``: a query is solved when any
    (l, l*) is correct (the paper's measure); ``patchscope_best_single_pair``: the single
    (l, l*) with the highest accuracy; with a random arm (``random_df``, default
    ``df.attrs["random"]``) the same two for it last (``random_best_pairs``,
    ``random_best_single_pair``). Columns: ``method``, ``accuracy``, ``n_queries``, ``pair``."""
    n_q = df.id.nunique()
    rows = best_rows(df[df.method == "patchscope"], "patchscope", n_q)
    for m in ("vanilla", "cot"):
        part = df[df.method == m]
        if not part.empty:
            rows.append(dict(method=m, accuracy=float(part.correct.mean()), n_queries=n_q, pair=""))
    random_df = df.attrs.get("random") if random_df is None else random_df
    if random_df is not None:
        rows += best_rows(random_df, "random", n_q)
    return pd.DataFrame(rows, columns=["method", "accuracy", "n_queries", "pair"])


def best_rows(ps: pd.DataFrame, name: str, n_q: int) -> list[dict]:
    """``<name>_best_pairs`` (share of the ``n_q`` queries some pair answers) and ``<name>_best_single_pair``."""
    if ps.empty:
        return []
    solved = ps.groupby("id").correct.any().sum()
    by_pair = ps.groupby(["source_layer", "target_layer"]).correct.mean()
    best = by_pair.idxmax()
    return [dict(method=f"{name}_best_pairs", accuracy=float(solved / n_q), n_queries=n_q, pair=""),
            dict(method=f"{name}_best_single_pair", accuracy=float(by_pair.max()), n_queries=n_q,
                 pair=f"{best[0]},{best[1]}")]


def accuracy_grid(df: pd.DataFrame) -> pd.DataFrame:
    """Patchscope accuracy per (source layer l: rows, target layer l*: columns)."""
    ps = df[df.method == "patchscope"]
    return ps.pivot_table(index="source_layer", columns="target_layer", values="correct", aggfunc="mean").astype(float)


def plot(df: pd.DataFrame, summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = accuracy_grid(df)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw=dict(width_ratios=[1.2, 1]))
    im = ax1.imshow(grid.values, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax1.set_xticks(range(len(grid.columns)), grid.columns)
    ax1.set_yticks(range(len(grid.index)), grid.index)
    ax1.set_xlabel("target layer l* (second hop)")
    ax1.set_ylabel("source layer l (first hop)")
    fig.colorbar(im, ax=ax1, label="accuracy")
    ax2.bar(summary.method, summary.accuracy, color=["C0", "C1", "C2", "C3"][: len(summary)])
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("accuracy")
    ax2.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv):
    p = parser("Multi-hop Patchscope (first hop patched into the second) vs baselines.", out="runs/multihop_cot", two_hop=True, limit_help="first N queries",
                       layers_help="comma-separated layers for l and l* (default: all)")
    p.add_argument("--direction", choices=DIRECTIONS, default="official",
                   help="official: second-hop prefix -> first-hop phrase; reversed: first hop -> 'The r2 of x is'")
    p.add_argument("--all-queries", action="store_true", help="drop the official only_correct filter")
    p.add_argument("--match", choices=MATCH_RULES, default="patchscopes",
                   help="answer test: patchscopes (official: case-sensitive, spaces removed); word: whole words")
    add_control(p)
    return p.parse_args(argv)


def main(argv=None, model=None) -> pd.DataFrame:
    args = parse_args(argv)
    model, out = setup(args, model)
    layers = int_list(getattr(args, "layers", None))
    t0 = time.perf_counter()
    df = multihop_cot(model, args.data, limit=args.limit, stratify=args.stratify, layers=layers,
                      direction=args.direction, only_correct=not args.all_queries, match=args.match,
                      control=args.control, control_seed=args.control_seed,
                      random_run_dir=rows_dir(out, "multihop_cot_random", args),
                      options=run_options(args, out, "multihop_cot", progress=True))
    summary = summarize(df)
    chance = pair_chance(df)
    report_pair_chance(chance, out / "multihop_cot_chance.csv", "shuffled-answer")
    save_csv(df, out / "multihop_cot.csv")
    if df.attrs.get("random") is not None:
        save_csv(df.attrs["random"], out / "multihop_cot_random.csv")
    if df.attrs.get("hops") is not None:
        save_csv(df.attrs["hops"], out / "multihop_cot_hops.csv")
    summary.to_csv(out / "multihop_cot_summary.csv", index=False)
    if len(df):
        plot(df, summary, out / "multihop_cot.png",
         f"Multi-hop Patchscope, {df.attrs['model']} ({df.id.nunique()} queries)")
    print(summary.round(3).to_string(index=False))
    print(f"{len(df)} rows in {time.perf_counter() - t0:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
