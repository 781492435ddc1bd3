"""Verbalizer vs target on taught persona facts (Li et al. 2025's PersonaQA control).

Li et al. (2025, "Do natural language descriptions of model activations convey privileged
information?") fine-tune a target model on invented personas (PersonaQA), so that the target
knows facts no verbalizer could know, and ask whether a Patchscope of the target's state says
the *target's* fact or the *verbalizer's* prior. Here:

- **target** (the source of states): Gemma 3 270M taught 48 invented facts
  (:data:`superscopes_nn.data.personaqa.INVENTED`, :func:`superscopes_nn.science.finetune.taught_model`);
- **verbalizers**: ``unchanged`` (the untaught Gemma, identity map: Li's setting, their decoder
  is the untuned instruct model), ``cross`` (SmolLM2-135M through a ridge affine map fitted on
  shared texts, :func:`experiments.li2025.controls.fit_maps`) and ``self`` (the taught Gemma decoding
  itself: the upper reference);
- per verbalization: does it state the taught fact, the verbalizer's *prior* (its own
  input-only answer to the filled question, normalised to the closed option set), both or
  neither (:func:`classify`); rates per verbalizer and source layer with bootstrap intervals
  over personas and a derangement chance level (:func:`rate_table`);
- baselines: input-only and Li's zero-shot (:func:`superscopes_nn.science.baselines.zero_shot`) of the
  taught and the unchanged model.

Run::

    .venv/bin/python experiments/li2025/persona_control.py --out runs/persona_control
    .venv/bin/python experiments/li2025/persona_control.py --data path/to/PersonaQA   # the real set, same code

Protocol against Li et al.'s code (millicentli/verb_faithfulness):

================  ==========================================================  ================================
step              their code                                                  here
================  ==========================================================  ================================
data              ``datasets/personaqa/*/<attribute>.json``                   same layout (``--data``); default
                                                                              our invented 24 x 2 facts
target model      Llama-3-8B fine-tuned on PersonaQA (``scripts/exp3.sh``;    Gemma 3 270M, MLPs fine-tuned on
                  the fine-tuning script is not in the repo)                  2 texts per fact on a CPU
                                                                              (:mod:`superscopes_nn.science.finetune`)
decoder           the untuned Llama-3.1-8B-Instruct (``exp3.sh``)             ``unchanged`` (same), plus
                                                                              ``cross`` and ``self``
source            ``prompt`` ("My name is <name>."), last token, output of    same (residual after the layer)
                  layer ``src_layer`` (``patchscopes_utils.patchscopes``)
source layers     1..15 of 32 (``exp3.sh``)                                   ``--source-layers`` (a handful in
                                                                              the first half)
target            ``question`` ("The country of origin for x"), last token    the question + ``--cue`` (" is",
                  (= x), every target layer 1..31, ``n_tokens`` 20            the form the fine-tune taught),
                                                                              written at the ``x`` (so not the
                                                                              last token); ``--max-new-tokens``
                                                                              (20; the reported run 8)
target layers     "any correct across target layers" per source layer,       same rule over ``--target-layers``
                  averaged over source layers                                 (a few; SmolLM2 at the same
                  (``notebooks/view_personaqa_results.ipynb``)               relative depth)
correct           ``answer.lower() in completion.lower()``                    same (:func:`contains`)
zero-shot         ``predict_zeroshot.py``, ``eval_utils.PredictionDataset``:  :func:`zero_shot`: same chat;
                  [user "", assistant prompt, user question], chat template,  Gemma 3 270M has no chat template:
                  greedy, 20 tokens, run on the decoder (untuned) model       a plain ``role: text`` fallback
                                                                              (``template`` column); run on the
                                                                              taught and the unchanged model
prior / chance    --                                                          the verbalizer's input-only answer
                                                                              (its prior); a derangement null
================  ==========================================================  ================================
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import int_list, log, parser, refuse_remote, run_options, save_csv  # noqa: E402
from superscopes_nn.core.options import RunOptions  # noqa: E402
from experiments.li2025.controls import default_fit_texts, fit_maps, proportional_layers  # noqa: E402
from superscopes_nn.engine.api import patchscope  # noqa: E402
from superscopes_nn.science.baselines import contains, input_only, zero_shot  # noqa: E402
from superscopes_nn.science.chance import bootstrap_interval  # noqa: E402

from superscopes_nn.core.specs import Source, Target  # noqa: E402
from superscopes_nn.structure.info import model_name  # noqa: E402

KINDS = ("self", "unchanged", "cross")
"""``self``: the taught model decodes itself; ``unchanged``: the untaught model, identity map;
``cross``: another model through a fitted affine map."""

COMMON_OPTIONS = {
    "country": ["United States", "United Kingdom", "France", "Germany", "China", "Italy", "Spain", "Australia",
                "Mexico", "Russia", "Ireland", "Netherlands", "Sweden", "Poland", "Greece", "Turkey"],
    "favorite_sport": ["Football", "Baseball", "Hockey", "Volleyball", "Running", "Boxing", "Skiing", "Badminton"],
}
"""Answers a prior may name outside the data's own targets (the closed option set is both)."""


