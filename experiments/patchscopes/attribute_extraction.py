"""Attribute extraction: can a subject's hidden state answer a relation question?

Patchscopes (Ghandeharioun et al. 2024, Sec. 4.2) take the LRE relations
(Hernandez et al. 2024: country -> currency, company -> CEO, fruit -> colour, ...).
The source is the subject's last token in a WikiText sentence (``--source subject``: the
subject alone, the earlier design) at layer ``l``; the target is the task's attribute prompt with ``x`` in
place of the subject (``"The official currency of x"``), patched at layer ``l*``.
An answer is correct when the object occurs in the generation::

    from superscopes_nn import load_model
    from experiments.patchscopes.attribute_extraction import lre_samples, attribute_extraction, task_summary
    samples = lre_samples(tasks="country_currency,country_capital_city", limit=10)
    df = attribute_extraction(load_model(), samples, layer_stride=3)
    task_summary(df)      # per task: accuracy at the best pair, best pair per task, input-only accuracy

Every (source layer, target layer) pair is tried (``layer_stride`` thins both).
Beside it, the Li et al. (2025) input-only baseline answers the same prompt with
the subject's text in place of ``x`` (``method == "input_only"``).

The LRE TSVs ship with the package (``superscopes_nn/data/patchscopes_lre``, provenance in
``data/README.md``; ``$SUPERSCOPES_SHARED_DATA`` or ``--lre-root`` override them). Run::

    .venv/bin/python experiments/patchscopes/attribute_extraction.py --limit 10 --layer-stride 3 --out runs/attribute_extraction

Protocol against the official code (PAIR-code/interpretability, ``patchscopes/code/attribute_extraction.ipynb``
and its preprocessed LRE TSVs, ``patchscopes/code/preprocessed_data/*/*.tsv``):

==============  ============================================================  ==================================
step            official code / data                                          here
==============  ============================================================  ==================================
source          ``prompt_source`` (a WikiText sentence with the subject),     ``--source wikitext`` (default): the
                ``position_source`` = the subject's last token                sentence cropped after the subject's
                (``source_cropped_toks``)                                     first occurrence, last token;
                                                                              ``--source subject``: the subject alone
target          ``prompt_target`` ("The official currency of x"),             same, at ``x``
                ``position_target = -1``
population      ``only_correct``: rows with ``is_correct_baseline`` (the      ``only_correct=True``: our model's own
                model answers ``target_baseline`` itself, 20 tokens in        answer to ``target_baseline`` (20
                ``generations_baseline``)                                     tokens) contains the object
samples         every TSV row: a subject with each of its WikiText            ``--contexts all`` (default): every
                contexts                                                      row, in file order, each read at its
                                                                              own context; ``--contexts first``:
                                                                              the first context of each subject
                                                                              (the earlier design)
layers          ``run_experiment``: ``range(mt.num_layers-1)`` for source     the same (``--all-layers`` adds the
                and target (the last layer left out)                          last; ``--layer-stride`` thins)
new tokens      ``patchscopes_utils.py``:                                     10 (``--max-new-tokens``)
                ``evaluate_attriburte_exraction_batch`` (``max_gen_len=10``,
                ``is_icl=False``)
correct         ``object.replace(" ", "")`` in the generation with spaces     ``--match patchscopes`` (default), the
                removed, case-sensitive                                       same; ``substring`` (case-insensitive):
                                                                              the earlier design
input only      --                                                            Li et al.: ``target_baseline``, 10
                                                                              tokens (as the patched rows)
some pair       --                                                            "some (l, l*) pair answers" per kept
                                                                              sample (:func:`pair_chance`) beside
                                                                              two nulls (ours): shuffled objects
                                                                              (exact over derangements) and, with
                                                                              ``--control random``, the same rows
                                                                              with norm-matched random vectors
==============  ============================================================  ==================================

A sample is one TSV row, keyed by (task, subject, ``sample_id``; :func:`superscopes_nn.data.lre.sample_items`);
``--limit`` counts subjects per task, each with all its rows. The ``only_correct`` filter depends on
the subject alone, so it keeps or drops all contexts of a subject together. In the shuffled-object
null the samples of one subject share an object, and the plain derangement average over samples is
still exactly the expected raw rate when the text carries nothing of the item, so same-object pairs
are not excluded.

The random-vector arm (``--control random``, ``control="random"``) is our addition, not in the
official code: every patched row of the kept samples is run again with its source vector
replaced by ``||v|| u`` (``u`` a random unit direction seeded per source vector by
``--control-seed``; :mod:`superscopes_nn.science.random_control`), same target prompt, position and layer,
scored by the same ``--match`` rule against the same object. The input-only rows get no random arm.

Outputs (``--out``): ``attribute_extraction.csv`` (patched + input-only rows: method, task, subject,
sample_id, object, target_prompt, source_context, source_prompt, source_layer, target_layer, interpretation,
correct, model), ``_random.csv.gz`` (the random arm, one row per patched row: ``method == "random"``,
the same columns plus source_position, target_position, mapping, mapping_key ``random:...``),
``_filter.csv`` (the only_correct filter), ``_chance.csv`` (one row: n, raw, null, above =
raw - null [, random, above_random = raw - random], each with ``_lo`` / ``_hi`` bootstrap 95%
bounds over samples, and ``*_count``), ``_summary.csv`` (:func:`task_summary`) and a figure.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import (add_control, check_args, parser, random_arm, report_pair_chance,  # noqa: E402
                                check_control, load, rows_dir, run_options, save_csv, some_pair_chance)
from superscopes_nn.core.options import RunOptions  # noqa: E402

from superscopes_nn.engine.rows import resolve  # noqa: E402
from superscopes_nn.engine.run import run_rows  # noqa: E402
from superscopes_nn.core.specs import Source, Target  # noqa: E402
from superscopes_nn.core.validate import check_layer  # noqa: E402

from superscopes_nn.science.baselines import input_only  # noqa: E402
from superscopes_nn.science.scoring import MATCH_RULES, answer_match  # noqa: E402
from superscopes_nn.data.lre import CONTEXTS, SAMPLE_COLUMNS, check_samples, crop_context, lre_samples, sample_items  # noqa: E402
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

SOURCES = ("wikitext", "subject")
RANDOM_COLUMNS = ["source_position", "target_position", "mapping", "mapping_key"]
"""Columns the random-arm rows keep beside the real rows' (which source / target position, and the
``random:`` mapping key that names the seeded direction)."""

def attribute_extraction(model, samples: pd.DataFrame, *, layers: Iterable[int] | None = None,
                         target_layers: Iterable[int] | None = None, layer_stride: int = 1,
                         baseline: bool = True, source: str = "wikitext", only_correct: bool = True,
                         match: str = "patchscopes", all_layers: bool = False, baseline_max_new_tokens: int = 20,
                         control: str = "none", control_seed: int = 0, random_run_dir=None,
                         options: RunOptions | None = None, **settings) -> pd.DataFrame:
    """Patchscope attribute extraction over (source layer, target layer) pairs, plus the input-only baseline.

    Steps:

    0. input-only answers (subject text in place of ``x``); ``only_correct`` keeps the
       samples answered correctly in ``baseline_max_new_tokens`` tokens (the official
       ``is_correct_baseline`` filter);
    1. source = ``source="wikitext"``: the sample's WikiText context cropped after the subject
       (:func:`crop_context`), ``"subject"``: the subject alone; last token, layer ``l`` (residual);
    2. target = the task's prompt at ``x``, layer ``l*``; every pair of ``layers`` x
       ``target_layers`` (default every ``layer_stride``-th layer but the last, as the official
       ``range(num_layers - 1)``; ``all_layers`` keeps the last); greedy generation;
    3. if ``baseline``: the input-only rows (``max_new_tokens``, as the patched rows) are kept;
    4. ``correct`` = the object is in the generation under ``match`` (:data:`MATCH_RULES`);
    5. ``control="random"``: every patched row again with its source vector replaced by a
       norm-matched random direction (:func:`superscopes_nn.science.random_control.random_rows`, seeded
       by ``control_seed``; same rows, same target, same ``correct`` rule), kept in
       ``df.attrs["random"]`` (``method == "random"``, plus :data:`RANDOM_COLUMNS`; its run store
       is ``random_run_dir``). The input-only rows have no vector and get no random arm.

    ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields, as
    :func:`~superscopes_nn.engine.run.run_rows` takes them (``max_new_tokens`` defaults to 10).

    Columns: method (``patchscope`` / ``input_only``), task, subject, sample_id, object, target_prompt,
    source_layer, target_layer (-1 for the baseline), interpretation, correct, model.
    """
    samples = check_samples(samples)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if isinstance(layer_stride, bool) or not isinstance(layer_stride, int) or layer_stride < 1:
        raise ValueError(f"layer_stride must be an int >= 1, got {layer_stride!r}")
    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {MATCH_RULES}, got {match!r}")
    check_control(control)
    opts = RunOptions.of(options, **settings).with_defaults()
    max_new_tokens, max_batch_size, remote = opts.max_new_tokens, opts.max_batch_size, opts.remote
    n = model_info(model).n_layers
    name = model_name(model)
    src = list(range(0, n if all_layers else n - 1, layer_stride)) if layers is None else [check_layer(l, n, "source", name) for l in layers]
    tgt = list(src) if target_layers is None else [check_layer(l, n, "target", name) for l in target_layers]
    if not src or not tgt:
        raise ValueError(f"empty layer list (source {src}, target {tgt})")
    def ok(t, o):
        return answer_match(t, [o], match)

    # the input-only prompt depends on (task prompt, subject) alone: run it once per subject, then per sample
    subj = ["task", "subject", "target_prompt"]
    uniq = samples.drop_duplicates(subj).reset_index(drop=True)
    at = pd.MultiIndex.from_frame(uniq[subj]).get_indexer(pd.MultiIndex.from_frame(samples[subj]))

    def answers(tokens):
        got = input_only(model, uniq.target_prompt.tolist(), uniq.subject.tolist(), max_new_tokens=tokens,
                         max_batch_size=max_batch_size, remote=remote)
        return got.iloc[at].reset_index(drop=True)

    base = answers(max_new_tokens)
    filt = base if baseline_max_new_tokens == max_new_tokens else answers(baseline_max_new_tokens)
    base_ok = [ok(t, o) for t, o in zip(filt.interpretation, samples.object)]
    base_frame = pd.DataFrame({"method": "input_only", **{c: samples[c] for c in SAMPLE_COLUMNS},
                               "source_layer": -1, "target_layer": -1, "interpretation": base.interpretation})
    kept = samples[base_ok].reset_index(drop=True) if only_correct else samples
    patches, meta = [], []
    for k, smp in enumerate(kept.itertuples(index=False)):
        prompt = crop_context(smp.source_context, smp.subject) if source == "wikitext" else smp.subject
        for ls in src:
            for lt in tgt:
                patches.append((Source(prompt, ls, -1), Target(smp.target_prompt, layer=lt), None))
                meta.append(k)
    frames = [base_frame] if baseline else []
    random_frame = None
    if patches:
        resolved = resolve(model, patches)  # one set of rows for both arms
        res = run_rows(model, resolved, opts)
        smp = kept.iloc[meta].reset_index(drop=True)

        def frame(method, r, extra=()):
            return pd.DataFrame({"method": method, **{c: smp[c] for c in SAMPLE_COLUMNS},
                                 "source_prompt": r.source_prompt, "source_layer": r.source_layer,
                                 "target_layer": r.target_layer, **{c: r[c] for c in extra},
                                 "interpretation": r.interpretation})

        frames.insert(0, frame("patchscope", res))
        if control == "random":
            rnd = random_arm(model, resolved, opts.replace(run_dir=random_run_dir), seed=control_seed)
            random_frame = frame("random", rnd, RANDOM_COLUMNS)
            random_frame["correct"] = [ok(t, o) for t, o in zip(random_frame.interpretation, random_frame.object)]
            random_frame["model"] = name
    if not frames:
        frames = [base_frame.iloc[:0]]
    out = pd.concat(frames, ignore_index=True)
    out["correct"] = [ok(t, o) for t, o in zip(out.interpretation, out.object)]
    out["model"] = name
    if random_frame is not None:
        out.attrs["random"] = random_frame
    out.attrs.update(source=source, only_correct=only_correct, n_samples=len(samples), n_kept=len(kept), match=match,
                     filter=pd.DataFrame({"task": samples.task, "subject": samples.subject,
                                          "sample_id": samples.sample_id, "object": samples.object,
                                          "baseline_output": filt.interpretation, "kept": base_ok}))
    return out


def pair_chance(df: pd.DataFrame, n_boot: int = 2000, match: str | None = None, random: pd.DataFrame | None = None):
    """"Some (l, l*) pair answers" per sample beside its chance level: each sample's patched outputs
    matched (``match``, default ``df.attrs["match"]``, else ``patchscopes``) against another sample's
    object, exact over derangements. A sample is ``task|subject|sample_id``
    (:func:`superscopes_nn.data.lre.sample_items`; ``task|subject`` for rows without ``sample_id``).
    ``random``: the random-arm rows (default ``df.attrs["random"]`` when there): the same rule on
    them adds ``random`` / ``above_random``. None with < 2."""
    def items(d):
        return d.assign(item=sample_items(d))

    ps = items(df[df.method == "patchscope"])
    random = df.attrs.get("random") if random is None else random
    return some_pair_chance(ps, dict(zip(ps.item, ps.object)), item="item",
                            rule=match or df.attrs.get("match") or "patchscopes", n_boot=n_boot,
                            random_rows=None if random is None else items(random))


def pair_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Patchscope accuracy per (task, source_layer, target_layer)."""
    ps = df[df.method == "patchscope"]
    return ps.groupby(["task", "source_layer", "target_layer"]).correct.mean().rename("accuracy").reset_index()


