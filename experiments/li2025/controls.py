"""Controls for verbalizer-based interpretability (Li et al. 2025).

Li et al. (2025, "Do natural language descriptions of model activations convey
privileged information?") ask whether a Patchscope answer tells us something
about the *source* model's hidden state, or only about the prompt text and the
*verbalizer* (the model that generates the description). Two controls:

1. **Input-only baseline** (:func:`input_only`): ask the same question from the
   prompt text alone, with no activations: write the subject's text in place of
   the placeholder (``"The official currency of x"`` -> ``"The official currency
   of Japan"``) and generate plainly. A Patchscope accuracy only means something
   beside this number. ``entity_resolution`` and ``attribute_extraction`` report
   it next to every Patchscopes accuracy.

2. **Verbalizer vs source** (:func:`verbalizer_vs_source`): decode model A's
   states (default Gemma 3 270M, d=640) with a different model B (SmolLM2-135M,
   d=576) through an affine map fitted on shared texts
   (:func:`superscopes_nn.science.mapping.fit_affines`). For attribute questions, compare
   the cross-model answer with each model's own input-only answer: where A and B
   disagree (one knows the object, the other not), does the cross-model answer
   side with B (the verbalizer's knowledge) or with A (the source)?

Run::

    .venv/bin/python experiments/li2025/controls.py --limit 10 --out runs/controls

Protocol against Li et al.'s code (millicentli/verb_faithfulness, ``src/predict_verbalizer.py``,
``src/predict_zeroshot.py``), as far as it is followed here:

==================  ========================================================  ===============================
step                their code                                                here
==================  ========================================================  ===============================
Patchscopes acc.    an item is correct if ANY target layer answers it, per    :func:`li_accuracy` (same rule);
                    source layer; averaged over source layers                 our sweep has one proportional
                                                                              target layer per source layer
                                                                              (named deviation), so "any" is
                                                                              over that one layer
zero-shot baseline  the source context as an assistant turn, then             followed in
                    "Complete the sentence: ...", 20 tokens                   :func:`superscopes_nn.science.baselines.zero_shot`
                    (``eval_utils.PredictionDataset``)                        (both dataset layouts), reported by
                                                                              ``experiments/li2025/persona_control.py``;
                                                                              this LRE control reports the
                                                                              input-only baseline (subject text
                                                                              at x, plain generation)
data                PersonaQA (personas the target was taught)                here LRE attribute samples: both
                                                                              models may know the fact, so
                                                                              ``follows`` has few items that
                                                                              tell verbalizer from target; the
                                                                              PersonaQA control is
                                                                              ``experiments/li2025/persona_control.py``
==================  ========================================================  ===============================
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import save_csv  # noqa: E402
from experiments.common import load, parser, run_options  # noqa: E402
from superscopes_nn.core.options import RunOptions  # noqa: E402
from superscopes_nn.core.validate import check_remote  # noqa: E402
from superscopes_nn.engine.plan import LIMITS  # noqa: E402

from superscopes_nn.engine.api import patchscope  # noqa: E402

from superscopes_nn.core.specs import Source, Target  # noqa: E402
from superscopes_nn.science.baselines import contains, input_only  # noqa: E402
from superscopes_nn.data.lre import lre_samples  # noqa: E402
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

DEFAULT_VERBALIZER = "smollm2-135m"


# ------------------------------------------------------------------ verbalizer vs source


def default_fit_texts(limit: int | None = None) -> list[str]:
    """Shared texts for fitting the cross-model map: ``"name: description"`` of every entity
    plus the next-token sample sentences."""
    from superscopes_nn.data.datasets import load_entities, load_sample

    texts = [f"{e['name']}: {e['description']}" for e in _records(load_entities())]
    texts += load_sample()
    return texts[:limit] if limit else texts


def _records(items) -> list[dict]:
    if hasattr(items, "to_pandas"):  # a datasets.Dataset
        items = items.to_pandas()
    if isinstance(items, pd.DataFrame):
        return items.to_dict("records")
    return [dict(e) if not isinstance(e, dict) else e for e in items]


def proportional_layers(source_model, target_model, source_layers: Iterable[int]) -> list[tuple[int, int]]:
    """Pair each source layer with the target layer at the same relative depth."""
    n_s, n_t = model_info(source_model).n_layers, model_info(target_model).n_layers
    return [(l % n_s, round((l % n_s) * (n_t - 1) / max(n_s - 1, 1))) for l in source_layers]


def fit_maps(source_model, verbalizer, fit_texts: Sequence[str], layer_pairs: Iterable[tuple[int, int]], *,
             ridge: float = 1.0, align: str = "span", holdout: float = 0.2, remote: bool | str = False):
    """``(maps, r2, n_pairs)``, each keyed by ``(source_layer, target_layer)``: a ridge affine map
    source -> verbalizer fitted on the first ``1 - holdout`` of ``fit_texts`` (token states paired by
    ``align``), its R^2 on the held-out rest (NaN with fewer than 2 held-out texts), and the number
    of fitted state pairs."""
    from superscopes_nn.science.mapping import fit_affine_arrays, paired_states, r2_score

    pairs = list(layer_pairs)
    fit_texts = list(fit_texts)
    n_hold = int(len(fit_texts) * holdout)
    train, test = fit_texts[: len(fit_texts) - n_hold], fit_texts[len(fit_texts) - n_hold:]
    data = paired_states(source_model, verbalizer, train, pairs, align=align, remote=remote)
    held = paired_states(source_model, verbalizer, test, pairs, align=align, remote=remote) if len(test) >= 2 else {}
    maps, r2, n_pairs = {}, {}, {}
    for pair, (X, Y) in data.items():
        maps[pair] = fit_affine_arrays(X, Y, ridge)
        r2[pair] = r2_score(maps[pair], *held[pair]) if pair in held else float("nan")
        n_pairs[pair] = len(X)
    return maps, r2, n_pairs


def check_map_fits_request(source_model, verbalizer, remote) -> None:
    """Refuse, before any state is read, a run on NDIF whose map cannot travel: each cross-model request
    carries its :class:`~superscopes_nn.core.specs.Affine` (a float32 ``[d_verbalizer, d_source]`` weight and
    a bias), and a request over ``LIMITS["request"]`` is refused at send time, after the fit's requests."""
    if not check_remote(remote).is_ndif:
        return
    d_s, d_v = model_info(source_model).hidden, model_info(verbalizer).hidden
    nbytes, cap = 4 * d_v * (d_s + 1), LIMITS["request"]
    if nbytes > cap.value:
        raise ValueError(f"the map {model_name(source_model)} -> {model_name(verbalizer)} is a {d_v} x {d_s} float32 "
                         f"weight ({nbytes / 2 ** 20:.0f} MiB) that every cross-model request carries, over the "
                         f"{cap.value // 2 ** 20} MiB cap on {cap.name} (engine.plan.LIMITS['request']): use a narrower verbalizer "
                         f"(d_verbalizer <= {cap.value // (4 * (d_s + 1))} for this source)")


