"""Next-token prediction from hidden states: the token-identity Patchscope vs the logit lens.

Patchscopes (Ghandeharioun et al. 2024, Sec. 4.1) decode what a hidden state
predicts as the next token by patching it into a few-shot *identity* prompt
(``IDENTITY_PROMPT = "cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?"``) at the
``?`` and reading the target's next-token distribution there. The logit lens
instead applies the final norm and unembedding to the state directly.

Both are scored by precision@1 against the model's own next-token prediction
(the argmax of its final logits at the same position), on every position of the
plain sentences in ``superscopes_nn/data/next_token_sample.txt``::

    from superscopes_nn import load_model
    from experiments.patchscopes.token_identity import token_identity, summarize
    df = token_identity(load_model(), limit=5)
    summarize(df)          # method, layer, precision_at_1, n

At the last layer both methods are exact by construction (the logit lens of the
last layer *is* the model's output; patching the last layer's output at ``?``
gives the same logits), which the tests check. The Patchscope uses
one greedy token per patched row (:func:`~superscopes_nn.engine.run.run_rows`): it is the
first token a greedy generation would produce.

Run::

    .venv/bin/python experiments/patchscopes/token_identity.py --limit 10 --layer-stride 2 --out runs/token_identity

Protocol against the official code (PAIR-code/interpretability, ``patchscopes/code/next_token_prediction.ipynb``,
cells "Prompt-id mappings" and "Evaluate the ID prompt ...", ``evaluate_patch_next_token_prediction``):

==============  ==========================================================  ==================================
step            official code                                               here
==============  ==========================================================  ==================================
sentences       The Pile (deduplicated), < 250 words, shuffled (seed 42);   ``next_token_sample.txt`` (30 plain
                2000 validation texts                                       sentences; named deviation: no hub)
positions       one random position per text (``random.randint``)           every position (``--max-positions``
                                                                            keeps the first k)
target          ``"cat -> cat\n1135 -> 1135\nhello -> hello\n?"``,          same, at ``?``, same layer
                ``position_target = -1``, ``layer_target = layer_source``
score           precision@1 against the model's own next token              same (one greedy token)
lens            "identity" (the state patched into the last layer of the    the logit lens (final norm +
                same prompt)                                                unembedding: the same quantity)
mappings        affine mappings (least squares on 10000 texts)              not run (``superscopes_nn.science.mapping``)
==============  ==========================================================  ==================================
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from superscopes_nn.structure.architectures import get_path

from superscopes_nn.engine.rows import encode, resolve  # noqa: E402
from superscopes_nn.core.specs import IDENTITY_PROMPT, Source, Target  # noqa: E402
from superscopes_nn.core.validate import check_layer  # noqa: E402
from superscopes_nn.engine.plan import CustomRequest  # noqa: E402
from superscopes_nn.engine.run import run_custom_requests, run_rows  # noqa: E402
from experiments.common import save_csv  # noqa: E402
from experiments.common import check_args, load, parser, run_options  # noqa: E402
from superscopes_nn.core.options import RunOptions  # noqa: E402

from superscopes_nn.data.datasets import load_sample  # noqa: E402
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

METHODS = ("patchscope", "logit_lens")

def source_positions(model, sentence: str, max_positions: int | None = None) -> list[int]:
    """Positions of ``sentence`` to decode: every token except special tokens (e.g. BOS)."""
    ids = encode(model.tokenizer, sentence)
    special = set(model.tokenizer.all_special_ids)
    pos = [i for i, t in enumerate(ids) if t not in special]
    return pos[:max_positions] if max_positions else pos


def lens_predictions(model, prompt: str, layers: Sequence[int], *, remote: bool | str = False):
    """One forward pass: ``(lens [len(layers), seq], own [seq])`` argmax token ids.

    ``lens``: logit-lens top-1 at every position (final norm + unembedding of each
    layer's output, as :func:`superscopes_nn.engine.lens.lens_logits`); ``own``: the model's
    own next-token prediction. (Gemma's logit soft-capping is monotone, so argmax ignores it.)
    One request of the library's (:func:`~superscopes_nn.engine.run.run_custom_requests`: on NDIF the
    hub-id lookup, the plan line, retries and a data-only result); the session body sees plain data only
    (module paths as strings, layer indices as ints): no dataclass crosses the wire.
    """
    spec = model_info(model).spec
    layers_path, norm_path, head_path = spec.layers, spec.final_norm, spec.lm_head
    layers = [int(l) for l in layers]
    slots = int(spec.slots_before)
    ids = torch.tensor([encode(model.tokenizer, prompt)])
    seq = ids.shape[1]

    def one(backend):
        with model.trace(ids, use_cache=False, remote=remote, backend=backend):
            tops = []
            for layer in layers:
                out = get_path(model, layers_path)[layer].output
                h = (out[0] if isinstance(out, tuple) else out)[0, slots:slots + seq]
                tops.append(get_path(model, head_path)(get_path(model, norm_path)(h)).argmax(-1))
            lens = torch.stack(tops).save()
            own = model.output.logits[0].argmax(-1).save()
        return lens, own

    returns = (torch.empty(len(layers), seq, dtype=torch.long, device="meta"),
               torch.empty(seq, dtype=torch.long, device="meta"))
    knob = f"decode fewer layers (--layer-stride; now {len(layers)} layers x {seq} tokens)"
    return run_custom_requests(model, [CustomRequest(one, returns)], remote=remote, knob=knob)[0]


def token_identity(model, sentences: Sequence[str] | None = None, *, limit: int | None = None,
                   layers: Iterable[int] | None = None, max_positions: int | None = None,
                   target_prompt: str = IDENTITY_PROMPT, placeholder: str = "?",
                   options: RunOptions | None = None, **settings) -> pd.DataFrame:
    """Precision@1 data for the identity Patchscope and the logit lens, one row per
    (sentence, position, layer, method).

    Steps:

    1. for each sentence, one traced forward pass gives the model's own next-token
       prediction at every position and the logit-lens top-1 of every layer;
    2. for every (position, layer), patch the layer-``l`` residual at that position into
       ``target_prompt`` at ``placeholder``, same layer, and take the argmax of the
       next-token logits there (one greedy token through :func:`~superscopes_nn.engine.run.run_rows`,
       the argmax at the placeholder, which is the target prompt's last token);
    3. ``correct`` = the method's token equals the model's own prediction.

    ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields, as
    :func:`~superscopes_nn.engine.run.run_rows` takes them (``max_batch_size`` defaults to 32; one new
    token per row always; the run store keeps one record per patched row, ``token_ids = [top-1]``).

    Columns: model, sentence_id, sentence, position, source_token, layer, method,
    predicted_id, predicted_token, target_id, target_token, correct.
    """
    opts = RunOptions.of(options or RunOptions(max_batch_size=32), **settings).replace(max_new_tokens=1)
    remote = opts.remote
    sentences = load_sample(limit=limit) if sentences is None else list(sentences)[:limit]
    if not sentences:
        raise ValueError("no sentences given")
    n = model_info(model).n_layers
    name = model_name(model)
    layers = list(range(n)) if layers is None else sorted({check_layer(l, n, "source", name) for l in layers})
    if not layers:
        raise ValueError("empty layer list")
    tok = model.tokenizer
    base, patches = [], []
    for sid, sentence in enumerate(sentences):
        lens, own = lens_predictions(model, sentence, layers, remote=remote)
        ids = encode(tok, sentence)
        for p in source_positions(model, sentence, max_positions):
            for li, layer in enumerate(layers):
                common = {"model": name, "sentence_id": sid, "sentence": sentence, "position": p,
                          "source_token": tok.decode([ids[p]]), "layer": layer, "target_id": int(own[p])}
                base.append({**common, "method": "logit_lens", "predicted_id": int(lens[li, p])})
                patches.append((Source(sentence, layer, p), Target(target_prompt, layer=layer, placeholder=placeholder),
                                None))
                base.append({**common, "method": "patchscope", "predicted_id": None})
    rows = resolve(model, patches)
    res = run_rows(model, rows, opts)
    eos = tok.eos_token_id
    preds = [ids[0] if len(ids) else eos for ids in res.token_ids]  # an end-of-sequence top-1 is trimmed
    it = iter(preds)
    for rec in base:
        if rec["method"] == "patchscope":
            rec["predicted_id"] = int(next(it))
    df = pd.DataFrame.from_records(base)
    df["predicted_token"] = [tok.decode([i]) for i in df.predicted_id]
    df["target_token"] = [tok.decode([i]) for i in df.target_id]
    df["correct"] = df.predicted_id == df.target_id
    return df


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Precision@1 per (method, layer): columns method, layer, precision_at_1, n."""
    return (df.groupby(["method", "layer"]).correct.agg(precision_at_1="mean", n="size").reset_index())


def plot(summary: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, g in summary.groupby("method"):
        ax.plot(g.layer, g.precision_at_1, "o-", label=method.replace("_", " "))
    ax.set_xlabel("layer")
    ax.set_ylabel("precision@1 vs the model's own next token")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv):
    p = parser("Token identity Patchscope vs logit lens (next-token precision@1).", out="runs/token_identity",
               max_new_tokens=1, limit_help="number of sample sentences")
    p.add_argument("--layer-stride", type=int, default=1, help="decode every k-th layer (the last layer always)")
    p.add_argument("--max-positions", type=int, default=None, help="positions per sentence (default all)")
    return check_args(p, p.parse_args(argv))


def strided_layers(n: int, stride: int) -> list[int]:
    """Every ``stride``-th layer of ``n``, always including the last."""
    return sorted(set(range(0, n, stride)) | {n - 1})


def main(argv=None, model=None) -> pd.DataFrame:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = model if model is not None else load(args)  # meta weights under --remote to NDIF
    layers = strided_layers(model_info(model).n_layers, args.layer_stride)
    df = token_identity(model, limit=args.limit, layers=layers, max_positions=args.max_positions,
                        options=run_options(args, out, "token_identity", max_batch_size=32))
    summary = summarize(df)
    save_csv(df, out / "token_identity.csv")
    summary.to_csv(out / "token_identity_summary.csv", index=False)
    n_pos = df[["sentence_id", "position"]].drop_duplicates().shape[0]
    plot(summary, out / "token_identity.png", f"{model_name(model)}: next-token precision@1 ({n_pos} positions)")
    wide = summary.pivot(index="layer", columns="method", values="precision_at_1")
    print(wide.round(3).to_string())
    print(f"{n_pos} positions x {len(layers)} layers in {time.perf_counter() - t0:.0f}s -> {out}")
    return df


if __name__ == "__main__":
    main()
