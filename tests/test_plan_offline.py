"""``superscopes plan`` on what ships, offline, and its byte figures against a real run (issue 42).

* every shipped large config (``tests/fixtures/large_configs``, 14 folders of ``config.json`` only) plans
  offline (``HF_HUB_OFFLINE=1``): exit 0, one ``note:`` line naming the stand-in tokenizer, the plan table;
* the meta model is built in the config's own dtype (bfloat16 for all 14), ``--dtype`` overrides it, and a
  float32 plan's result bytes exceed the bfloat16 one's (each source vector costs 4 bytes a value, not 2);
* the plan's result bytes bound what the run really returns on the config's structural twin in the config's
  own dtype (bfloat16): estimate >= real and <= 2x real per request (the bound counts every token id a row
  may generate; a row that stops early returns fewer);
* a folder without a tokenizer is refused by ``load_model(..., remote=True)`` in one whole sentence naming
  the files it looked for (not transformers' message cut at its colon); an unreachable hub with no cache
  never suggests ``HF_HUB_OFFLINE=1`` (which would only fail next on the missing config).
"""

import io
from pathlib import Path

import pytest
import torch

from superscopes_nn import load_model, sweep_rows
from superscopes_nn.core.options import RunOptions
from superscopes_nn.engine.chunks import run_chunks
from superscopes_nn.engine.plan import batching, greedy_kwargs, plan, plan_requests
from superscopes_nn.output.cli import main as cli_main
from superscopes_nn.output.plan_cli import build

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "large_configs"
SHIPPED = sorted(p.name for p in CONFIGS.iterdir() if (p / "config.json").is_file())
PROMPTS = ["Alexander the Great", "Pink Floyd", "Star Wars"]


def test_all_fourteen_configs_ship():
    assert len(SHIPPED) == 14


@pytest.mark.parametrize("name", SHIPPED)
def test_plan_works_offline_on_every_shipped_config(name, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["plan", str(CONFIGS / name), "--prompts", *PROMPTS, "--layers", "1-3", "--amps", "1,6"]) == 0
    cap = capsys.readouterr()
    notes = [line for line in cap.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "holds no tokenizer" in notes[0] and "upper bounds" in notes[0]
    out = cap.out.splitlines()
    assert out[0].startswith(f"plan: {CONFIGS / name}, 18 rows") and "within NDIF's limits" in out[0]


def test_the_meta_model_is_built_in_the_configs_dtype(capsys):
    d = str(CONFIGS / "Llama-3.1-405B")
    auto, f32 = build(d), build(d, "float32")
    assert auto._module.dtype == torch.bfloat16 and f32._module.dtype == torch.float32
    rows = {m: sweep_rows(m, PROMPTS, layers=[1, 2], sites=["mlp_out"], alphas=[1, 6]) for m in (auto, f32)}
    half, full = (plan(m, rows[m], max_new_tokens=10).requests[0].result for m in (auto, f32))
    vectors = len(PROMPTS) * 2 * 16384  # one source vector per (prompt, layer), d = 16384
    assert full - half >= vectors * 2  # the float32 plan counts 2 more bytes per value
    assert cli_main(["plan", d, "--prompts", "x", "--dtype", "float64"]) == 2  # argparse refuses it


@pytest.mark.parametrize("name", ["Llama-3.1-405B", "DeepSeek-V3"])
def test_result_bytes_bound_the_real_result_on_the_twin_in_its_dtype(name):
    from superscopes_nn.structure.models import wrap
    from superscopes_nn.testing.tiny_models import tiny_tokenizer
    from superscopes_nn.structure.twin import twin_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(CONFIGS / name))
    assert config.dtype == torch.bfloat16
    model = wrap(twin_model(config).to(config.dtype), tiny_tokenizer())
    rows = sweep_rows(model, PROMPTS, layers=[1, 2, 3], sites=["mlp_out"], alphas=[1, 3, 6])
    opts = RunOptions(max_new_tokens=4, max_batch_size=8, chunks_per_request=2)
    p = plan(model, rows, opts)
    grouped = plan_requests(model, rows, batching=batching(model, opts), gen_kwargs=greedy_kwargs(model, 4))
    known = {}
    assert len(p.requests) == len(grouped) >= 2
    for planned, request in zip(p.requests, grouped):
        given = {k: known[k] for k in request.given}
        outs, used = run_chunks(model, list(request.chunks), vectors=given)
        known.update(used)
        assert all(v.dtype == torch.bfloat16 for v in used.values())  # the vectors travel in the model's dtype
        buf = io.BytesIO()
        torch.save([outs, dict(used)], buf)
        real = len(buf.getvalue())
        assert real <= planned.result <= 2 * real, (real, planned.result)


def test_a_folder_without_a_tokenizer_is_one_whole_sentence(tmp_path):
    d = tmp_path / "Qwen2.5-72B"
    d.mkdir()
    (d / "config.json").write_text((CONFIGS / "Qwen2.5-72B" / "config.json").read_text())
    with pytest.raises(ValueError) as err:
        load_model(str(d), remote=True)
    msg = str(err.value)
    assert "holds no tokenizer" in msg and "tokenizer.json" in msg and not msg.rstrip().endswith(":")


def test_an_unreachable_hub_never_offers_a_second_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from superscopes_nn.structure import hub

    monkeypatch.setattr(hub, "hub_endpoint", lambda: "http://127.0.0.1:9")
    assert cli_main(["plan", "example-org/not-cached-model", "--prompts", "Pink Floyd"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot load model 'example-org/not-cached-model'") and len(err.splitlines()) == 1
    assert "HF_HUB_OFFLINE" not in err and "local folder" in err
