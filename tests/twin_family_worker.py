"""Build the structural twin of each named causal-LM family from its transformers default config.

    python tests/twin_family_worker.py FAMILY [FAMILY ...]

One JSON line per family: ``ok`` with the twin's parameter count, the largest number of
parameters any non-meta ``from_config`` call of the twin builder allocated (``allocated``), the
full-size meta build's parameter count and how many of its elements are not on meta
(``off_meta``), and whether the twin's module tree equals the full-size one layer kind by layer
kind; or the one-line ``reason`` the family is refused with
(the stage it failed at: ``config``, ``meta``, ``twin``, ``tree``, ``forward``). Used by
``tests/test_twin_all_families.py`` (two workers, one per core).
"""

from __future__ import annotations

import json
import sys
import time
import warnings


def _line(err) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def layer_kinds(model, n_layers: int) -> dict:
    """``{module tree of a decoder layer: [layer indices]}`` of the longest ``ModuleList`` of ``n_layers`` layers,
    plus the tree outside it under the key ``"rest"``: module names relative to the layer, with classes."""
    import torch

    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    path, lst = lists[0] if lists else ("", [])
    kinds: dict = {}
    for i, layer in enumerate(lst):
        tree = tuple((n, type(m).__name__) for n, m in layer.named_modules())
        kinds.setdefault(str(tree), []).append(i)
    rest = [(n, type(m).__name__) for n, m in model.named_modules() if not (path and n.startswith(path + "."))]
    return {"layers": path, "kinds": sorted(kinds.items()), "rest": rest}


def check(family: str) -> dict:
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from superscopes_nn.structure import twin
    from superscopes_nn.structure.architectures import num_layers
    from superscopes_nn.structure.sites_resolver import run_watched

    stage = "config"
    try:
        config = CONFIG_MAPPING[family]()
        stage = "meta"
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
        off_meta = sum(t.numel() for t in list(meta.parameters()) + list(meta.buffers()) if t.device.type != "meta")
        full = sum(p.numel() for p in meta.parameters())
        stage = "twin"
        allocated = []
        real = AutoModelForCausalLM.from_config.__func__

        def counting(cls, cfg, *a, **k):  # every from_config call of the twin builder
            model = real(cls, cfg, *a, **k)
            allocated.append(sum(p.numel() for p in model.parameters() if p.device.type != "meta"))
            return model

        AutoModelForCausalLM.from_config = classmethod(counting)
        try:
            model = twin.twin_model(config)
        finally:
            AutoModelForCausalLM.from_config = classmethod(real)
        params = sum(p.numel() for p in model.parameters())
        stage = "tree"
        try:
            n = num_layers(config)
        except ValueError:
            n = 0
        same_tree = layer_kinds(model, n) == layer_kinds(meta, n)
        stage = "forward"
        run_watched(model, {})
        return {"family": family, "ok": True, "params": params, "allocated": max(allocated), "full": full,
                "off_meta": off_meta, "same_tree": same_tree, "n_layers": n}
    except Exception as err:
        if stage == "meta":  # what the twin builder says of a config transformers cannot build
            try:
                twin.twin_model(config)
            except Exception as said:
                err = said
        elif stage == "forward":
            err = twin.cannot_run(config, err) or err
        return {"family": family, "ok": False, "stage": stage, "reason": _line(err)}


def main(families) -> None:
    warnings.filterwarnings("ignore")
    from transformers.utils import logging

    logging.set_verbosity_error()
    for family in families:
        t0 = time.perf_counter()
        out = check(family)
        out["seconds"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
