"""From specs to rows: prompts and tokens to positions, layer checks, placeholders, grids.

``resolve(model, [(Source, Target, mapping), ...])`` validates every patch and
returns :class:`~superscopes_nn.core.specs.Row` s with absolute positions and layers;
``sweep_rows`` builds the usual grid (prompts x sites x layers x target layers x
alphas). Every bad input is refused here, before a model runs, with a one-line
error naming the value.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Iterable, Sequence

from ..structure.architectures import check_site

from ..core.deprecation import renamed
from ..core.specs import Affine, Amplify, Compose, Fn, Identity, Row, Source, Target, as_mapping
from ..core.validate import check_alphas, check_layer, check_layers, check_strings, check_text, dedupe, is_int
from ..structure.info import model_info, model_name, context_length


def encode(tokenizer, prompt: str, add_special_tokens: bool = True) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    check_text(prompt, "prompt")
    return list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])


def find_token(tokenizer, prompt: str, token: str, whole_word: bool = False) -> int:
    """Index of the last sub-token of the only occurrence of ``token`` in ``prompt``.

    Raises ``ValueError`` naming the token when it is absent or occurs more than once.
    """
    if not isinstance(token, str) or not token:
        raise ValueError(f"token to find must be a non-empty string, got {token!r}")
    pattern = (r"(?<![\w])" + re.escape(token) + r"(?![\w])") if whole_word else re.escape(token)
    spans = [m.span() for m in re.finditer(pattern, prompt)]
    if not spans:
        raise ValueError(f"token {token!r} not found in prompt {prompt!r}")
    if len(spans) > 1:
        raise ValueError(f"token {token!r} is ambiguous: it occurs {len(spans)} times in prompt {prompt!r}; pass an int position")
    start, end = spans[0]
    enc = tokenizer(prompt, return_offsets_mapping=True)
    last = None
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        if e > s and s < end and e > start:
            last = i
    if last is None:
        raise ValueError(f"token {token!r} does not map to any token of prompt {prompt!r}")
    return last


def resolve_position(tokenizer, prompt: str, position: int | str, n_tokens: int, whole_word: bool = False) -> int:
    if isinstance(position, str):
        return find_token(tokenizer, prompt, position, whole_word=whole_word)
    if not is_int(position):
        raise ValueError(f"position must be an int or a token string, got {position!r}")
    position = int(position)
    if not -n_tokens <= position < n_tokens:
        raise ValueError(f"position {position} out of range for prompt {prompt!r} of {n_tokens} tokens")
    return position % n_tokens


def _unpack(item: Any) -> tuple:
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise ValueError(f"a patch is (Source, Target) or (Source, Target, mapping), got {item!r}")
    src, tgt, f = (tuple(item) + (None,))[:3]
    if not isinstance(src, Source):
        raise ValueError(f"a patch's first item must be a Source, got {src!r}")
    if not isinstance(tgt, Target):
        raise ValueError(f"a patch's second item must be a Target, got {tgt!r}")
    return src, tgt, as_mapping(f)


def _check_mapping_shape(f, d_src: int, d_tgt: int, src_name: str, tgt_name: str, device="cpu") -> None:
    base = f.base if isinstance(f, Compose) else f
    check_map_width(base, d_src, d_tgt, src_name, tgt_name)
    if isinstance(base, Fn):
        _probe_fn(base, d_src, d_tgt, device, tgt_name)


def check_map_width(f, d_src: int, d_tgt: int, src_name: str, tgt_name: str) -> None:
    """A mapping (or a ``Compose`` of one) must carry ``d_src`` wide vectors to ``d_tgt`` wide ones: an identity /
    amplification between models of two widths, or an :class:`Affine` fitted on other models' states (e.g. a
    narrower server model's), is refused in one line naming the widths (a ``Fn`` is probed by :func:`resolve`)."""
    base = f.base if isinstance(f, Compose) else f
    if isinstance(base, (Identity, Amplify)) and d_src != d_tgt:
        raise ValueError(f"hidden sizes differ ({src_name}: {d_src}, {tgt_name}: {d_tgt}); "
                         "pass an Affine mapping or a callable")
    if isinstance(base, Affine) and tuple(base.weight.shape) != (d_tgt, d_src):
        d_out, d_in = base.weight.shape
        raise ValueError(f"affine map {base.name!r} maps width {d_in} to width {d_out} (weight {[d_out, d_in]}), "
                         f"but {src_name} has hidden size {d_src} and {tgt_name} {d_tgt}: it needs weight "
                         f"[{d_tgt}, {d_src}] (was it fitted on another model's states?)")


def _vector_device(model):
    """Where the source vectors of ``model`` are read (the CPU for a meta model: NDIF sends them back)."""
    p = next(iter(model._module.parameters()), None)
    return "cpu" if p is None or p.device.type == "meta" else p.device


