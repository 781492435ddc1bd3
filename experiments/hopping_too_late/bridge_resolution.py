"""Where does the bridge entity become decodable inside a two-hop prompt?

In "The spouse of the performer of Imagine is" the first hop (Imagine -> John
Lennon) should be resolved at the last token of ``e1`` ("Imagine"). We read that
token's residual stream at every layer ``l`` of the two-hop prompt, patch it
into the entity-description Patchscope (``ENTITY_PROMPT``, placeholder ``x``) at
the same layer, and check whether the description names the bridge entity
(alias match; optional embedding cosine to the bridge's name). The share of
queries decodable per layer shows when the bridge appears (Biran et al. 2024,
Sec. 4; Patchscopes Sec. 4.4)::

    from superscopes_nn import load_model
    from experiments.hopping_too_late.bridge_resolution import bridge_resolution, summarize
    df = bridge_resolution(load_model(), limit=20)
    summarize(df)     # source_layer, decodable (share), cosine, n

Run::

    .venv/bin/python experiments/hopping_too_late/bridge_resolution.py --limit 20 --out runs/bridge_resolution

"Decodable at some layer" is a best-of-layers score: :func:`bridge_chance` sets the shuffled-bridge
chance level beside it and, with ``control="random"`` (``--control random``; our addition), the same
rule on every row rerun with ``e1``'s state replaced by a norm-matched random direction
(:func:`superscopes_nn.science.random_control.random_rows`), kept in ``df.attrs["random"]`` and written to
``bridge_resolution_random.csv``. The nearest official code is edenbiran/HoppingTooLate
``src/generate_entity_description.py`` (``generate_entity_description_with_patching``, source ``e1``);
this experiment is **not** that protocol, and its defaults are the earlier design:

==============  ==========================================================  ==================================
step            official code (HoppingTooLate)                              here
==============  ==========================================================  ==================================
source          hidden state at the last token of                           the last token of ``e1`` in the
                ``r1_template.format(e1)`` in the two-hop prompt            two-hop prompt (the same token)
target          "Syria: Syria is a country in the Middle East, ... x"       ``ENTITY_PROMPT`` (the Patchscopes
                                                                            few-shot prompt)
layers          every (source, target) pair                                 source layer = target layer
decoding        sampled (``--do-sample`` default on, seed 0), 10 tokens     greedy, 20 tokens
scoring         none in the script                                          alias match (+ MiniLM cosine)
==============  ==========================================================  ==================================
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Iterable

import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.common import save_csv  # noqa: E402
from experiments.common import add_control, check_control, parser, random_arm, run_options, setup  # noqa: E402
from experiments.common import rows_dir  # noqa: E402
from superscopes_nn.core.options import RunOptions  # noqa: E402

from superscopes_nn.engine.rows import find_token, resolve  # noqa: E402
from superscopes_nn.engine.run import run_rows  # noqa: E402
from superscopes_nn.core.specs import ENTITY_PROMPT, Source, Target  # noqa: E402
from superscopes_nn.core.validate import check_layer  # noqa: E402

from experiments.common import alias_match, bridge_aliases, load_queries  # noqa: E402
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

log = logging.getLogger(__name__)

BRIDGE_COLUMNS = ["id", "source_layer", "e1_token", "source_position", "source_token", "bridge", "interpretation",
                  "decodable", "cosine", "error"]
RANDOM_COLUMNS = BRIDGE_COLUMNS + ["mapping", "mapping_key"]
"""The random arm's rows: :data:`BRIDGE_COLUMNS` plus the mapping's name and key, row for row."""


def e1_position(tokenizer, q) -> tuple[str | None, str]:
    """The token string locating ``e1`` in the two-hop prompt: ``e1``'s last word when it occurs
    exactly once in the prompt. Returns ``(word, "")`` or ``(None, reason)``."""
    words = str(q["e1"]).split()
    if not words:
        return None, f"empty e1 {q['e1']!r}"
    word = words[-1]
    try:
        find_token(tokenizer, q["two_hop_prompt"], word)
    except ValueError as err:
        return None, str(err)
    return word, ""


def bridge_resolution(model, queries=None, *, limit: int | None = None, stratify: bool = False,
                      layers: Iterable[int] | None = None,
                      target_prompt: str = ENTITY_PROMPT, cosine: bool = False,
                      control: str = "none", control_seed: int = 0, random_run_dir=None,
                      options: RunOptions | None = None, **settings) -> pd.DataFrame:
    """Decode the bridge entity from ``e1``'s last token of the two-hop prompt, layer by layer.

    Steps:

    1. per query, locate ``e1``'s last word in ``two_hop_prompt`` (:func:`e1_position`);
       queries where it is absent or not unique are skipped, with the reason logged
       (``df.attrs["skipped"]``: id -> reason);
    2. source = that token (last sub-token), residual at layer ``l``; target =
       ``target_prompt`` at ``x``, same layer ``l``; greedy ``max_new_tokens`` tokens,
       all rows batched;
    3. ``decodable`` = the description contains the bridge or an alias (length > 1,
       case-insensitive); if ``cosine``: MiniLM cosine of the description to the bridge's name;
    4. ``control="random"``: the same resolved rows with ``e1``'s state replaced by a norm-matched
       random direction (seed ``control_seed``, own run store ``random_run_dir``), scored as in 3;
       :data:`RANDOM_COLUMNS` in ``df.attrs["random"]``.

    ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields, as
    :func:`~superscopes_nn.engine.run.run_rows` takes them (``max_new_tokens`` defaults to 20).

    Columns: :data:`BRIDGE_COLUMNS` -- ``id``, ``source_layer``, ``e1_token`` (the word
    located), ``source_position``/``source_token`` (the resolved token), ``bridge``,
    ``interpretation``, ``decodable`` (bool), ``cosine`` (float, NaN when not computed),
    ``error``; one row per (query, layer).
    """
    check_control(control)
    opts = RunOptions.of(options, **settings).with_defaults(max_new_tokens=20)
    qs = load_queries(queries, limit, stratify)
    n = model_info(model).n_layers
    ls = list(range(n)) if layers is None else [check_layer(l, n, "source", model_name(model)) for l in layers]
    if not ls:
        raise ValueError("empty layer list")
    keep, words, skipped = [], [], {}
    for _, q in qs.iterrows():
        word, reason = e1_position(model.tokenizer, q)
        if word is None:
            log.warning("skipping query %s: %s", q["id"], reason)
            skipped[q["id"]] = reason
            continue
        keep.append(q)
        words.append(word)
    if not keep:
        raise ValueError(f"every query was skipped: {skipped}")
    patches = [(Source(q["two_hop_prompt"], l, w, "residual"), Target(target_prompt, layer=l), None)
               for q, w in zip(keep, words) for l in ls]
    rows = resolve(model, patches)
    rep = lambda xs: [x for x in xs for _ in ls]  # noqa: E731
    aliases = rep([bridge_aliases(q) for q in keep])

    def frame(res, columns):
        df = pd.DataFrame({
            "id": rep([q["id"] for q in keep]), "source_layer": res.source_layer.astype(int), "e1_token": rep(words),
            "source_position": res.source_position.astype(int), "source_token": res.source_token,
            "bridge": rep([q["bridge"] for q in keep]), "interpretation": res.interpretation, "error": res.error,
            "mapping": res.mapping, "mapping_key": res.mapping_key,
        })
        df["decodable"] = [alias_match(t, a) for t, a in zip(df.interpretation, aliases)]
        df["cosine"] = float("nan")
        if cosine:
            from superscopes_nn.science.scoring import embedding_cosine

            df["cosine"] = embedding_cosine([t or "" for t in df.interpretation], df.bridge.tolist())
        return df[columns]

    df = frame(run_rows(model, rows, opts), BRIDGE_COLUMNS)
    if control == "random":
        rnd = random_arm(model, rows, options=opts.replace(run_dir=random_run_dir), seed=control_seed)
        df.attrs["random"] = frame(rnd, RANDOM_COLUMNS)
    df.attrs["skipped"] = skipped
    df.attrs["model"] = model_name(model)
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer: ``decodable`` (share of queries), ``cosine`` (mean), ``n`` (queries).
    Plus ``first_layer``: per query the earliest decodable layer is in :func:`first_layers`."""
    return (df.groupby("source_layer")
              .agg(decodable=("decodable", "mean"), cosine=("cosine", "mean"), n=("id", "nunique"))
              .reset_index())


