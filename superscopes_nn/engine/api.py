"""The public patching API: thin wrappers over :func:`superscopes_nn.engine.run.run_rows` and the engine.

A Patchscope (Ghandeharioun et al. 2024) reads the representation at
(source prompt S, position i, model M, layer l), maps it with f, writes it into
(target prompt T, position i*, model M*, layer l*) on the prompt pass only, and
lets M* generate::

    from superscopes_nn import load_model, Source, Target, Amplify, patchscope, sweep

    model = load_model("gemma-3-270m")
    patchscope(model, [(Source("Alexander the Great", layer=4, position="Great"), Target(), Amplify(6))])
    sweep(model, "Alexander the Great", position="Great", sites="mlp_out", layers=range(9), alphas=[1, 6])

=================  ===========================================================
function           what it returns
=================  ===========================================================
``patchscope``     one row per ``(Source, Target, mapping)`` triple (DataFrame)
``sweep``          the grid prompts x sites x layers (x target layers) x alphas
``patched_logits`` [N, vocab] next-token logits at each row's target position
``generate_plain`` greedy continuations with no patch (baselines)
``collect``        whole sites on one prompt, ``{(layer, site): [seq, d]}``
=================  ===========================================================

All take ``remote=False | "local" | True | "https://host"`` (or an nnsight
``backend=``); remote sessions get NDIF retries and :class:`~superscopes_nn.remote.errors.NDIFError`.
``patchscope``, ``sweep`` and ``patched_logits`` take their run settings as one
:class:`~superscopes_nn.core.options.RunOptions` (``options=``) or as its fields by keyword.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd
import torch

from ..structure.architectures import SITE_ORDER
from .chunks import chunk_indices
from .rows import check_sites, encode, resolve, sweep_rows
from .plan import CustomRequest, greedy_kwargs
from .run import run_custom_requests, run_requests, run_rows, trim_new_tokens
from ..structure.sites import site_tensor, token_rows
from ..core.deprecation import renamed
from ..core.options import RunOptions
from ..core.specs import Row, Target
from ..core.validate import check_batch_size, check_layer, check_layers, check_max_new_tokens, check_strings
from ..structure.info import model_info, model_name, eos_ids, plain_spec


def patchscope(model, patches: Iterable, options: RunOptions | None = None, *, target_model=None,
               **settings) -> pd.DataFrame:
    """Run ``(Source, Target, mapping)`` triples; a tidy DataFrame, one row per patch.

    Columns: :data:`~superscopes_nn.core.specs.RESULT_COLUMNS` (``interpretation`` is the
    decoded new text, ``token_ids`` the new ids up to the first end-of-sequence token).
    ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields, as
    :func:`~superscopes_nn.engine.run.run_rows` takes them (``max_new_tokens``, ``max_batch_size``, ``exact``,
    ``sampling``, ``remote``, ``run_dir``, ``resume``, ``config``, ...).
    """
    return run_rows(model, resolve(model, patches, target_model), options, target_model=target_model, **settings)


def sweep(model, prompts, *, layers, sites=("residual",), alphas=(1.0,), position=-1, target: Target = Target(),
          target_layers=None, target_model=None, mapping=None, options: RunOptions | None = None,
          **settings) -> pd.DataFrame:
    """The grid prompts x sites x layers (x target layers) x alphas, batched; one row per cell.

    ``layers``/``alphas``/``sites`` take an int/float/str, a list, a range or a numpy array; ``position``:
    the source position (an int or a token string), one for every prompt or one per prompt (``token=`` is
    its deprecated spelling). ``options`` / ``settings``: as :func:`~superscopes_nn.engine.run.run_rows`
    takes them (a progress bar unless ``progress=False``).
    """
    position = renamed(settings, "token", "position", position, -1, "sweep")
    rows = sweep_rows(model, prompts, layers=layers, sites=sites, alphas=alphas, position=position, target=target,
                      target_layers=target_layers, target_model=target_model, mapping=mapping)
    opts = RunOptions.of(options, **settings)
    return run_rows(model, rows, opts.with_defaults(progress=True), target_model=target_model)


def patched_logits(model, rows: list[Row], options: RunOptions | None = None, *, target_model=None,
                   **settings) -> torch.Tensor:
    """Next-token logits at each row's target position after patching: [N, vocab], input order
    (``options`` / ``settings``: the batching and where it runs, as :func:`~superscopes_nn.engine.run.run_rows`)."""
    rows = list(rows)
    out: list = [None] * len(rows)
    for idx, _, logits in run_requests(model, rows, RunOptions.of(options, **settings), target_model=target_model,
                                       logits=True):
        for b, i in enumerate(idx):
            out[i] = logits[b]
    return torch.stack(out)


def generate_plain(model, prompts: Sequence[str], max_new_tokens: int = 10, max_batch_size: int = 64,
                   remote=False, backend=None, add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations of ``prompts`` with no patch (baselines: input-only, composed question).

    One ``generate`` per group of equal token length (no padding); decoded new text per prompt, input order.
    ``add_special_tokens=False`` for prompts that carry their own (a rendered chat template).
    """
    check_batch_size(max_batch_size)
    gen, eos = greedy_kwargs(model, max_new_tokens), eos_ids(model)
    ids = [encode(model.tokenizer, p, add_special_tokens) for p in check_strings(list(prompts), "prompt")]
    check_max_new_tokens(max_new_tokens, max(len(t) for t in ids), model_info(model).context, model_name(model))
    groups = list(chunk_indices([len(t) for t in ids], int(max_batch_size)))
    requests = []
    for chunk in groups:
        batch = torch.tensor([ids[i] for i in chunk])

        def one(backend, batch=batch):
            with model.generate(batch, remote=remote, backend=backend, **gen) as tracer:
                result = tracer.result.save()
            return result

        requests.append(CustomRequest(one, torch.empty(batch.shape[0], batch.shape[1] + gen["max_new_tokens"],
                                                 dtype=torch.long, device="meta"), rows=len(chunk)))
    knob = f"lower max_batch_size or max_new_tokens (now max_batch_size={max_batch_size}, " \
           f"max_new_tokens={max_new_tokens})"
    out: list = [None] * len(ids)
    for chunk, result in zip(groups, run_custom_requests(model, requests, remote=remote, backend=backend, knob=knob,
                                                  max_batch_size=max_batch_size)):
        for b, i in enumerate(chunk):
            new = trim_new_tokens(result[b, len(ids[i]):].tolist(), eos)
            out[i] = model.tokenizer.decode(new, skip_special_tokens=True)
    return out