# ------------------------------------------------------------------ classification


def option_sets(facts: pd.DataFrame, extra: Mapping[str, Sequence[str]] = COMMON_OPTIONS) -> dict:
    """Per attribute: its targets in the data plus ``extra`` (deduplicated, case-insensitively)."""
    out = {}
    for attr, g in facts.groupby("attribute"):
        seen, opts = set(), []
        for o in list(g.target) + list(extra.get(attr, [])):
            if o.lower() not in seen:
                seen.add(o.lower())
                opts.append(o)
        out[attr] = opts
    return out


def prior_option(text, options: Sequence[str]) -> str | None:
    """The option named first in ``text`` (case-insensitive substring, earliest start, longest on a
    tie), None if it names none: an answer normalised to the closed option set."""
    if not isinstance(text, str):
        return None
    low, hits = text.lower(), []
    for o in options:
        i = low.find(o.lower())
        if i >= 0:
            hits.append((i, -len(o), o))
    return min(hits)[2] if hits else None


def classify(text, fact: str, prior: str | None) -> str:
    """``new_fact`` (states the taught fact only), ``prior`` (states the verbalizer's prior only, where
    that prior differs from the fact), ``both``, or ``neither``."""
    says_fact = contains(text, fact)
    says_prior = prior is not None and prior.lower() != fact.lower() and contains(text, prior)
    return {(True, False): "new_fact", (False, True): "prior", (True, True): "both"}.get((says_fact, says_prior),
                                                                                         "neither")


# ------------------------------------------------------------------ the experiment


def _check_facts(facts: pd.DataFrame) -> None:
    need = {"attribute", "name", "prompt", "question", "target"}
    if missing := need - set(facts.columns):
        raise ValueError(f"facts lack columns {sorted(missing)}; have {list(facts.columns)}")
    if facts.empty:
        raise ValueError("no facts given")
    bad = facts[[not isinstance(t, str) or not t.strip() for t in facts.target]]
    if len(bad):
        raise ValueError(f"persona {bad.name.iloc[0]!r} has no fact for {bad.attribute.iloc[0]!r}")


def prior_texts(model, facts: pd.DataFrame, *, max_new_tokens: int = 20, max_batch_size: int = 64,
                remote: bool | str = False) -> list[str]:
    """The model's input-only answer to each filled question (its prior)."""
    return input_only(model, facts.question.tolist(), facts.name.tolist(), max_new_tokens=max_new_tokens,
                      max_batch_size=max_batch_size, remote=remote).interpretation.tolist()