def bridge_chance(df: pd.DataFrame, queries=None, n_boot: int = 2000,
                  random_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """"Decodable" per layer and at some layer (a best-of-layers score) beside the shuffled-bridge
    chance level: each query's descriptions matched against another query's bridge aliases, exact
    over derangements (:func:`superscopes_nn.science.chance.layer_chance`), intervals over queries.
    ``random_df`` (default ``df.attrs["random"]``, if any): the random arm, matched against each
    query's own aliases by the same rule: adds ``random`` / ``above_random``."""
    from superscopes_nn.science.chance import alias_pairs, layer_chance

    qs = load_queries(queries)
    aliases = {q["id"]: bridge_aliases(q) for _, q in qs.iterrows() if q["id"] in set(df.id)}
    random_df = df.attrs.get("random") if random_df is None else random_df
    return layer_chance(df, alias_pairs(), threshold=0.5, reference=aliases, item="id", n_boot=n_boot,
                        random_df=random_df)


def first_layers(df: pd.DataFrame) -> pd.Series:
    """Per query id, the first layer where the bridge is decodable (NaN if never)."""
    hit = df[df.decodable]
    return hit.groupby("id").source_layer.min().reindex(df.id.unique())


def plot(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(summary.source_layer, summary.decodable, marker="o", label="bridge decodable (alias match)")
    if summary.cosine.notna().any():
        ax.plot(summary.source_layer, summary.cosine, marker="s", label="cosine to bridge name")
    ax.set_xlabel("layer (source = target)")
    ax.set_ylabel("share of queries")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv):
    p = parser("Layer at which the bridge entity of a two-hop prompt becomes decodable.", out="runs/entity_resolution_bridge", name="bridge_resolution", two_hop=True, limit_help="first N queries", max_new_tokens=20)
    p.add_argument("--cosine", action="store_true", help="also score MiniLM cosine to the bridge name")
    add_control(p)
    return p.parse_args(argv)


def main(argv=None, model=None) -> pd.DataFrame:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    model, out = setup(args, model)
    t0 = time.perf_counter()
    df = bridge_resolution(model, args.data, limit=args.limit, stratify=args.stratify, cosine=args.cosine,
                           control=args.control, control_seed=args.control_seed,
                           random_run_dir=rows_dir(out, "bridge_resolution_random", args),
                           options=run_options(args, out, "bridge_resolution", progress=True))
    summary = summarize(df)
    save_csv(df, out / "bridge_resolution.csv")
    if "random" in df.attrs:
        save_csv(df.attrs["random"], out / "bridge_resolution_random.csv")
    summary.to_csv(out / "bridge_resolution_summary.csv", index=False)
    if df.id.nunique() > 1:
        chance = bridge_chance(df, args.data)
        chance.to_csv(out / "bridge_resolution_chance.csv", index=False)
        b = chance[chance.scope == "best of layers"].iloc[0]
        rnd = (f"; random vector {b.random_count:.0f}/{b.n} [{b.random_lo:.2f}, {b.random_hi:.2f}], above it "
               f"{b.above_random:+.2f} [{b.above_random_lo:+.2f}, {b.above_random_hi:+.2f}]") if "random" in b else ""
        print(f"decodable at some layer {b.raw_count:.0f}/{b.n} [{b.raw_lo:.2f}, {b.raw_hi:.2f}]; shuffled-bridge "
              f"chance {b.null_count:.1f}/{b.n}; above {b.above:+.2f} [{b.above_lo:+.2f}, {b.above_hi:+.2f}]{rnd}")
    plot(summary, out / "bridge_resolution.png",
         f"Bridge entity decodable at e1's last token, {df.attrs['model']} ({df.id.nunique()} queries, "
         f"{len(df.attrs['skipped'])} skipped)")
    print(summary.round(3).to_string(index=False))
    print(f"skipped {len(df.attrs['skipped'])} queries; {len(df)} rows in {time.perf_counter() - t0:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