def verbalizer_vs_source(source_model, verbalizer, samples: pd.DataFrame, *, layer_pairs: Iterable[tuple[int, int]],
                         fit_texts: Sequence[str], ridge: float = 1.0, align: str = "span",
                         holdout: float = 0.2, options: RunOptions | None = None, **settings) -> pd.DataFrame:
    """Cross-model attribute extraction, compared with each model's own input-only answer.

    Steps:

    1. for each ``(source_layer, target_layer)`` pair fit an affine map
       source -> verbalizer on ``fit_texts`` (the last ``holdout`` fraction of the
       texts is held out to report the map's R^2);
    2. Patchscope: read the subject's last token (source prompt = the subject
       itself) in ``source_model`` at ``source_layer``, map it, write it at the
       ``x`` of the task's target prompt in ``verbalizer`` at ``target_layer``, generate;
    3. input-only answers of both models (the subject's text in place of ``x``);
    4. correct = the object is a substring of the answer (case-insensitive);
       ``follows`` says whose knowledge the cross-model answer matches where the
       two models disagree: ``verbalizer`` (cross correct = verbalizer correct !=
       source correct), ``source`` (the reverse), ``agree`` (both models agree).

    ``samples``: columns ``task``, ``subject``, ``object``, ``target_prompt``. ``options`` / ``settings``:
    :class:`~superscopes_nn.core.options.RunOptions` and its fields (the run store holds the cross-model rows).
    Columns: task, subject, object, target_prompt, source_layer, target_layer, r2_holdout,
    n_fit_pairs, cross_answer, cross_correct, source_answer, source_correct,
    verbalizer_answer, verbalizer_correct, follows, model, target_model.
    """
    need = {"task", "subject", "object", "target_prompt"}
    if missing := need - set(samples.columns):
        raise ValueError(f"samples lack columns {sorted(missing)}; have {list(samples.columns)}")
    if samples.empty:
        raise ValueError("no samples given")
    opts = RunOptions.of(options, **settings).with_defaults()
    check_map_fits_request(source_model, verbalizer, opts.remote)
    maps, r2, n_pairs = fit_maps(source_model, verbalizer, fit_texts, layer_pairs, ridge=ridge, align=align,
                                 holdout=holdout, remote=opts.remote)
    gen = dict(max_new_tokens=opts.max_new_tokens, max_batch_size=opts.max_batch_size, remote=opts.remote)
    own_s = input_only(source_model, samples.target_prompt.tolist(), samples.subject.tolist(), **gen)
    own_v = input_only(verbalizer, samples.target_prompt.tolist(), samples.subject.tolist(), **gen)
    patches, meta = [], []
    for pair, f in maps.items():
        for k, s in enumerate(samples.itertuples(index=False)):
            patches.append((Source(s.subject, pair[0], -1), Target(s.target_prompt, layer=pair[1]), f))
            meta.append((k, pair))
    cross = patchscope(source_model, patches, opts, target_model=verbalizer)
    recs = []
    for (k, pair), answer in zip(meta, cross.interpretation):
        s = samples.iloc[k]
        src_ok, verb_ok = contains(own_s.interpretation[k], s.object), contains(own_v.interpretation[k], s.object)
        cross_ok = contains(answer, s.object)
        follows = "agree" if src_ok == verb_ok else ("verbalizer" if cross_ok == verb_ok else "source")
        recs.append({
            "task": s.task, "subject": s.subject, "object": s.object, "target_prompt": s.target_prompt,
            "source_layer": pair[0], "target_layer": pair[1], "r2_holdout": r2[pair], "n_fit_pairs": n_pairs[pair],
            "cross_answer": answer, "cross_correct": cross_ok,
            "source_answer": own_s.interpretation[k], "source_correct": src_ok,
            "verbalizer_answer": own_v.interpretation[k], "verbalizer_correct": verb_ok, "follows": follows,
            "model": model_name(source_model), "target_model": model_name(verbalizer),
        })
    return pd.DataFrame.from_records(recs)