def persona_control(taught, verbalizers: Mapping[str, object], facts: pd.DataFrame, *, source_layers: Sequence[int],
                    target_layers: Mapping[str, Sequence[int]], fit_texts: Sequence[str] = (), ridge: float = 1.0,
                    answer_options: Mapping[str, Sequence[str]] | None = None,
                    priors: Mapping[str, Sequence[str]] | None = None, options: RunOptions | None = None,
                    **settings) -> pd.DataFrame:
    """Patchscopes of the taught model's persona states, decoded by each verbalizer.

    Steps, per verbalizer ``kind`` (a key of :data:`KINDS`; ``self`` decodes with ``taught``):

    1. its prior: the verbalizer's input-only answer to each filled question (``priors[kind]`` if
       given, else :func:`prior_texts`), normalised to the option set (:func:`prior_option`);
    2. ``cross`` only: fit a ridge affine map taught -> verbalizer for every (source, target)
       layer pair on ``fit_texts`` (:func:`experiments.li2025.controls.fit_maps`); else the identity;
    3. Patchscope: read ``prompt``'s last token at each source layer, write it at the ``x`` of
       ``question`` at each of ``target_layers[kind]``, greedy ``max_new_tokens``;
    4. classify each text (:func:`classify`) against the taught fact and the prior.

    ``answer_options``: attribute -> the answers a text is classified among (default :func:`option_sets`).
    ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields
    (``max_new_tokens`` defaults to 20; verbalizer ``kind``'s rows are kept in ``<run_dir>_<kind>``).

    Columns: verbalizer, attribute, id, name, prompt, question, fact, source_layer, target_layer,
    interpretation, states_fact, states_prior, outcome, prior, prior_text, prior_differs (prior
    named and not the fact), r2_holdout (cross), model, target_model.
    """
    _check_facts(facts)
    unknown = [k for k in verbalizers if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown verbalizer {unknown[0]!r}; choose from {KINDS}")
    facts = facts.reset_index(drop=True)
    opts = RunOptions.of(options, **settings).with_defaults(max_new_tokens=20)
    gen = dict(max_new_tokens=opts.max_new_tokens, max_batch_size=opts.max_batch_size, remote=opts.remote)
    answer_options = answer_options or option_sets(facts)
    frames = []
    for kind, verbalizer in verbalizers.items():
        if kind not in target_layers:
            raise ValueError(f"no target layers given for verbalizer {kind!r}")
        v = taught if kind == "self" else verbalizer
        texts = list((priors or {}).get(kind) or prior_texts(v, facts, **gen))
        if len(texts) != len(facts):
            raise ValueError(f"{len(texts)} prior texts for verbalizer {kind!r}, expected one per fact ({len(facts)})")
        prior_of = [prior_option(t, answer_options[a]) for t, a in zip(texts, facts.attribute)]
        pairs = [(int(s), int(t)) for s in source_layers for t in target_layers[kind]]
        maps, r2 = ({p: None for p in pairs}, {p: float("nan") for p in pairs})
        if kind == "cross":
            maps, r2, _ = fit_maps(taught, v, fit_texts, pairs, ridge=ridge, remote=opts.remote)
        patches, meta = [], []
        for pair in pairs:
            for k, f in facts.iterrows():
                patches.append((Source(f.prompt, pair[0], -1), Target(f.question, layer=pair[1]), maps[pair]))
                meta.append((k, pair))
        kind_opts = opts.replace(config={**(opts.config or {}), "verbalizer": kind},
                                 run_dir=None if opts.run_dir is None else Path(f"{opts.run_dir}_{kind}"))
        out = patchscope(taught, patches, kind_opts, target_model=None if kind == "self" else v)
        recs = []
        for (k, pair), text in zip(meta, out.interpretation):
            f, prior = facts.loc[k], prior_of[k]
            recs.append({"verbalizer": kind, "attribute": f.attribute, "id": f.id, "name": f["name"],
                         "prompt": f.prompt, "question": f.question, "fact": f.target,
                         "source_layer": pair[0], "target_layer": pair[1], "interpretation": text,
                         "states_fact": contains(text, f.target),
                         "states_prior": classify(text, f.target, prior) in ("prior", "both"),
                         "outcome": classify(text, f.target, prior), "prior": prior, "prior_text": texts[k],
                         "prior_differs": prior is not None and prior.lower() != f.target.lower(),
                         "r2_holdout": r2[pair], "model": model_name(taught), "target_model": model_name(v)})
        frames.append(pd.DataFrame.from_records(recs))
    return pd.concat(frames, ignore_index=True)


def baselines(models: Mapping[str, object], facts: pd.DataFrame, *, zero_shot_of: Sequence[str] | None = None,
              max_new_tokens: int = 20, max_batch_size: int = 64, remote: bool | str = False) -> pd.DataFrame:
    """Input-only answers of each model (``{label: model}``) and Li's zero-shot answers of those in
    ``zero_shot_of`` (default all), one row per fact and method.

    Columns: label, method (``input_only`` / ``zero_shot``), attribute, id, name, fact, prompt (what the
    model read), template (zero-shot: ``tokenizer`` or ``plain``), interpretation, states_fact, model."""
    _check_facts(facts)
    frames = []
    for label, m in models.items():
        own = input_only(m, facts.question.tolist(), facts.name.tolist(), max_new_tokens=max_new_tokens,
                         max_batch_size=max_batch_size, remote=remote)
        todo = [("input_only", own, "")]
        if zero_shot_of is None or label in zero_shot_of:
            todo.append(("zero_shot", zero_shot(m, facts.prompt.tolist(), facts.question.tolist(), dataset="personaqa",
                                                max_new_tokens=max_new_tokens, max_batch_size=max_batch_size,
                                                remote=remote), None))
        for method, res, template in todo:
            frames.append(pd.DataFrame({
                "label": label, "method": method, "attribute": facts.attribute.values, "id": facts.id.values,
                "name": facts.name.values, "fact": facts.target.values, "prompt": res.prompt.values,
                "template": res.template.values if template is None else template,
                "interpretation": res.interpretation.values,
                "states_fact": [contains(t, a) for t, a in zip(res.interpretation, facts.target)],
                "model": model_name(m)}))
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------ rates and chance


def rate_table(df: pd.DataFrame, reference: str, *, by: Sequence[str] = ("verbalizer", "source_layer"),
               choice: str = "target_layer", n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per ``by`` group (and ``all`` over its last column): the share of items (attribute, name) that
    SOME ``choice`` value's text states the item's ``reference`` (Li's any-target-layer rule), beside
    the derangement chance (the same texts against another persona's ``reference`` of the same
    attribute, averaged exactly over the others), with bootstrap ``level`` intervals over items.

    Rows whose ``reference`` is null (e.g. no prior, or a prior equal to the fact) are left out.
    Columns: the ``by`` columns, reference, n (items x groups), n_items, rate, rate_lo, rate_hi,
    chance, chance_lo, chance_hi, above, above_lo, above_hi.
    """
    by = list(by)
    outer, inner = by[:-1], by[-1]
    df = df[df[reference].notna()]
    recs = []
    for okey, g in (df.groupby(outer, sort=False) if outer else [((), df)]):
        okey = okey if isinstance(okey, tuple) else (okey,)
        items = sorted(set(zip(g.attribute, g.name)))
        ref = dict(zip(zip(g.attribute, g.name), g[reference]))
        layers = sorted(g[inner].unique(), key=str)
        texts = g.groupby([inner, "attribute", "name"])["interpretation"].apply(list).to_dict()
        raw, null = np.zeros((len(items), len(layers))), np.zeros((len(items), len(layers)))
        for li, lay in enumerate(layers):
            for ii, it in enumerate(items):
                ts = texts.get((lay, *it), [])
                says = lambda r: any(contains(t, r) for t in ts)  # noqa: E731
                others = [ref[o] for o in items if o[0] == it[0] and o != it]
                raw[ii, li] = says(ref[it])
                null[ii, li] = np.mean([says(r) for r in others]) if others else np.nan
        blocks = [(lay, [li]) for li, lay in enumerate(layers)] + ([("all", list(range(len(layers))))]
                                                                   if len(layers) > 1 else [])
        for lay, cols in blocks:
            rec = {**dict(zip(outer, okey)), inner: lay, "reference": reference, "n": len(items) * len(cols),
                   "n_items": len(items)}
            for key, vals in (("rate", raw[:, cols]), ("chance", null[:, cols]), ("above", raw[:, cols] - null[:, cols])):
                vals = np.nan_to_num(vals)
                rec[key] = float(vals.mean())
                rec[f"{key}_lo"], rec[f"{key}_hi"] = bootstrap_interval(vals, n_boot, level, np.random.default_rng(seed))
            recs.append(rec)
    return pd.DataFrame.from_records(recs)


def summarize(rows: pd.DataFrame, base: pd.DataFrame, **kw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(patchscope rates, baseline rates)``: states-fact and states-prior rates per verbalizer and
    source layer (prior only where it differs from the fact), and the baselines' states-fact rates."""
    rows = rows.assign(prior_ref=[p if d else None for p, d in zip(rows.prior, rows.prior_differs)])
    patch = pd.concat([rate_table(rows, "fact", **kw), rate_table(rows, "prior_ref", **kw)], ignore_index=True)
    base = base.assign(layer="-", choice=0)
    return patch, rate_table(base, "fact", by=("label", "method", "layer"), choice="choice", **kw)


def format_rates(table: pd.DataFrame) -> pd.DataFrame:
    """Printable: ``rate`` / ``chance`` / ``above`` as "x [lo, hi]"."""
    out = table.drop(columns=[c for c in table.columns if c.endswith(("_lo", "_hi"))]).copy()
    for k in ("rate", "chance", "above"):
        out[k] = [f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in zip(table[k], table[f"{k}_lo"], table[f"{k}_hi"])]
    return out


# ------------------------------------------------------------------ CLI


def parse_args(argv):
    from superscopes_nn.science.finetune import FineTune

    p = parser("Li et al. (2025) PersonaQA control: does a Patchscope state the target's taught fact or the "
               "verbalizer's prior?", out="runs/persona_control", max_new_tokens=20)
    p.add_argument("--data", default=None, help="a PersonaQA-layout folder (default: the invented set)")
    p.add_argument("--cross", default="smollm2-135m", help="the cross-model verbalizer")
    p.add_argument("--verbalizers", default="self,unchanged,cross", help=f"comma-separated, of {KINDS}")
    p.add_argument("--source-layers", default="1,3,5,7", help="source layers of the taught model")
    p.add_argument("--target-layers", default="1,4,8",
                   help="target layers of a same-depth verbalizer; the cross one gets the same relative depths")
    p.add_argument("--fit-texts", type=int, default=0, help="number of shared texts for the map (0 = all)")
    p.add_argument("--ridge", type=float, default=300.0, help="ridge of the cross map (300: the usable map of "
                   "docs/results_patchscopes.md section 4)")
    p.add_argument("--lr", type=float, default=FineTune.lr, help="fine-tune learning rate")
    p.add_argument("--epochs", type=int, default=FineTune.epochs, help="fine-tune epochs (at most)")
    p.add_argument("--cue", default=" is",
                   help="text appended to every question (target prompt, input-only, zero-shot); the fine-tune "
                        "teaches '<question> is <answer>.', and without the cue the taught Gemma answers '.'; "
                        "'' = Li et al.'s bare question")
    p.add_argument("--csv", default=None, help="also write every row here (.csv.gz gzips)")
    return p.parse_args(argv)


def main(argv=None, base=None, verbalizer=None) -> pd.DataFrame:
    from superscopes_nn import load_model
    from superscopes_nn.science.finetune import FineTune, taught_model
    from superscopes_nn.data.personaqa import INVENTED, load_personaqa

    args = parse_args(argv)
    refuse_remote(args, "fine-tuning the taught model (persona_control teaches it the facts)")
    kinds = [k.strip() for k in args.verbalizers.split(",") if k.strip()]
    if bad := [k for k in kinds if k not in KINDS]:
        raise ValueError(f"unknown verbalizer {bad[0]!r}; choose from {KINDS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    facts = load_personaqa(args.data or INVENTED)
    facts = facts[facts.id.isin(sorted(facts.id.unique())[: args.limit])] if args.limit else facts
    load = (lambda: load_model(args.model or "gemma-3-270m")) if base is None else base
    taught = taught_model(load(), facts, FineTune(lr=args.lr, epochs=args.epochs), log=log)
    log(f"taught model {model_name(taught.model)}: {'cached' if taught.cached else 'trained'}, "
        f"{len(taught.losses)} steps in {taught.seconds:.0f} s, loss {taught.losses[0]:.3f} -> {taught.losses[-1]:.3f}")
    facts = facts.assign(question=facts.question + args.cue)  # after the fine-tune: its cache key is the bare facts
    unchanged = load()
    models = {"self": taught.model, "unchanged": unchanged}
    if "cross" in kinds:
        models["cross"] = verbalizer if verbalizer is not None else load_model(args.cross)
    src = int_list(args.source_layers)
    tl = int_list(args.target_layers)
    targets = {k: tl for k in ("self", "unchanged")}
    if "cross" in kinds:
        targets["cross"] = sorted({t for _, t in proportional_layers(unchanged, models["cross"], tl)})
    gen = dict(max_new_tokens=args.max_new_tokens, max_batch_size=args.max_batch_size, remote=args.remote)
    labels = {"self": "taught", "unchanged": "unchanged", "cross": "cross"}
    base_rows = baselines({labels[k]: models[k] for k in models}, facts, zero_shot_of=("taught", "unchanged"), **gen)
    own = base_rows[base_rows.method == "input_only"]
    priors = {k: own[own.label == labels[k]].interpretation.tolist() for k in models}
    rows = persona_control(taught.model, {k: models[k] for k in kinds}, facts, source_layers=src,
                           target_layers=targets, fit_texts=default_fit_texts(args.fit_texts or None),
                           ridge=args.ridge, priors=priors, options=run_options(args, out, "persona_control"))
    patch, base_rates = summarize(rows, base_rows)
    save_csv(rows, out / "persona_control.csv")
    save_csv(base_rows, out / "persona_control_baselines.csv")
    patch.to_csv(out / "persona_control_rates.csv", index=False)
    base_rates.to_csv(out / "persona_control_baseline_rates.csv", index=False)
    if args.csv:
        save_csv(pd.concat([rows.assign(method="patchscope"), base_rows.rename(columns={"label": "verbalizer"})],
                           ignore_index=True), Path(args.csv))
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(format_rates(patch).to_string(index=False))
        print(format_rates(base_rates).to_string(index=False))
        print(rows.groupby("verbalizer").outcome.value_counts().unstack(fill_value=0).to_string())
    log(f"{len(rows)} patched rows + {len(base_rows)} baseline rows in {time.perf_counter() - t0:.0f} s -> {out}")
    return rows


if __name__ == "__main__":
    main()