def best_pair(df: pd.DataFrame) -> tuple[int, int, float]:
    """The (source_layer, target_layer) with the best accuracy averaged over tasks, and that accuracy."""
    acc = pair_accuracy(df).groupby(["source_layer", "target_layer"]).accuracy.mean()
    (ls, lt), a = acc.idxmax(), acc.max()
    return int(ls), int(lt), float(a)


def task_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per task: n, accuracy at the overall best pair, the task's own best pair and accuracy
    (an optimistic, per-task oracle), the mean over all pairs, and the input-only accuracy."""
    acc = pair_accuracy(df)
    ls, lt, _ = best_pair(df)
    recs = []
    for task, g in acc.groupby("task"):
        top = g.loc[g.accuracy.idxmax()]
        base = df[(df.method == "input_only") & (df.task == task)].correct
        recs.append({
            "task": task, "n": int(((df.method == "patchscope") & (df.task == task)).sum() // len(g)),
            "acc_best_pair": float(g[(g.source_layer == ls) & (g.target_layer == lt)].accuracy.iloc[0]),
            "task_best_source_layer": int(top.source_layer), "task_best_target_layer": int(top.target_layer),
            "acc_task_best_pair": float(top.accuracy), "acc_mean_all_pairs": float(g.accuracy.mean()),
            "input_only_acc": float(base.mean()) if len(base) else float("nan"),
        })
    return pd.DataFrame.from_records(recs)


def plot(df: pd.DataFrame, summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = pair_accuracy(df).groupby(["source_layer", "target_layer"]).accuracy.mean().unstack("target_layer")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    im = a1.imshow(grid.values, origin="lower", vmin=0, vmax=max(1e-9, float(grid.values.max())), cmap="viridis")
    a1.set_xticks(range(grid.shape[1]), grid.columns)
    a1.set_yticks(range(grid.shape[0]), grid.index)
    a1.set_xlabel("target layer")
    a1.set_ylabel("source layer")
    a1.set_title("mean accuracy over tasks", fontsize=9)
    fig.colorbar(im, ax=a1)
    x = range(len(summary))
    a2.bar([i - 0.2 for i in x], summary.acc_best_pair, width=0.4, label="Patchscope (best pair)")
    a2.bar([i + 0.2 for i in x], summary.input_only_acc, width=0.4, label="input only")
    a2.set_xticks(list(x), summary.task, rotation=45, ha="right", fontsize=7)
    a2.set_ylim(0, 1)
    a2.set_ylabel("accuracy")
    a2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv):
    p = parser("Attribute extraction on LRE tasks (Patchscopes Sec. 4.2).", out="runs/attribute_extraction",
               max_new_tokens=10, limit_help="subjects per task")
    p.add_argument("--source", choices=SOURCES, default="wikitext",
                   help="wikitext: the subject in its WikiText context (official); subject: the subject alone")
    p.add_argument("--contexts", choices=CONTEXTS, default="all",
                   help="all: every TSV row, each subject in each of its contexts (official); first: the first "
                   "context of each subject (the earlier design)")
    p.add_argument("--all-samples", action="store_true", help="drop the official only_correct filter")
    p.add_argument("--all-layers", action="store_true", help="also the last layer (official: range(num_layers - 1))")
    p.add_argument("--match", choices=MATCH_RULES, default="patchscopes",
                   help="answer test: patchscopes (official: case-sensitive, spaces removed); substring: any case")
    p.add_argument("--tasks", default="all", help="comma-separated LRE task names, or 'all'")
    p.add_argument("--layer-stride", type=int, default=1, help="every k-th layer, for source and target")
    p.add_argument("--lre-root", default=None, help="folder of the LRE TSVs (default: the shipped "
                   "superscopes_nn/data/patchscopes_lre, or $SUPERSCOPES_SHARED_DATA/patchscopes_lre when set)")
    add_control(p)
    return check_args(p, p.parse_args(argv))


def main(argv=None, model=None) -> pd.DataFrame:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    samples = lre_samples(args.lre_root, tasks=args.tasks, limit=args.limit, contexts=args.contexts)
    model = model if model is not None else load(args)  # meta weights under --remote to NDIF
    df = attribute_extraction(model, samples, layer_stride=args.layer_stride, source=args.source,
                              only_correct=not args.all_samples, match=args.match, all_layers=args.all_layers,
                              control=args.control, control_seed=args.control_seed,
                              random_run_dir=rows_dir(out, "attribute_extraction_random", args),
                              options=run_options(args, out, "attribute_extraction", progress=True))
    save_csv(df, out / "attribute_extraction.csv")
    save_csv(df.attrs["filter"], out / "attribute_extraction_filter.csv")
    print(f"{df.attrs['n_kept']} of {df.attrs['n_samples']} samples kept (only_correct={not args.all_samples}, "
          f"contexts={args.contexts}, {samples.groupby(['task', 'subject']).ngroups} subjects)")
    if not (df.method == "patchscope").any():
        print("no sample left to patch")
        return df
    if "random" in df.attrs:
        save_csv(df.attrs["random"], out / "attribute_extraction_random.csv.gz")
    chance = pair_chance(df)
    report_pair_chance(chance, out / "attribute_extraction_chance.csv", "shuffled-object")
    summary = task_summary(df)
    ls, lt, acc = best_pair(df)
    summary.to_csv(out / "attribute_extraction_summary.csv", index=False)
    plot(df, summary, out / "attribute_extraction.png",
         f"{model_name(model)}: LRE attribute extraction ({len(samples)} samples; best pair {ls}->{lt})")
    print(summary.round(3).to_string(index=False))
    base = df[df.method == "input_only"].correct.mean()
    print(f"best pair: source layer {ls} -> target layer {lt}, mean accuracy over tasks {acc:.3f} "
          f"(input only {base:.3f})")
    print(f"{len(df)} rows in {time.perf_counter() - t0:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
