"""Entity resolution across layers: how early does a subject's last token "know" the entity?

Patchscopes (Ghandeharioun et al. 2024, Sec. 4.4) read the hidden state of the
last token of an entity name (``"Alexander the Great"`` -> ``" Great"``) at layer
``l``, patch it into the few-shot description prompt ``ENTITY_PROMPT`` (``"Syria:
Country in the Middle East, ..., x"``) at ``x`` in the same layer, and let the
model write a description. Scoring it against a curated description per layer
shows where the entity gets resolved::

    from superscopes_nn import load_model
    from experiments.patchscopes.entity_resolution import entity_chance, entity_resolution, summarize
    df = entity_resolution(load_model(), limit=20)
    summarize(df)      # method, source_layer, score_alias, score_rouge_l, score_cosine, n
    df = entity_resolution(load_model(), limit=20, control="random")   # + method == "random" rows
    entity_chance(df)  # raw, null, above; random, above_random for the patchscope rows

Metrics (``superscopes_nn.science.scoring``), columns ``score_<metric>``: ``alias`` (the name or an alias occurs
in the text), ``rouge_l`` and ``cosine`` (MiniLM embeddings) against the curated
description. The Li et al. (2025) input-only baseline (the name written in
place of ``x``, plain generation; ``method == "input_only"``) is scored the same
way and drawn beside the per-layer curves.

Chance levels (:func:`entity_chance`, on :func:`superscopes_nn.science.chance.layer_chance`): each
entity's generations scored against *another* entity's aliases / description (exact average
over derangements of the entities), per layer and for the best-of-layers score, with bootstrap
95% intervals over entities. With ``control="random"`` (``--control random``) every patchscope
row is run a second time with the patched vector replaced by a norm-matched random direction
(:func:`superscopes_nn.science.random_control.random_rows`: same entity, layer, target and position,
``||v||`` kept, one seeded direction per source vector; ``method == "random"``), scored by the
same rule against the same references; the chance table's ``patchscope`` rows gain ``random``,
``above_random`` (= raw - random, with ``_lo`` / ``_hi``) and ``random_count``. The input-only
baseline patches nothing and has no random arm. The script writes the random rows to
``OUT/entity_resolution_random.csv`` (the real rows stay in ``entity_resolution.csv``), keeps
them in ``OUT/entity_resolution_random<settings>_rows`` (resumable) and adds ``method == "random"`` rows
to the summary and dotted curves to the figure.

Run::

    .venv/bin/python experiments/patchscopes/entity_resolution.py --limit 20 --out runs/entity_resolution
    .venv/bin/python experiments/patchscopes/entity_resolution.py --limit 60 --control random --out runs/entity
    superscopes run entity_resolution --dataset popqa --out runs/entity_popqa   # the official 400 PopQA subjects

Protocol against the official code (PAIR-code/interpretability, ``patchscopes/code/entity_processing.ipynb``,
the cell calling ``inspect`` of ``patchscopes_utils.py``):

==============  =========================================================  ====================================
step            official code                                              here
==============  =========================================================  ====================================
entities        PopQA (``popQA.tsv``): the 200 least and 200 most popular  ``--dataset popqa``: the same (hub
                subjects (``s_pop``), no reference descriptions            ``akariasai/PopQA``, alias scoring only);
                                                                           default ``curated``:
                                                                           ``superscopes_nn/data/entities.jsonl``
                                                                           (offline, one-line descriptions)
source          ``prompt_source`` = the entity name, ``position_source     same (the name alone, last token)
                = -1``
target          the few-shot ``prompt_target`` ("Syria: Country in the     ``ENTITY_PROMPT`` (the same text),
                Middle East, ..., x"), ``position_target = -1``            at ``x`` (its last token)
layers          ``layer_target = layer_source``, ``range(10)`` (Pythia     same layer; the script: ``range(10)``
                12B, 36 layers)                                            (``--all-layers``: every layer, the
                                                                           earlier design); the function: all
new tokens      ``max_gen_len = 50``, greedy                               50 (``--max-new-tokens``; 20 was the
                                                                           earlier design)
scoring         none in the notebook (the paper: RougeL against            ``alias``, ``rouge_l``, ``cosine``
                Wikipedia descriptions)                                    against the curated description
baseline        --                                                         Li et al. input-only (name for ``x``)
chance          --                                                         :func:`entity_chance`: shuffled-entity
                                                                           null; ``--control random`` adds the
                                                                           norm-matched random-vector arm (our
                                                                           addition, not in the official code)
==============  =========================================================  ====================================
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import (add_control, check_args, check_control, parser, random_arm, rows_dir,  # noqa: E402
                                load, run_options, save_csv)
from superscopes_nn.core.options import RunOptions  # noqa: E402
from superscopes_nn.core.specs import ENTITY_PROMPT, Target  # noqa: E402
from superscopes_nn.core.validate import check_layer  # noqa: E402
from superscopes_nn.engine.rows import sweep_rows  # noqa: E402
from superscopes_nn.engine.run import run_rows  # noqa: E402
from superscopes_nn.science.baselines import input_only  # noqa: E402
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

METRICS = ("alias", "rouge_l", "cosine")
"""Metric names (as in :data:`superscopes_nn.science.scoring.METRICS`); each adds a ``score_<name>`` column."""
ENTITY_COLUMNS = ("name", "type", "description", "aliases")
POPQA_PER_END = 200
"""``--dataset popqa`` (``entity_processing.ipynb``): the 200 least and the 200 most popular PopQA subjects."""
OFFICIAL_LAYERS = 10
"""``entity_processing.ipynb`` loops ``for layer_source in range(10)``: the script's default layers."""


