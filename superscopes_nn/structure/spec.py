"""A model's structure spec: looked up, resolved by structure, or checked.

:func:`arch_spec` returns the :class:`~superscopes_nn.structure.architectures.ArchSpec` of a built
model (resolved once from its forward pass by :func:`~superscopes_nn.structure.sites_resolver.resolve_sites`
and remembered for its config) or of a config alone (the :data:`ARCHITECTURES` table);
:func:`verify_sites` checks a spec on one short prompt.
"""

from __future__ import annotations

import torch

from .architectures import ARCHITECTURES, CONFIG_LAYOUT, ArchSpec, get_path, remember, remembered
from .sites_resolver import SiteError, branch, norm_of, run_watched, tolerance, resolve_sites

__all__ = ["arch_spec", "verify_sites"]


def arch_spec(model_or_config) -> ArchSpec:
    """The :class:`ArchSpec` of a model (resolved from its forward pass) or of a config.

    A built HF model (or an nnsight wrapper of one) is resolved by
    :func:`superscopes_nn.structure.sites_resolver.resolve_sites` and remembered for its config, so
    ``arch_spec(model.config)`` later returns the same spec; a config never built into a
    model falls back to :data:`ARCHITECTURES` (by ``model_type``).
    """
    import torch

    hf = getattr(model_or_config, "_module", model_or_config)
    if isinstance(hf, torch.nn.Module):
        config = hf.config
        if remembered(config) is not None:
            return remembered(config)
        if all(p.device.type != "meta" for p in hf.parameters()):
            spec = resolve_sites(hf)
            remember(config, spec)
            return spec
        model_or_config = config
    config = model_or_config
    if remembered(config) is not None:
        return remembered(config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r} for a config alone; the known model types are "
            f"{', '.join(sorted(ARCHITECTURES))}; any other decoder resolves from the built model "
            "(load_model / wrap, or arch_spec(hf_model))"
        )
    spec = ARCHITECTURES[model_type]
    if model_type in CONFIG_LAYOUT and not CONFIG_LAYOUT[model_type](config):
        raise ValueError(f"{model_type} with this config's layout switches resolves from the built model only "
                         "(load_model / wrap, or arch_spec(hf_model))")
    if spec.per_layer:  # which layer is which kind comes from the config's own layer pattern
        raise ValueError(f"{model_type} has layers that differ ({spec.layout}); its sites resolve from the built "
                         "model only (load_model / wrap, or arch_spec(hf_model))")
    return spec


