"""The `ndif_server` tier at full depth: requests of full-size models, run by NDIF's own server code.

For each published config in tests/fixtures/large_configs (Llama-3.1-405B, DeepSeek-V3, ...), the
client is the full-size meta model (``load_model(DIR, remote=True)``: every layer, every width,
meta weights). Its request (a Fig 3-shaped sweep: two prompts x the first, middle and last layer x
two alphas, on ``mlp_out`` where the architecture has it, else ``residual``; plus a back-patching
run: the last token's state at the last / middle layer into layers 0 and 1 of the same prompt) is
captured by nnsight's real ``RemoteBackend`` and executed by ndif 0.1.2 (tests/ndif_runner.py,
trusted and sandbox paths) on the server's copy of the config's same-depth narrow twin
(superscopes_nn.structure.twin: same model_type, layers and per-layer switches; random weights).
Checked per config: the token ids equal the same rows run locally on the twin, both paths succeed
and save the same values; the payloads reference no module outside NDIF's allowlist.

What this proves: the request a 405B / 671B client builds (module paths at every depth, the plan,
the shipped code) runs on the module tree NDIF builds for that config. What it cannot: anything
about the real weights, GPU memory, or NDIF's queue (docs/ndif.md, "a 405B / 671B model").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import ndif_server
from superscopes_nn import Source, Target, load_model, resolve, run_rows, sweep_rows
from superscopes_nn.structure.info import eos_ids, model_info
from superscopes_nn.structure.models import wrap
from superscopes_nn.testing.tiny_models import tiny_tokenizer
from superscopes_nn.structure.twin import twin_model

pytestmark = pytest.mark.ndif_server

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "large_configs"
NAMES = sorted(p.name for p in CONFIGS.iterdir() if (p / "config.json").exists())
PROMPTS = ["Alexander the Great", "Pink Floyd"]
BACK = "The spouse of the performer of Imagine is"
DISALLOWED: dict = {}  # name -> modules outside NDIF's allowlist the request referenced


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NDIF_TIER_MAX_POOLS", "1")  # fourteen models one after the other: one warm sandbox runner
    srv = ndif_server.start(tmp_path_factory)
    mp.undo()
    yield srv
    srv.close()


def rows_for(model):
    n, spec = model_info(model).n_layers, model_info(model).spec
    site = "mlp_out" if spec.has_site("mlp_out") else "residual"
    fig3 = sweep_rows(model, PROMPTS, layers=[0, n // 2, n - 1], sites=[site], alphas=[1, 6])
    back = resolve(model, [(Source(BACK, layer=s), Target(BACK, layer=t, position=-1), None)
                           for s in (n - 1, n // 2) for t in (0, 1)])
    return fig3, back


def _ids(df, eos: set):
    """The rows' keys and token ids, cut at the twin's end-of-sequence ids: the twin's vocabulary is shrunk,
    so its eos ids are not the full model's, and the client (the full-size meta model) does not cut there."""
    out = df[["source_prompt", "source_layer", "target_layer", "alpha", "token_ids"]].to_dict("records")
    for r in out:
        ids = list(r["token_ids"])
        r["token_ids"] = ids[:next((i for i, t in enumerate(ids) if t in eos), len(ids))]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_full_size_request_runs_on_the_twin(name, server, tmp_path, monkeypatch):
    full, twin_dir = tmp_path / "full", tmp_path / "twin"
    full.mkdir()
    shutil.copy(CONFIGS / name / "config.json", full / "config.json")
    tok = tiny_tokenizer()
    tok.save_pretrained(full)
    meta = load_model(str(full), remote=True)  # the client: full size, meta weights
    hf = twin_model(meta._module.config)
    hf.save_pretrained(twin_dir)
    tok.save_pretrained(twin_dir)
    local = wrap(hf, tok)
    assert model_info(local).n_layers == model_info(meta).n_layers and model_info(local).spec == model_info(meta).spec
    ndif_server.seed_id_cache(full)
    ndif_server.seed_id_cache(twin_dir)
    fig3, back = rows_for(meta)
    kw = dict(max_new_tokens=3, max_batch_size=64)  # the default path: prefix reuse where the model has it
    eos = eos_ids(local)
    want = _ids(run_rows(local, [*rows_for(local)[0], *rows_for(local)[1]], **kw), eos)
    start = len(server.log)
    with monkeypatch.context() as mp:
        ndif_server.route(mp, server, keys={str(full): str(twin_dir)})
        got = _ids(run_rows(meta, [*fig3, *back], remote=True, **kw), eos)
    log = server.log[start:]
    assert len(log) == 1, f"{name}: {len(log)} requests for {len(fig3) + len(back)} rows"
    assert not log[0]["errors"], f"{name}: {log[0]['errors']}"
    assert log[0].get("sandbox_equal"), f"{name}: the sandbox saved other values than the trusted path"
    DISALLOWED[name] = log[0]["disallowed"]
    assert got[:len(fig3)] == want[:len(fig3)], f"{name}: Fig 3-shaped rows differ from the twin run locally"
    assert got[len(fig3):] == want[len(fig3):], f"{name}: back-patching rows differ from the twin run locally"
    assert {r["source_layer"] for r in got} >= {model_info(meta).n_layers - 1}  # the last layer was reached


def test_full_size_payloads_are_allowlisted():
    assert DISALLOWED, "the full-size requests did not run"
    bad = {name: d for name, d in DISALLOWED.items() if d}
    assert not bad, f"modules outside NDIF's allowlist: {bad}"