def entity_table(entities=None, limit: int | None = None) -> pd.DataFrame:
    """Entities as a DataFrame (name, type, description, aliases); default ``load_entities()``.

    ``limit`` keeps the first ``limit`` entities of each type in turn (round robin),
    so a small subset still covers every type.
    """
    if entities is None:
        from superscopes_nn.data.datasets import load_entities

        entities = load_entities()
    if hasattr(entities, "to_pandas"):  # a datasets.Dataset
        entities = entities.to_pandas()
    df = entities.copy() if isinstance(entities, pd.DataFrame) else pd.DataFrame([dict(e) for e in entities])
    missing = {"name", "description"} - set(df.columns)
    if missing:
        raise ValueError(f"entities lack fields {sorted(missing)}; have {list(df.columns)}")
    if "aliases" not in df:
        df["aliases"] = [[] for _ in range(len(df))]
    if "type" not in df:
        df["type"] = ""
    df = df[list(ENTITY_COLUMNS)].reset_index(drop=True)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        df["_rank"] = df.groupby("type").cumcount()
        df = df.sort_values(["_rank"], kind="stable").head(limit).drop(columns="_rank").reset_index(drop=True)
    if df.empty:
        raise ValueError("no entities given")
    return df


def description_of(text) -> str:
    """The description part of a few-shot continuation: drop a leading ``":"``, stop at the
    next entry (``","``) or line break."""
    if not isinstance(text, str):
        return ""
    t = text.strip()
    t = t[1:] if t.startswith(":") else t
    for stop in ("\n", ","):
        t = t.split(stop, 1)[0]
    return t.strip()


