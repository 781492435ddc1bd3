"""The logit lens: decode a layer's hidden state with the model's own final norm and unembedding.

It is the Patchscope (S, i, M, l) -> (T = S, i* = i, M* = M, l* = L - 1) that
replaces the last layer's output at position i by h_l and reads the next-token
distribution (``tests/test_lens.py`` checks the two agree).

>>> logit_lens(model, "The Eiffel Tower is in", layers=range(18), k=3)
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch

from ..structure.architectures import get_path
from ..structure.final_norm import softcap
from .plan import CustomRequest, vocab_size
from .run import run_custom_requests
from .rows import encode, resolve_position
from ..core.validate import check_layer
from ..structure.info import model_info, model_name


def lens_logits(model, prompt: str, layers: Iterable[int], position: int | str = -1, *,
                remote: bool | str = False, backend=None) -> torch.Tensor:
    """[len(layers), vocab] logit-lens logits at ``position`` (final norm + unembedding of h_l).

    Row ``j`` is ``layers[j]``, in the order given (negative layers count from the end,
    so ``[-1, 0]`` gives the last layer's row first).
    """
    config = model._module.config
    info = model_info(model)
    spec, n = info.spec, info.n_layers
    wanted = [check_layer(l, n, "source", model_name(model)) for l in layers]
    layers = sorted(set(wanted))
    ids = encode(model.tokenizer, prompt)
    pos = resolve_position(model.tokenizer, prompt, position, len(ids))
    cap = softcap(config)
    layers_path, norm_path, head_path = spec.layers, spec.final_norm, spec.lm_head  # plain strings cross the wire
    at = int(spec.slots_before) + pos  # the token's position in the layers' tensors (past a model's slots)
    scale, out_scale = float(spec.head_scale), float(spec.logit_scale)
    if out_scale != out_scale:  # NaN: the model's logits are no scalar multiple of its head's output
        raise ValueError(f"{model_name(model)}: its logits are not a scalar multiple of its LM head's output "
                         f"({spec.lm_head}); the logit lens cannot reproduce them")

    def one(backend):
        with model.trace(torch.tensor([ids]), use_cache=False, remote=remote, backend=backend):
            hidden = []
            for layer in layers:
                out = get_path(model, layers_path)[layer].output
                hidden.append((out[0] if isinstance(out, tuple) else out)[0, at])
            norm, head = get_path(model, norm_path), get_path(model, head_path)
            # under a device_map the layers live on several devices: gather on the last layer's
            # (the final norm's, in a pipeline layout), each state crossing at most once
            normed = norm(torch.stack([h.to(hidden[-1].device) for h in hidden]))
            logits = head(normed * scale if scale != 1.0 else normed)
            if out_scale != 1.0:
                logits = logits * out_scale
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logits = logits.detach().save()
        return logits

    returns = torch.empty(len(layers), vocab_size(model), dtype=model._module.dtype, device="meta")
    knob = f"pass fewer layers per call (now {len(layers)} layers x {returns.shape[1]} vocabulary entries)"
    logits = run_custom_requests(model, [CustomRequest(one, returns)], remote=remote, backend=backend, knob=knob)[0]
    return logits[[layers.index(l) for l in wanted]]


def logit_lens(model, prompt: str, layers: Iterable[int] | None = None, position: int | str = -1, k: int = 1, *,
               remote: bool | str = False, backend=None) -> pd.DataFrame:
    """Top-``k`` logit-lens tokens per layer: columns layer, rank, token, token_id, prob.

    ``layer`` is the absolute layer index (``-1`` is reported as ``L - 1``); rows come in
    increasing layer order, one block of ``k`` per distinct layer.
    """
    n = model_info(model).n_layers
    layers = list(range(n)) if layers is None else sorted({check_layer(l, n, "source", model_name(model))
                                                          for l in layers})
    logits = lens_logits(model, prompt, layers, position, remote=remote, backend=backend)
    probs = logits.float().softmax(-1)
    top = probs.topk(k, dim=-1)
    recs = []
    for li, layer in enumerate(layers):
        for rank in range(k):
            tid = int(top.indices[li, rank])
            recs.append({"prompt": prompt, "layer": layer, "rank": rank, "token": model.tokenizer.decode([tid]),
                         "token_id": tid, "prob": float(top.values[li, rank])})
    return pd.DataFrame.from_records(recs)
