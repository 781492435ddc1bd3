"""Find where the sites of a decoder live by watching one forward pass, not by module names.

:func:`resolve_sites` hooks the model, runs one short prompt and reads the layout off
the data flow, so any decoder family transformers ships resolves the same way:

* the decoder-layer list is the top-level ``ModuleList`` whose layers run one after
  another (layer ``i``'s output is layer ``i + 1``'s input); a vision tower that does
  not run on text, or an expert list, is never taken for it;
* ``attn_out`` / ``mlp_out`` are the two sub-modules of a layer whose outputs sum to
  what the layer adds to its residual stream (``layer_out - layer_in``); where several
  modules output the same value (a dropout after the MLP), the one nearest the add;
* following a site module's input back through the sub-modules that produced it gives
  its branch: the heaviest module on it is the attention / the MLP, the ones before it
  pre-norms, the ones after it post-norms (Gemma's sandwich, OLMo 2's post-norms);
* the MLP branch reading the layer input itself (not input + attention) is a parallel
  layer (GPT-J, NeoX, Falcon, Cohere); a sparse MoE block is the MLP like any other.

A layer whose update is a *scaled* sum of two module outputs (Granite's
``residual_multiplier``) has no module holding ``attn_out`` / ``mlp_out``: those two
sites are marked missing with the reason, never served from a wrong module. So are a
block made of two modules (Falcon-H1's Mamba + attention, a MoE beside a shared MLP) and a
layer that adds one block only (Mamba, Nemotron-H). Each layer is resolved on its own: where
layers differ (hybrid models) a site's path is kept per layer, and a layer lacking a site has
its own reason (``ArchSpec.gaps``). Layers passing a stack of residual streams are refused.
A block returning a flattened ``[batch * seq, d]`` residual, attention fused with its norms into
one module, blocks shared between layers and layers re-normalizing their stream are handled by
:mod:`.odd_layers` (resolved, or refused with that reason).
The same pass decides whether a prefix cache can be reused (:mod:`.caches`).
:func:`verify_sites` re-checks a spec (resolved or written by hand) on one prompt;
:func:`superscopes_nn.structure.models.wrap` runs both on every model it wraps.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass

import torch

from .architectures import PER_LAYER, ArchSpec, get_path
from .final_norm import FinalNormError, find_final_norm, logit_scale
from .odd_layers import fit_sum, layer_calls, layout_reason, renorm_reason, shared_children, shared_reason
from .positions import token_slots


class SiteError(ValueError):
    """The model's layout has no module for a site (the message names what was not found)."""


def _tensor_in(args, kwargs):
    for a in args:
        if torch.is_tensor(a):
            return a
    if torch.is_tensor(kwargs.get("hidden_states")):
        return kwargs["hidden_states"]
    return next((v for v in kwargs.values() if torch.is_tensor(v)), None)


def _tensor_out(out):
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if torch.is_tensor(out) else None


class _Recorder:
    """Input, output and call order of every watched module, cloned at hook time
    (Falcon adds the attention into the MLP's output in place)."""

    def __init__(self):
        self.calls = defaultdict(list)  # name -> [{"start", "done", "inp", "out"}]
        self.tick = 0
        self.handles = []
        self.modules = {}

    def watch(self, name, module):
        stack = []
        self.modules[name] = module

        def pre(mod, args, kwargs):
            t = _tensor_in(args, kwargs)
            self.tick += 1
            stack.append({"start": self.tick, "inp": None if t is None else t.detach().clone()})

        def post(mod, args, kwargs, out):
            call = stack.pop()
            t = _tensor_out(out)
            self.tick += 1
            call.update(done=self.tick, out=None if t is None else t.detach().clone())
            self.calls[name].append(call)

        self.handles += [module.register_forward_pre_hook(pre, with_kwargs=True),
                         module.register_forward_hook(post, with_kwargs=True)]

    def once(self, name):
        calls = self.calls.get(name, [])
        return calls[0] if len(calls) == 1 else None

    def remove(self):
        for h in self.handles:
            h.remove()