def score(df: pd.DataFrame, ents: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Add one ``score_<metric>`` column per metric (the scheme of :func:`superscopes_nn.science.scoring.score_frame`):
    ``score_alias``, alias match on the whole continuation (name + aliases); ``score_rouge_l`` and
    ``score_cosine``, ROUGE-L and embedding cosine of its description part against the curated description."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    from superscopes_nn.science import scoring

    df = df.copy()
    by_name = ents.set_index("name")
    if "alias" in metrics:
        df["score_alias"] = [bool(scoring.alias_match(t or "", [n, *list(by_name.aliases[n])]))
                             for t, n in zip(df.interpretation, df.entity)]
    refs = [by_name.description[n] for n in df.entity]
    if "rouge_l" in metrics:
        df["score_rouge_l"] = [float(x) for x in scoring.rouge_l(df.answer.tolist(), refs)]
    if "cosine" in metrics:
        df["score_cosine"] = [float(x) for x in scoring.embedding_cosine(df.answer.tolist(), refs)]
    return df


def entity_resolution(model, entities=None, *, limit: int | None = None, layers: Iterable[int] | None = None,
                      target_prompt: str = ENTITY_PROMPT, metrics: Sequence[str] = METRICS,
                      baseline: bool = True, target_model=None, mapping=None, control: str = "none",
                      control_seed: int = 0, random_run_dir=None, options: RunOptions | None = None,
                      **settings) -> pd.DataFrame:
    """Entity descriptions decoded from each layer, scored, plus the input-only baseline.

    Steps:

    1. source = each entity name alone, its last token, every layer ``l`` (residual);
    2. target = ``target_prompt`` at ``x``, target layer = ``l``; greedy-generate
       ``max_new_tokens`` tokens (``options``, default 50) (the rows of :func:`~superscopes_nn.engine.rows.sweep_rows`, run batched);
    3. if ``control == "random"``: the same resolved rows with each patched vector replaced by a
       norm-matched random direction (:func:`superscopes_nn.science.random_control.random_rows`, seeded by
       ``control_seed``; ``method == "random"``, ``mapping_key`` starting ``"random:"``; kept in
       ``random_run_dir`` if given);
    4. if ``baseline``: the input-only control (name in place of ``x``, no patching; no random arm);
    5. score every row with ``metrics`` (empty = no scoring), the random rows by the same rule.

    ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields, as
    :func:`~superscopes_nn.engine.run.run_rows` takes them (``max_new_tokens`` defaults to 50).

    Columns: the sweep's result columns (``source_layer`` is -1 for the baseline) plus
    ``method`` (``patchscope`` / ``random`` / ``input_only``), ``entity``, ``type``, ``description``,
    ``answer`` (the description part of the continuation) and one column per metric
    (``score_alias`` bool, ``score_rouge_l`` and ``score_cosine`` floats).
    """
    check_control(control)
    opts = RunOptions.of(options, **settings).with_defaults(max_new_tokens=50)
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    ents = entity_table(entities, limit)
    n = model_info((target_model or model)).n_layers
    n_src = model_info(model).n_layers
    layers = list(range(min(n, n_src))) if layers is None else [check_layer(l, n_src, "source", model_name(model))
                                                                 for l in layers]
    names = ents.name.tolist()
    rows = sweep_rows(model, names, layers=layers, position=-1, target=Target(target_prompt), target_model=target_model,
                      mapping=mapping)
    df = run_rows(model, rows, opts, target_model=target_model)
    df.insert(0, "method", "patchscope")
    frames = [df]
    if control == "random":
        rnd = random_arm(model, rows, opts.replace(run_dir=random_run_dir), target_model=target_model, seed=control_seed)
        rnd.insert(0, "method", "random")
        frames.append(rnd)
    for f in frames:
        f["entity"] = f.source_prompt
    if baseline:
        base = input_only(target_model or model, target_prompt, names, max_new_tokens=opts.max_new_tokens,
                          max_batch_size=opts.max_batch_size, remote=opts.remote)
        frames.append(pd.DataFrame({
            "method": "input_only", "source_prompt": base.subject, "source_layer": -1, "target_prompt": base.prompt,
            "model": base.model, "target_model": base.model, "interpretation": base.interpretation,
            "entity": base.subject,
        }))
    out = pd.concat(frames, ignore_index=True)
    out = out.merge(ents[["name", "type", "description"]].rename(columns={"name": "entity"}), on="entity", how="left")
    out["answer"] = [description_of(t) for t in out.interpretation]
    return score(out, ents, metrics) if metrics else out


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric per (method, source_layer), with the row count ``n``."""
    cols = [f"score_{m}" for m in METRICS if f"score_{m}" in df]
    g = df.groupby(["method", "source_layer"])
    out = g[cols].mean() if cols else g.size().to_frame("n").iloc[:, :0]
    out["n"] = g.size()
    return out.reset_index()


def entity_chance(df: pd.DataFrame, ents: pd.DataFrame | None = None, metrics: Sequence[str] = METRICS,
                  n_boot: int = 2000, n_derangements: int | None = None,
                  random_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every metric per layer and best over layers, beside its shuffled-entity chance level.

    Per ``method`` (``patchscope``; ``input_only`` as one "layer" -1): entity i's texts scored
    against entity j's references, j != i (the exact derangement average, or ``n_derangements``
    sampled ones): ``alias`` = the whole continuation names j's name or an alias (a rate);
    ``rouge_l`` / ``cosine`` = its description part (``answer``) against j's description (mean
    scores; an empty answer scores 0). ``ents``: the entity table (:func:`entity_table`, default
    all entities) for the aliases. Columns: ``metric``, ``method``, then those of
    :func:`superscopes_nn.science.chance.layer_chance` (``scope`` "layer" or "best of layers").

    Random-vector arm: ``random_df`` (default: the rows of ``df`` with ``method == "random"``),
    the patchscope rows run with norm-matched random vectors and scored by the same rule against
    the same references; adds ``random`` / ``above_random`` (with ``_lo`` / ``_hi``) and
    ``random_count`` to the ``patchscope`` rows (NaN for ``input_only``, which patches nothing).
    """
    from superscopes_nn.science.chance import alias_pairs, cosine_pairs, layer_chance, rouge_pairs

    if random_df is None and "method" in df and (df.method == "random").any():
        random_df = df[df.method == "random"]
    df = df[df.method != "random"]
    if random_df is not None and random_df.empty:
        random_df = None
    ents = entity_table(ents)
    by_name = ents.drop_duplicates("name").set_index("name")
    names = sorted(df.entity.unique(), key=str)
    missing = sorted(set(names) - set(by_name.index))
    if missing:
        raise ValueError(f"entities not in the entity table: {missing[:5]}")
    specs = {"alias": (alias_pairs(), 0.5, "interpretation", {n: [n, *list(by_name.aliases[n])] for n in names}),
             "rouge_l": (rouge_pairs(), None, "answer", {n: by_name.description[n] for n in names}),
             "cosine": (cosine_pairs(), None, "answer", {n: by_name.description[n] for n in names})}
    frames = []
    for m in metrics:
        pairs, thr, text, refs = specs[m]
        for method, part in df.groupby("method", sort=True):
            rnd = random_df if method == "patchscope" else None
            t = layer_chance(part, pairs, threshold=thr, reference=refs, item="entity", text=text, n_boot=n_boot,
                             n_derangements=n_derangements, random_df=rnd)
            if method != "patchscope":
                t = t[t.scope == "layer"]
            frames.append(t.assign(metric=m, method=method))
    out = pd.concat(frames, ignore_index=True)
    return out[["metric", "method"] + [c for c in out.columns if c not in ("metric", "method")]]


def plot(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [f"score_{m}" for m in METRICS if f"score_{m}" in summary]
    fig, ax = plt.subplots(figsize=(7, 4))
    ps = summary[summary.method == "patchscope"]
    base = summary[summary.method == "input_only"]
    for k, m in enumerate(cols):
        ax.plot(ps.source_layer, ps[m], "o-", color=f"C{k}", label=f"{m} (Patchscope)")
        if len(base):
            ax.axhline(float(base[m].iloc[0]), color=f"C{k}", ls="--", alpha=0.8, label=f"{m} (input only)")
        rnd = summary[summary.method == "random"]
        if len(rnd):
            ax.plot(rnd.source_layer, rnd[m], ":", color=f"C{k}", alpha=0.8, label=f"{m} (random vector)")
    ax.set_xlabel("source layer = target layer")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    if cols:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv):
    p = parser("Entity resolution across layers (Patchscopes Sec. 4.4).", out="runs/entity_resolution", max_new_tokens=50,
               limit_help="number of entities (round robin over types)")
    p.add_argument("--dataset", choices=("curated", "popqa"), default="curated", help="curated: entities.jsonl (offline); popqa: "
                   "the official 200 least + 200 most popular PopQA subjects (akariasai/PopQA, cached; alias only)")
    p.add_argument("--popqa-source", default=None, help="a local copy of akariasai/PopQA (a folder with test.tsv)")
    p.add_argument("--entities", default=None, help="a JSON Lines file of entities (default: superscopes_nn/data/entities.jsonl)")
    p.add_argument("--layer-stride", type=int, default=1, help="every k-th layer")
    p.add_argument("--all-layers", action="store_true",
                   help=f"every layer (default: the official range({OFFICIAL_LAYERS}), layers 0..{OFFICIAL_LAYERS - 1})")
    p.add_argument("--metrics", default=None, help="comma-separated subset of " + ",".join(METRICS)
                   + " ('' = generate only; default all, alias for --dataset popqa)")
    add_control(p)
    args = check_args(p, p.parse_args(argv))
    popqa = args.dataset == "popqa"
    args.metrics = ("alias" if popqa else ",".join(METRICS)) if args.metrics is None else args.metrics
    if popqa and (args.entities or {"rouge_l", "cosine"} & set(args.metrics.split(","))):
        p.error("--dataset popqa takes no --entities and only --metrics alias (PopQA has no reference descriptions)")
    return args


def load_entities_for(args) -> pd.DataFrame | None:
    """The entity set the arguments name: ``--entities`` file, PopQA's two popularity ends, or None (curated)."""
    from superscopes_nn.data.external_data import POPQA_HUB_ID, load_popqa, popqa_entities

    if args.dataset == "popqa":
        return popqa_entities(load_popqa(source=args.popqa_source or POPQA_HUB_ID), per_end=POPQA_PER_END)
    return pd.read_json(args.entities, lines=True) if args.entities else None


def chance_line(r) -> str:
    """One ``best of layers`` / layer row of :func:`entity_chance`: raw, shuffled-entity null, random-vector
    rate (when the table has the random arm) and both margins, each with its 95% interval, and n."""
    def iv(key, sign=""):
        return f"{getattr(r, key):{sign}.3f} [{getattr(r, key + '_lo'):{sign}.3f}, {getattr(r, key + '_hi'):{sign}.3f}]"

    rnd = (f"; random vector {iv('random')}; above random {iv('above_random', '+')}"
           if pd.notna(getattr(r, "random", float("nan"))) else "")
    return (f"{r.metric}, {r.method}, {r.scope}: raw {iv('raw')}; shuffled-entity null {iv('null')}; "
            f"above null {iv('above', '+')}{rnd} (n={r.n})")


def main(argv=None, model=None) -> pd.DataFrame:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = model if model is not None else load(args)  # meta weights under --remote to NDIF
    n = model_info(model).n_layers
    layers = range(0, n if args.all_layers else min(OFFICIAL_LAYERS, n), args.layer_stride)
    metrics = [m for m in args.metrics.split(",") if m]
    entities = load_entities_for(args)
    df = entity_resolution(model, entities, limit=args.limit, layers=layers, metrics=metrics,
                           control=args.control, control_seed=args.control_seed,
                           random_run_dir=rows_dir(out, "entity_resolution_random", args),
                           options=run_options(args, out, "entity_resolution", progress=True))
    summary = summarize(df)
    save_csv(df[df.method != "random"], out / "entity_resolution.csv")
    if args.control == "random":
        save_csv(df[df.method == "random"], out / "entity_resolution_random.csv")
    summary.to_csv(out / "entity_resolution_summary.csv", index=False)
    if metrics and df.entity.nunique() > 1:
        chance = entity_chance(df, entities, metrics)
        chance.to_csv(out / "entity_resolution_chance.csv", index=False)
        for r in chance[chance.scope == "best of layers"].itertuples():
            print(chance_line(r))
    n_ent = df.entity.nunique()
    plot(summary, out / "entity_resolution.png", f"{model_name(model)}: entity descriptions by layer ({n_ent} entities)")
    print(summary.round(3).to_string(index=False))
    ps = summary[summary.method == "patchscope"]
    if len(ps) and metrics:
        col = f"score_{metrics[-1]}"
        best = ps.loc[ps[col].idxmax()]
        print(f"best layer by {col}: {int(best.source_layer)} ({best[col]:.3f})")
    print(f"{len(df)} rows in {time.perf_counter() - t0:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