def collect(model, prompt: str, layers: Iterable[int], sites: Sequence[str] = ("residual",), *,
            remote=False, backend=None) -> dict:
    """Read whole sites on one prompt: ``{(layer, site): [seq, d] tensor}`` (no patching), one row per prompt
    token (a model's own slots beside the tokens, :mod:`~superscopes_nn.structure.positions`, are not returned)."""
    spec = plain_spec(model)
    n, name = model_info(model).n_layers, model_name(model)
    ids = torch.tensor([encode(model.tokenizer, prompt)])
    reads = sorted({(check_layer(l, n, "source", name), s) for l in check_layers(layers) for s in check_sites(sites)},
                   key=lambda k: (k[0], SITE_ORDER[k[1]]))
    for layer, site in reads:  # a site the layer has no module for: its reason, as patchscope gives it
        model_info(model).spec.site_module(site, layer)

    def one(backend):  # no cache: nothing generates here
        with model.trace(ids, use_cache=False, remote=remote, backend=backend):
            values = {}
            for layer, site in reads:
                t = site_tensor(model, spec, layer, site, (0, 1, ids.shape[1]))[0]
                values[(layer, site)] = token_rows(spec, t, ids.shape[1]).detach().clone()  # the tokens' rows
            values.save()
        return values

    shape = (ids.shape[1], model_info(model).hidden)
    returns = {k: torch.empty(shape, dtype=model._module.dtype, device="meta") for k in reads}
    knob = f"read fewer layers or sites per call, or a shorter prompt (now {len(reads)} reads x {shape[0]} tokens)"
    return run_custom_requests(model, [CustomRequest(one, returns)], remote=remote, backend=backend, knob=knob)[0]