def check_ids(hf_model) -> torch.Tensor:
    """A fixed short prompt (BOS, when it is in the vocabulary, + 7 mid-vocabulary ids) on the model's device."""
    vocab = hf_model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab // 8, max(vocab // 2, vocab // 8 + 1), (7,), generator=g).tolist()
    bos = getattr(hf_model.config.get_text_config(), "bos_token_id", None)
    ids = ([bos] if isinstance(bos, int) and 0 <= bos < vocab else []) + ids  # a config's BOS may be past the vocabulary
    return torch.tensor([ids], device=_device(hf_model))


def _device(hf_model):
    return next(hf_model.parameters()).device


def run_watched(hf_model, watch: dict, input_ids=None) -> _Recorder:
    """One no-grad, eval-mode forward with every module in ``watch`` (name -> module) recorded."""
    rec = _Recorder()
    for name, mod in watch.items():
        rec.watch(name, mod)
    was_training = hf_model.training
    hf_model.eval()
    try:
        with torch.no_grad():
            ids = input_ids if input_ids is not None else check_ids(hf_model)
            kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(hf_model.forward).parameters else {}
            out = hf_model(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kw)  # the head on 1 position
            rec.logits = getattr(out, "logits", None)
    finally:
        rec.remove()
        hf_model.train(was_training)
    return rec