def li_accuracy(df: pd.DataFrame, correct: str = "cross_correct") -> pd.DataFrame:
    """Li et al.'s Patchscopes accuracy: per source layer, the share of items (task, subject) that
    SOME target layer answers; and ``mean_over_source_layers`` in the last row."""
    per = (df.groupby(["source_layer", "task", "subject"])[correct].any()
             .groupby("source_layer").agg(accuracy="mean", n="size").reset_index())
    mean = pd.DataFrame([{"source_layer": "mean_over_source_layers", "accuracy": float(per.accuracy.mean()),
                          "n": int(per.n.max()) if len(per) else 0}])
    return pd.concat([per, mean], ignore_index=True)


def summarize_verbalizer(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer pair: R^2, cross-model accuracy, each model's input-only accuracy, and
    among samples where the two models disagree the share of cross answers siding with each."""
    def one(g):
        dis = g[g.follows != "agree"]
        return pd.Series({
            "r2_holdout": g.r2_holdout.iloc[0], "n": len(g), "cross_acc": g.cross_correct.mean(),
            "source_input_only_acc": g.source_correct.mean(), "verbalizer_input_only_acc": g.verbalizer_correct.mean(),
            "n_disagree": len(dis),
            "follows_verbalizer": (dis.follows == "verbalizer").mean() if len(dis) else float("nan"),
            "follows_source": (dis.follows == "source").mean() if len(dis) else float("nan"),
            "cross_correct_source_wrong": int((g.cross_correct & ~g.source_correct).sum()),
        })
    return df.groupby(["source_layer", "target_layer"]).apply(one, include_groups=False).reset_index()


def plot_verbalizer(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = summary.source_layer
    ax.plot(x, summary.cross_acc, "o-", label="cross-model Patchscope")
    ax.axhline(summary.source_input_only_acc.iloc[0], color="C1", ls="--", label="source model, input only")
    ax.axhline(summary.verbalizer_input_only_acc.iloc[0], color="C2", ls=":", label="verbalizer, input only")
    ax.plot(x, summary.follows_verbalizer, "s-", color="C3", alpha=0.7, label="follows verbalizer (of disagreements)")
    ax.set_xlabel("source layer (target layer at the same relative depth)")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv, description: str):
    p = parser(description, out="runs/controls", limit=10, limit_help="samples per LRE task")
    p.add_argument("--verbalizer", default=DEFAULT_VERBALIZER, help="the model that decodes the mapped states")
    p.add_argument("--tasks", default="country_capital_city,country_currency,food_from_country,"
                   "company_ceo,fruit_outside_color,substance_phase",
                   help="comma-separated LRE task names ('all' = every task)")
    p.add_argument("--source-layers", default="2,5,8,11", help="comma-separated source layers")
    p.add_argument("--fit-texts", type=int, default=0, help="number of shared texts for the map (0 = all)")
    p.add_argument("--ridge", type=float, default=1.0)
    p.add_argument("--lre-root", default=None, help="folder of the Patchscopes LRE TSVs")
    return p.parse_args(argv)


def main(argv=None, model=None, verbalizer=None) -> pd.DataFrame:
    args = parse_args(argv, "Li et al. (2025) control: verbalizer vs source knowledge in cross-model Patchscopes.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the source prompt is the subject alone (no context), so one sample per subject (the earlier design)
    samples = lre_samples(args.lre_root, tasks=args.tasks, limit=args.limit, contexts="first")  # bad data fails before loading
    layers = [int(x) for x in args.source_layers.split(",") if x.strip()]
    model = model if model is not None else load(args)  # meta weights under --remote to NDIF
    verbalizer = verbalizer if verbalizer is not None else load(args, args.verbalizer)
    pairs = proportional_layers(model, verbalizer, layers)
    df = verbalizer_vs_source(model, verbalizer, samples, layer_pairs=pairs,
                              fit_texts=default_fit_texts(args.fit_texts or None), ridge=args.ridge,
                              options=run_options(args, out, "controls"))
    summary = summarize_verbalizer(df)
    save_csv(df, out / "verbalizer_vs_source.csv")
    summary.to_csv(out / "verbalizer_vs_source_summary.csv", index=False)
    plot_verbalizer(summary, out / "verbalizer_vs_source.png",
                    f"{model_name(model)} states decoded by {model_name(verbalizer)} ({len(samples)} LRE samples)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.round(3).to_string(index=False))
    print(f"{len(df)} rows in {time.perf_counter() - t0:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
