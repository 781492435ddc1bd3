"""A map of the wrong width never reaches a trace: refused in one line naming both widths, before any session.

The case that motivates it (issue 37, ``controls --remote``): an affine map fitted on states a server returned
from a narrower model than the client's (a structural twin, hidden 64) cannot patch the full-size client
(Llama-3.1-405B, hidden 16384). Checked on the full-size meta model built from its real config
(tests/fixtures/large_configs), through the public API, on the resolve path and on rows resolved for another
model; and, through NDIF's own server code (the ``ndif_server`` tier), that states read back narrower than the
client's hidden size are refused before a map is fitted on them.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from superscopes_nn import Affine, Source, Target, load_model, patched_logits, patchscope, resolve
from superscopes_nn.structure.info import model_info
from superscopes_nn.testing.tiny_models import tiny_model, tiny_tokenizer

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "large_configs"


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """Llama-3.1-405B on meta weights (its config and a tiny tokenizer): what a ``--remote`` client holds."""
    d = tmp_path_factory.mktemp("llama405b")
    shutil.copy(CONFIGS / "Llama-3.1-405B" / "config.json", d / "config.json")
    tiny_tokenizer().save_pretrained(d)
    return load_model(str(d), remote=True)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_full_size_client_refuses_a_narrow_map(full_size):
    assert model_info(full_size).hidden == 16384
    narrow = Affine(torch.eye(64), torch.zeros(64))  # what a fit on the twin's 64-wide states gives
    with pytest.raises(ValueError) as err:
        patchscope(full_size, [(Source("Pink Floyd", layer=0), Target(), narrow)], remote=True, max_new_tokens=2)
    msg = _one_line(err)
    assert "width 64" in msg and "16384" in msg and "[16384, 16384]" in msg, msg


def test_cross_model_map_names_both_widths():
    src, tgt = tiny_model("llama", hidden=64), tiny_model("llama", hidden=32)
    with pytest.raises(ValueError) as err:  # the transpose of the right map: [d_source, d_target]
        patchscope(src, [(Source("Pink Floyd", layer=1), Target(), Affine(torch.zeros(64, 32)))], target_model=tgt)
    msg = _one_line(err)
    assert "maps width 32 to width 64" in msg and "hidden size 64" in msg and "32" in msg, msg
    assert "[32, 64]" in msg, msg


def test_rows_resolved_for_another_model_are_refused_before_a_session():
    """``patched_logits`` takes rows: rows resolved for one target and run on a narrower one refuse up front."""
    model, narrow = tiny_model("llama", hidden=64), tiny_model("llama", hidden=32)
    rows = resolve(model, [(Source("Pink Floyd", layer=1), Target(), Affine(torch.eye(64)))])
    with pytest.raises(ValueError) as err:
        patched_logits(model, rows, target_model=narrow)
    msg = _one_line(err)
    assert "hidden size 64" in msg and "32" in msg and "[32, 64]" in msg, msg
    assert patched_logits(model, rows).shape[0] == 1  # the same rows on the model they were resolved for run


@pytest.mark.ndif_server
def test_states_narrower_than_the_client_are_refused_before_a_fit(tmp_path_factory, monkeypatch):
    """The full-size client's states read through NDIF's code from a narrower server model (its twin, run under
    the client's id) are refused by ``paired_states`` in one line naming both widths."""
    import ndif_server
    from superscopes_nn import collect
    from superscopes_nn.science.mapping import paired_states
    from superscopes_nn.structure.twin import twin_model
    from superscopes_nn.testing.tiny_models import tiny_config

    full, twin_dir = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("twin")
    tiny_config("llama", vocab_size=len(tiny_tokenizer()), n_layers=2, hidden=256).save_pretrained(full)
    tiny_tokenizer().save_pretrained(full)
    client = load_model(str(full), remote=True)
    hf = twin_model(client._module.config)
    hf.save_pretrained(twin_dir)
    tiny_tokenizer().save_pretrained(twin_dir)
    assert hf.config.hidden_size < 256
    for d in (full, twin_dir):
        ndif_server.seed_id_cache(d)
    server = ndif_server.start(tmp_path_factory)
    try:
        with monkeypatch.context() as mp:
            ndif_server.route(mp, server, keys={str(full): str(twin_dir)})
            import superscopes_nn.remote.preflight as preflight

            mp.setattr(preflight, "PREFLIGHT", False)
            got = collect(client, "Pink Floyd", [1], remote=True)[(1, "residual")]
            assert got.shape[-1] == hf.config.hidden_size  # the reference: the server's states are the twin's width
            with pytest.raises(ValueError) as err:
                paired_states(client, client, ["Pink Floyd is a band.", "Star Wars is a film."], [(1, 1)], remote=True)
    finally:
        server.close()
    msg = _one_line(err)
    assert f"{hf.config.hidden_size} wide" in msg and "hidden size is 256" in msg, msg


def test_controls_refuses_a_map_over_the_request_cap_before_reading_a_state(full_size, monkeypatch):
    """``controls --remote`` with the 405B as its own verbalizer: each request would carry a 16384 x 16384 float32
    map (1 GiB), over the 256 MiB request cap; refused before the fit's first request, not after it."""
    import pandas as pd

    from experiments.li2025 import controls
    from superscopes_nn.engine.plan import LIMITS

    def no_reads(*a, **k):
        raise AssertionError("a state was read before the refusal")

    monkeypatch.setattr(controls, "fit_maps", no_reads)
    samples = pd.DataFrame([{"task": "t", "subject": "France", "object": "Paris", "target_prompt": "capital of x"}])
    with pytest.raises(ValueError) as err:
        controls.verbalizer_vs_source(full_size, full_size, samples, layer_pairs=[(2, 2)], fit_texts=["a b", "c d"],
                                      remote=True)
    msg = _one_line(err)
    assert "16384 x 16384" in msg and "1024 MiB" in msg and "256 MiB" in msg, msg
    # the boundary, from the bytes a float32 [d_v, d_s] weight and [d_v] bias take
    cap, per_row = LIMITS["request"].value, torch.finfo(torch.float32).bits // 8 * (16384 + 1)
    widest = cap // per_row
    verbalizer = tiny_model("llama", hidden=64)
    for d_v, refused in ((widest, False), (widest + 1, True)):
        monkeypatch.setattr(controls, "model_info", lambda m, d_v=d_v: (
            dataclasses.replace(model_info(m), hidden=d_v) if m is verbalizer else model_info(m)))
        if refused:
            with pytest.raises(ValueError):
                controls.check_map_fits_request(full_size, verbalizer, True)
        else:
            controls.check_map_fits_request(full_size, verbalizer, True)
        controls.check_map_fits_request(full_size, verbalizer, "local")  # the round trip sends nothing to NDIF