def _probe_fn(f: Fn, d_src: int, d_tgt: int, device, tgt_name: str) -> None:
    """Run ``f`` once on a [d_source] float32 vector (on the source model's device) before any row runs:
    a failure or a result that is not a [d_target] tensor is one line naming the mapping."""
    import torch

    v = torch.randn(d_src, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        out = f(v)
    except Exception as err:  # noqa: BLE001 - the user's function: its error, on one line
        raise ValueError(f"mapping {f.name!r} fails on a [{d_src}] float32 vector on {device} (the source vector "
                         f"it gets per row): {type(err).__name__}: {' '.join(str(err).split())[:200]}") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (d_tgt,):
        got = f"shape {list(shape)}" if shape is not None else f"a {type(out).__name__}"
        raise ValueError(f"mapping {f.name!r} returns {got} for a [{d_src}] source vector; the target model "
                         f"{tgt_name} needs a [{d_tgt}] tensor (its hidden size)")


def resolve(model, patches: Iterable, target_model=None) -> list[Row]:
    """Validate and resolve ``(Source, Target, mapping)`` triples into :class:`Row` s."""
    target_model = model if target_model is None else target_model
    tok, ttok = model.tokenizer, target_model.tokenizer
    n_src, n_tgt = model_info(model).n_layers, model_info(target_model).n_layers
    d_src, d_tgt = model_info(model).hidden, model_info(target_model).hidden
    src_name, tgt_name = model_name(model), model_name(target_model)
    limits = {id(model): context_length(model), id(target_model): context_length(target_model)}
    cache: dict = {}
    probed: dict = {}
    specs = model_info(model).spec, model_info(target_model).spec

    def ids_of(m, t, prompt):
        key = (id(t), prompt)
        if key not in cache:
            ids = tuple(encode(t, prompt))
            limit = limits[id(m)]
            if limit is not None and len(ids) > limit:
                raise ValueError(f"prompt of {len(ids)} tokens exceeds the context length {limit} of "
                                 f"{model_name(m)}: {prompt[:60]!r}...")
            cache[key] = ids
        return cache[key]

    rows = []
    if isinstance(patches, (str, bytes, Source)) or not isinstance(patches, Iterable):
        raise ValueError(f"patches must be a list of (Source, Target[, mapping]) tuples, got {patches!r}")
    for item in patches:
        src, tgt, f = _unpack(item)
        check_site(src.site)
        tsite = check_site(tgt.site or src.site)
        sids = ids_of(model, tok, src.prompt)
        spos = resolve_position(tok, src.prompt, src.position, len(sids))
        slayer = check_layer(src.layer, n_src, "source", src_name)
        tlayer = check_layer(src.layer if tgt.layer is None else tgt.layer, n_tgt, "target", tgt_name)
        specs[0].site_module(src.site, slayer)  # a site the layer has no module for: its reason
        specs[1].site_module(tsite, tlayer)
        tids = ids_of(target_model, ttok, tgt.prompt)
        if tgt.position is None:
            if not tgt.placeholder or not isinstance(tgt.placeholder, str):
                raise ValueError(f"target needs a placeholder or a position, got placeholder={tgt.placeholder!r}")
            try:
                tpos = find_token(ttok, tgt.prompt, tgt.placeholder, whole_word=True)
            except ValueError as err:
                raise ValueError(f"target prompt {tgt.prompt!r} has no usable placeholder {tgt.placeholder!r}: {err}") from None
        else:
            tpos = resolve_position(ttok, tgt.prompt, tgt.position, len(tids), whole_word=True)
        base = f.base if isinstance(f, Compose) else f
        if id(base) not in probed:
            _check_mapping_shape(f, d_src, d_tgt, src_name, tgt_name, _vector_device(model))
            probed[id(base)] = base  # kept alive, so its id is not reused
        rows.append(Row(src.prompt, sids, spos, slayer, src.site, tgt.prompt, tids, tpos, tlayer, tsite, f,
                        source_token=tok.decode([sids[spos]])))
    if not rows:
        raise ValueError("no patches to run (empty prompt, layer, site or alpha list?)")
    return rows


def check_sites(sites: Any) -> list[str]:
    """A non-empty list of site names (a single name is one site, never its letters)."""
    return [check_site(s) for s in dedupe(check_strings(sites, "site"), "site")]


def sweep_rows(model, prompts: Sequence[str] | str, *, layers: Iterable[int] | int, sites: Sequence[str] | str = ("residual",),
               alphas: Sequence[float] = (1.0,), position: int | str | Sequence = -1, target: Target = Target(),
               target_layers: Iterable[int] | None = None, target_model=None, mapping=None, **old) -> list[Row]:
    """Resolve the grid prompts x sites x layers x target layers x alphas into rows.

    ``position``: the source position, an int or a token string, one for every prompt or one per prompt
    (``token=`` is its deprecated spelling).
    ``target_layers``: None = same as the source layer (``target.layer`` if set).
    ``mapping``: optional map applied before amplification (e.g. an ``Affine`` between models).
    Repeated layers, alphas or sites are dropped with a warning.
    """
    position = renamed(old, "token", "position", position, -1, "sweep_rows")
    if old:
        raise TypeError(f"sweep_rows() got an unexpected keyword argument {next(iter(old))!r}")
    prompts = check_strings(prompts, "source prompt")
    positions = list(position) if isinstance(position, (list, tuple)) else [position] * len(prompts)
    if len(positions) != len(prompts):
        raise ValueError(f"got {len(positions)} positions for {len(prompts)} prompts")
    layers = dedupe(check_layers(layers, "layer"), "layer")
    alphas = dedupe(check_alphas(alphas), "alpha")
    sites = check_sites(sites)
    if not isinstance(target, Target):
        raise ValueError(f"target must be a Target, got {target!r}")
    tls = None if target_layers is None else dedupe(check_layers(target_layers, "target layer"), "target layer")
    base = None if mapping is None else as_mapping(mapping)
    patches = []
    for prompt, pos in zip(prompts, positions):
        for site in sites:
            for layer in layers:
                for tl in (tls if tls is not None else [target.layer]):
                    for a in alphas:
                        f = Amplify(a) if base is None else Compose(base, a)
                        patches.append((Source(prompt, layer, pos, site), replace(target, layer=tl), f))
    return resolve(model, patches, target_model)