def tolerance(dtype) -> float:
    """Relative tolerance of a sum of residual-stream tensors computed in ``dtype``."""
    return max(1e-5, 16 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-5


def norm_of(t):
    return t.double().norm().item()


def _top_lists(hf_model):
    """``ModuleList``s not inside another one."""
    lists = [(n, m) for n, m in hf_model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    return [(n, m) for n, m in lists if not any(n != o and n.startswith(o + ".") for o, _ in lists)]


def _parent(hf_model, path):
    return get_path(hf_model, path.rpartition(".")[0]) if "." in path else hf_model


def _module_name(hf_model, module):
    return next((n for n, m in hf_model.named_modules() if m is module), None)


def resolve_sites(hf_model, input_ids=None, _keep: list | None = None) -> ArchSpec:
    """The :class:`ArchSpec` of a built HF causal LM, read off one forward pass
    (its recording is appended to ``_keep`` for :func:`verify_sites` to reuse)."""
    family = hf_model.config.model_type
    head = hf_model.get_output_embeddings()
    lm_head = _module_name(hf_model, head) if head is not None else None
    if not lm_head:
        raise SiteError(f"{family}: no LM head found (get_output_embeddings() is None)")
    watch = {"@head": head}
    for path, lst in _top_lists(hf_model):
        for i, layer in enumerate(lst):
            watch[f"{path}.{i}"] = layer
            for c, m in layer.named_children():  # and their children (a block fused with its norms)
                watch.update({f"{path}.{i}.{c}": m, **{f"{path}.{i}.{c}.{g}": mm for g, mm in m.named_children()}})
        watch.update({f"{path.rpartition('.')[0]}.{c}".lstrip("."): m
                      for c, m in _parent(hf_model, path).named_children() if m is not lst})
    rec = run_watched(hf_model, watch, input_ids)
    _keep.append(rec) if _keep is not None else None
    tol = tolerance(next(hf_model.parameters()).dtype)
    path, lst = _decoder_list(hf_model, rec, family)
    ids = input_ids if input_ids is not None else check_ids(hf_model)
    slots = token_slots(hf_model, lst[0], rec.once(f"{path}.0"), ids)  # positions beside the tokens (.positions)
    if why := layout_reason(family, lst, hf_model.config, slots):  # LongCat's sub-blocks; unmapped positions
        raise SiteError(why)
    shared = shared_children(lst)
    per_layer = [_layer_sites(rec, f"{path}.{i}", family, tol, shared.get(i, {})) for i in range(len(lst))]
    moe = any([found.pop("moe") for found in per_layer])  # MoE models may keep some layers dense
    from .steps import checked  # (runs the model: imported where used)
    final_norm, head_scale = _final_norm(rec, path, len(lst), family, tol)
    return ArchSpec(family=family, layers=path, final_norm=final_norm, head_scale=head_scale, lm_head=lm_head,
                    logit_scale=logit_scale(rec, hf_model.config, tol), moe=moe, **checked(hf_model, ids, slots),
                    **_merge(per_layer))


def _merge(per_layer: list) -> dict:
    """One spec from each layer's sites: a field equal on every layer stays one value, else one per layer;
    a site no layer has is ``missing``, one some layers lack has ``gaps`` there (with each layer's reason)."""
    out, missing, gaps = {}, [], []
    for site in ("attn_out", "mlp_in", "mlp_out"):
        why = [dict(found["missing"]).get(site) for found in per_layer]
        if all(why):
            by: dict = {}
            for i, w in enumerate(why):
                by.setdefault(w, []).append(i)
            missing.append((site, next(iter(by)) if len(by) == 1 else "; ".join(
                f"layer{'s' if len(ls) > 1 else ''} {', '.join(map(str, ls))}: {w}" for w, ls in by.items())))
        gaps += [(site, i, w) for i, w in enumerate(why) if w and not all(why)]
    flat = tuple((site, i) for i, found in enumerate(per_layer) for site in found.get("flat", ())
                 if not dict(found["missing"]).get(site))
    for name in PER_LAYER:
        values = tuple("" if name in dict(found["missing"]) else found[name] for found in per_layer)
        out[name] = values[0] if len(set(values)) == 1 else values
    layouts = list(dict.fromkeys(found["layout"] for found in per_layer))
    layout = layouts[0] if len(layouts) == 1 else f"hybrid ({', '.join(layouts)})"
    return dict(out, layout=layout, missing=tuple(missing), gaps=tuple(gaps), flat=flat)


def _decoder_list(hf_model, rec, family):
    best = None
    for path, lst in _top_lists(hf_model):
        calls = [rec.once(f"{path}.{i}") for i in range(len(lst))]
        if any(c is None or c["inp"] is None or c["out"] is None for c in calls):
            continue
        if all(a["done"] < b["start"] and a["out"].shape == b["inp"].shape and torch.equal(a["out"], b["inp"])
               for a, b in zip(calls, calls[1:])) and (best is None or len(lst) > len(best[1])):
            best = (path, lst)
    if best is None:
        raise SiteError(f"{family}: no decoder-layer list found (no ModuleList whose layers run one after another, "
                        "each taking the previous one's output)")
    return best


def _final_norm(rec, path, n, family, tol):
    last, head = rec.once(f"{path}.{n - 1}"), rec.once("@head")
    if head is not None and head["inp"] is not None and last["out"].dim() > head["inp"].dim():
        raise SiteError(f"{family}: its decoder layers pass a stack of residual streams {list(last['out'].shape)} "
                        f"(several streams per position, mixed between layers) rather than one [batch, seq, d] "
                        f"residual stream; no site reads or writes one hidden state per position")
    try:
        return find_final_norm(rec, path, n, family, tol)
    except FinalNormError as err:
        raise SiteError(str(err)) from None


def branch(kids, end):
    """The chain of sub-modules feeding ``end``: each one's input is the previous one's output."""
    chain = [end]
    while True:
        cur = kids[chain[0]]
        preds = [k for k, c in kids.items() if c["done"] < cur["start"] and c["out"] is not None and cur["inp"] is not None
                 and c["out"].shape == cur["inp"].shape and torch.equal(c["out"], cur["inp"])]
        if not preds:
            return chain
        chain.insert(0, max(preds, key=lambda k: kids[k]["done"]))


def _adds(kids, x):
    """The sub-modules whose output could be added to the residual, in call order, one per value."""
    adds = sorted((k for k, c in kids.items() if c["out"] is not None and c["out"].shape == x.shape),
                  key=lambda k: kids[k]["done"])
    # modules outputting the same value (an eval-mode dropout after a block): keep the one nearest the add
    return [k for i, k in enumerate(adds) if not any(torch.equal(kids[k]["out"], kids[later]["out"])
                                                     for later in adds[i + 1:])]


def _layer_sites(rec, prefix, family, tol, shared) -> dict:
    layer = rec.once(prefix)
    x, y = layer["inp"], layer["out"]
    kids = layer_calls(rec, prefix, x)
    adds = _adds(kids, x)
    target = (y - x).double().flatten()
    scale = tol * (norm_of(x) + norm_of(y))
    fits = {n: fit_sum(kids, adds, target, scale, n) for n in (2, 3, 1)}
    if not any(fits.values()):  # a block fused with its norms (and the residual add): look inside it
        deep = layer_calls(rec, prefix, x, depth=2)
        if len(deep) > len(kids):
            fit = fit_sum(deep, _adds(deep, x), target, scale, 2)
            if fit is not None and not shared:
                a, m = fit.modules
                return _describe(LayerPass(deep, x, y, tol, scale),
                                 Update(a, m, deep[a]["out"], *fit.scales), [])
            fits[1] = fits[1] or fit_sum(deep, _adds(deep, x), target, scale, 1)
    none = dict(attn_out="", mlp_out="", mlp_in="", parallel=False, attn="", mlp="", mlp_norm="", moe=False)
    every = ("attn_out", "mlp_in", "mlp_out")
    if fits[2] is None and fits[3] is not None:
        p, q, r = fits[3].modules
        sp, sq, sr = fits[3].scales
        after = lambda k, v: _reads(kids, k, v, scale)  # noqa: E731  (k's branch reads the residual v)
        if after(r, x + sp * kids[p]["out"] + sq * kids[q]["out"]):
            why = (f"its attention part adds two modules' outputs ({p} + {q}); no one module outputs what it adds")
            return _describe(LayerPass(kids, x, y, tol, scale),
                             Update(None, r, sp * kids[p]["out"] + sq * kids[q]["out"], 1.0, sr), [("attn_out", why)])
        if after(q, x + sp * kids[p]["out"]) and after(r, x + sp * kids[p]["out"]):
            why = f"its MLP part adds two modules' outputs ({q} + {r}); no one module outputs what it adds or reads"
            out = _describe(LayerPass(kids, x, y, tol, scale), Update(p, q, kids[p]["out"], sp, sq),
                            [("mlp_out", why), ("mlp_in", why)])
            return dict(out, mlp_out="", mlp_in="")
    if fits[2] is None:
        if fits[1] is not None:
            block = fits[1].modules[0]
            feed = [k for k in kids if "." not in k and k != block and not block.startswith(k + ".")
                    and kids[k]["params"] > 2 * x.shape[-1]]
            why = (f"each layer adds one block's output ({block}); it has no separate attention and MLP blocks" +
                   (f" ({', '.join(feed)} {'feeds' if len(feed) == 1 else 'feed'} only that block's input, not the "
                    "residual stream"
                    f"{'; ' + shared_reason(shared, None, short=True) if shared else ''})" if feed else ""))
            return dict(none, layout="single-block", missing=tuple((s, why) for s in every))
        why = (shared_reason(shared, fits[2]) if shared else renorm_reason(kids, x, y, scale)) or (
            f"no two sub-modules of a layer ({', '.join(kids) or 'none'}) output what it adds to its residual "
            "stream: attn_out / mlp_out (and so mlp_in) not found")
        kept = dict(kids, **{"@x": {"out": x}})  # y = c x + blocks: the layer rescales its residual stream
        scaled = next((f for n in (3, 2) if (f := fit_sum(kept, ["@x", *adds], y.double().flatten(), scale, n))), None)
        if scaled is not None and scaled.modules[0] == "@x" and abs(scaled.scales[0] - 1) > 1e-3 and not shared:
            why = (f"the layer rescales its residual stream ({scaled.scales[0]:.3g} x input + "
                   f"{' + '.join(f'{c:.3g} x {k}' for k, c in zip(scaled.modules[1:], scaled.scales[1:]))}); no module outputs "
                   "what a block adds to an unscaled residual")
        return dict(none, layout="unknown", missing=tuple((s, why) for s in every))
    a, m = fits[2].modules
    return _describe(LayerPass(kids, x, y, tol, scale), Update(a, m, kids[a]["out"], *fits[2].scales), [])


def _reads(kids, k, value, scale) -> bool:
    """True when the branch computing ``k`` starts from ``value``."""
    start = kids[branch(kids, k)[0]]["inp"]
    return start is not None and start.shape == value.shape and norm_of(start - value) <= scale


@dataclass(frozen=True)
class LayerPass:
    """One layer's recorded pass: its sub-modules' calls (:func:`~.odd_layers.layer_calls`), its input
    ``x`` and output ``y``, the dtype's relative tolerance and the absolute one (``scale``)."""

    kids: dict
    x: torch.Tensor
    y: torch.Tensor
    tol: float
    scale: float


@dataclass(frozen=True)
class Update:
    """What a layer adds to its residual: ``sa`` x ``a_value`` (module ``a``'s output, or several modules'
    when ``a`` is None) + ``sm`` x module ``m``'s output."""

    a: str | None
    m: str
    a_value: torch.Tensor
    sa: float
    sm: float


def _describe(layer: LayerPass, update: Update, missing) -> dict:
    """The sites of ``layer`` adding ``update`` to its residual (``missing``: sites already known absent)."""
    kids, x, tol, scale = layer.kids, layer.x, layer.tol, layer.scale
    a, m, a_value, sa, sm = update.a, update.m, update.a_value, update.sa, update.sm
    d = x.shape[-1]
    heavy = lambda k: kids[k]["params"] > 2 * d  # noqa: E731  (a norm has at most 2 d parameters)
    changes = lambda k: not (kids[k]["inp"] is not None and kids[k]["out"] is not None  # noqa: E731
                             and kids[k]["inp"].shape == kids[k]["out"].shape
                             and torch.equal(kids[k]["inp"], kids[k]["out"]))  # an eval dropout does not

    def split(chain):
        """(norms before, the block's first and last heavy module, norms after) of a branch."""
        big = [i for i, k in enumerate(chain) if heavy(k)] or [max(range(len(chain)),
                                                                     key=lambda i: kids[chain[i]]["params"])]
        norms = lambda part: [k for k in part if changes(k) and not heavy(k)]  # noqa: E731
        return norms(chain[:big[0]]), chain[big[0]], chain[big[-1]], norms(chain[big[-1] + 1:])

    attn_pre, attn, _, attn_post = split(branch(kids, a)) if a is not None else ([], "", "", [])
    mlp_chain = branch(kids, m)
    mlp_pre, mlp, _, mlp_post = split(mlp_chain)
    missing = list(missing)
    if max(abs(sa - 1), abs(sm - 1)) > max(1e-3, 64 * tol):
        why = (f"the layer adds {sa:.3g} x {a or 'its attention'} + {sm:.3g} x {m} (a residual scale); no module "
               "outputs what a block adds")
        missing = [(s, w) for s, w in missing if s != "attn_out"] + [("attn_out", why), ("mlp_out", why)]
    start = kids[mlp_chain[0]]["inp"]
    parallel = start is not None and start.shape == x.shape and torch.equal(start, x)
    mlp_inp = kids[mlp]["inp"]
    if not parallel and not (start is not None and start.shape == x.shape and norm_of(start - x - sa * a_value) <= scale):
        missing.append(("mlp_in", f"the MLP branch ({' -> '.join(mlp_chain)}) reads neither the layer input nor "
                                  "the input plus the attention output"))
    elif mlp_inp is None or mlp_inp.shape != x.shape:
        missing.append(("mlp_in", f"the MLP module {mlp!r} does not take the [batch, seq, d] residual as input"))
    post, has_pre = bool(attn_post or mlp_post), bool(attn_pre or mlp_pre)
    layout = "parallel" if parallel else {(True, True): "sandwich", (False, True): "post-norm"}.get((has_pre, post),
                                                                                                 "pre-norm")
    flat = [s for s, k, io in (("attn_out", a, "out"), ("mlp_out", m, "out"), ("mlp_in", mlp, "in"))
            if k and kids[k][f"flat_{io}"]]
    return dict(attn_out=a or "", mlp_out=m, mlp_in=mlp, parallel=parallel, attn=attn, mlp=mlp,
                mlp_norm=".".join(mlp_pre[-1:]), layout=layout, moe=kids[mlp]["moe"], missing=_first(missing),
                flat=flat)


def _first(pairs) -> tuple:
    """``(site, reason)`` pairs, the first reason of each site kept."""
    seen: dict = {}
    for site, why in pairs:
        seen.setdefault(site, why)
    return tuple(seen.items())