def verify_sites(model, spec: ArchSpec | None = None, input_ids=None) -> ArchSpec:
    """Check ``spec`` (default: the model's spec, resolved if not yet) on one short prompt; return it.

    On every layer: ``residual_out - residual_in == attn_out + mlp_out`` within the
    dtype's tolerance, ``attn_out`` comes before ``mlp_out``, and ``mlp_in`` is on the
    MLP's branch and is what that branch computes from the residual (the pre-MLP
    norm of ``residual_in`` for a parallel layer, of ``residual_in + attn_out``
    otherwise). Raises :class:`SiteError` with a one-line message naming what failed.
    Without ``spec``, a model not resolved yet is resolved and checked on the same
    forward pass. Models on the meta device are not checked.
    """
    hf = getattr(model, "_module", model)
    meta = any(p.device.type == "meta" for p in hf.parameters())
    rec = None
    if spec is None and not meta and remembered(hf.config) is None:
        keep = []
        spec = resolve_sites(hf, input_ids, keep)
        remember(hf.config, spec)
        rec = keep[0]
    spec = spec or arch_spec(hf)
    if meta:
        return spec
    pre = spec.layers
    try:
        get_path(hf, spec.final_norm), get_path(hf, spec.lm_head)
        blocks = list(get_path(hf, spec.layers))
        on = [{s: spec.site_module(s, i) for s in ("attn_out", "mlp_out", "mlp_in") if i in spec.site_layers(s, len(blocks))}
              for i in range(len(blocks))]  # the site paths of each layer
        watch = {}
        for i, block in enumerate(blocks):
            watch[f"{pre}.{i}"] = block
            watch.update({f"{pre}.{i}.{c}": m for c, m in block.named_children()})
            watch.update({f"{pre}.{i}.{p}": get_path(block, p) for p in on[i].values()})
        norms = [get_path(b, spec.at("mlp_norm", i)) if spec.at("mlp_norm", i) and "mlp_in" in on[i] else (lambda t: t)
                 for i, b in enumerate(blocks)]
    except (AttributeError, IndexError, TypeError) as err:
        raise SiteError(f"{spec.family}: a module of the site spec was not found ({err})") from None
    if rec is None:
        rec = run_watched(hf, watch, input_ids)
    tol = tolerance(next(hf.parameters()).dtype)
    for i in range(len(blocks)):
        paths, parallel, mlp = on[i], spec.at("parallel", i), spec.at("mlp", i)
        layer = rec.once(f"{pre}.{i}")
        got = {s: rec.once(f"{pre}.{i}.{p}") for s, p in paths.items()}
        if layer is None or any(c is None for c in got.values()):
            raise SiteError(f"{spec.family}: layer {i} or one of its site modules did not run exactly once")
        x, y = layer["inp"], layer["out"]
        v = {s: c["inp"] if spec.site_is_input(s) else c["out"] for s, c in got.items()}
        v = {s: t.reshape(x.shape) if spec.is_flat(s, i) and t is not None and t.numel() == x.numel() else t
             for s, t in v.items()}  # a block returning the residual flattened to [batch * seq, d]
        bad = [s for s, t in v.items() if t is None or t.shape != x.shape]
        if bad:
            raise SiteError(f"{spec.family}: layer {i}: {', '.join(bad)} is not a [batch, seq, d] residual-stream "
                            f"tensor (read at {', '.join(paths[s] for s in bad)})")
        if "attn_out" in v and "mlp_out" in v:
            if got["attn_out"]["done"] > got["mlp_out"]["done"]:
                raise SiteError(f"{spec.family}: layer {i}: attn_out ({paths['attn_out']!r}) is computed after mlp_out "
                                f"({paths['mlp_out']!r})")
            err = norm_of(y - x - v["attn_out"] - v["mlp_out"]) / (norm_of(x) + norm_of(y))
            if not err <= tol:
                raise SiteError(f"{spec.family}: layer {i}: residual_out - residual_in != attn_out + mlp_out "
                                f"(relative error {err:.2g}; attn_out read at {paths['attn_out']!r}, "
                                f"mlp_out at {paths['mlp_out']!r})")
        end = paths.get("mlp_out", mlp)
        kids = {c: rec.once(f"{pre}.{i}.{c}") for c, _ in blocks[i].named_children()}
        kids = {c: call for c, call in kids.items() if call is not None}
        if "mlp_in" in v and end in kids and paths["mlp_in"] in kids and paths["mlp_in"] not in branch(kids, end):
            raise SiteError(f"{spec.family}: layer {i}: mlp_in ({paths['mlp_in']!r}) is not on the branch that computes "
                            f"the MLP's contribution ({' -> '.join(branch(kids, end))})")
        if "mlp_in" in v and (parallel or "attn_out" in v):
            with torch.no_grad():
                want = norms[i](x if parallel else x + v["attn_out"])
            err = norm_of(v["mlp_in"] - want) / (norm_of(want) + norm_of(v["mlp_in"]) + 1e-30)
            if not err <= tol:
                raise SiteError(f"{spec.family}: layer {i}: mlp_in (input of {paths['mlp_in']!r}) is not the pre-MLP norm "
                                f"{spec.at('mlp_norm', i) or '(none)'!r} of the "
                                f"{'layer input' if parallel else 'layer input + attn_out'} (relative error {err:.2g})")
    return spec
