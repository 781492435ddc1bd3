"""The first thing a newcomer runs is the official Superscopes protocol (issue 32).

- The README's five-minute tour, extracted from README.md and run as written on a tiny random model
  (only ``load_model`` is substituted): an ``mlp_out`` source is written into the target's hidden
  state (``target_site == "residual"``), and every row's tokens equal a plain-HF forward hook that
  replaces the target layer's output (:mod:`superscopes_nn.testing.hook_reference`).
- ``superscopes explain --sites mlp_out`` does the same by default, says so in its header line and
  prints the chance line under its table; ``--target-site same`` is the same-site write (the hook
  reference on the target's MLP output), and the two protocols give different texts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import superscopes_nn
from superscopes_nn import ENTITY_PROMPT
from superscopes_nn.output.cli import main
from superscopes_nn.testing.hook_reference import hf_patch_generate
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint, tiny_model

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_NEW = 4


def tour_code() -> str:
    """The first ```python block under the README's "## Five-minute tour" heading."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Five-minute tour\n(.*?)(?=^## )", text, flags=re.M | re.S)
    assert section, "README.md has no '## Five-minute tour' section"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), flags=re.M | re.S)
    assert block, "the five-minute tour has no ```python block"
    return block.group(1)


def hook_ids(hf, tok, row, target_site, max_new_tokens=MAX_NEW):
    """The independent reference: one HF generate with a forward hook on ``target_site``."""
    return hf_patch_generate(hf, hf, tok(row.source_prompt)["input_ids"], row.source_position, row.source_layer,
                             row.site, tok(row.target_prompt)["input_ids"], row.target_position, row.target_layer,
                             lambda v: row.alpha * v, max_new_tokens, tgt_site=target_site)


def test_readme_tour_runs_the_official_protocol(monkeypatch):
    model = tiny_model("gemma3_text", seed=3, n_layers=9)  # the tour sweeps layers 0-8
    loads = []

    def fake_load_model(*args, **kwargs):
        loads.append((args, kwargs))
        return model

    monkeypatch.setattr(superscopes_nn, "load_model", fake_load_model)
    ns: dict = {}
    exec(compile(tour_code(), str(README), "exec"), ns)  # the tour as written (10 new tokens, the default)
    assert loads == [((), {})], "the tour's load_model() was not the substituted one"
    df = ns["df"]
    assert isinstance(df, pd.DataFrame) and len(df) == 54  # the tour says 54 rows
    assert set(df.site) == {"mlp_out"} and set(df.target_site) == {"residual"}
    assert sorted(df.source_layer.unique()) == list(range(9)) and sorted(df.alpha.unique()) == [1, 3, 6, 9, 12, 15]
    tok = model.tokenizer
    assert set(df.target_position) == {len(tok(ENTITY_PROMPT)["input_ids"]) - 1}  # the last target token
    hf = model._module
    same_site_differs = False
    alphas = sorted(df.alpha.unique())
    # one row per layer, the alphas in turn (a reference generate costs ~0.4 s; all 54 rows would take a minute)
    for layer in range(9):
        row = next(df[(df.source_layer == layer) & (df.alpha == alphas[layer % len(alphas)])].itertuples(index=False))
        got = list(row.token_ids)
        assert got == hook_ids(hf, tok, row, "residual", 10), (row.source_layer, row.alpha)
        same_site_differs = same_site_differs or got != hook_ids(hf, tok, row, "mlp_out", 10)
    assert same_site_differs, "the hidden-state and same-site writes gave the same tokens on every row"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_explain")
    hf, tok = save_tiny_checkpoint(d, "gemma3_text", seed=5)
    return str(d), hf.eval(), tok


def explain(model_dir, out, *extra):
    return ["explain", "Alexander the Great", "--position", "Great", "--sites", "mlp_out", "--layers", "1,3",
            "--alphas", "1,6,15", "--model", model_dir, "--max-new-tokens", str(MAX_NEW), "--out", str(out),
            "--no-progress", *extra]


def test_explain_writes_the_hidden_state_by_default(checkpoint, tmp_path, capsys):
    model_dir, hf, tok = checkpoint
    runs = {}
    for name, extra, target_site, hook_site in (("official", (), "residual", "residual"),
                                                ("same", ("--target-site", "same"), "mlp_out", "mlp_out")):
        out = tmp_path / name
        assert main(explain(model_dir, out, *extra)) == 0
        printed = capsys.readouterr().out.splitlines()
        df = pd.read_parquet(out / "results.parquet")
        assert len(df) == 6 and set(df.target_site) == {target_site}
        assert json.loads((out / "config.json").read_text())["target_site"] == (extra[1] if extra else "residual")
        header = printed[0]
        if name == "official":
            assert header.startswith("protocol: official Superscopes") and "hidden state" in header
        else:
            assert header.startswith("protocol: same-site") and "module='mlp'" in header
        chance = [l for l in printed if "chance line" in l]
        assert len(chance) == 1 and re.match(r"\d+ of 6 cells have cosine > 0\.3 to the prompt; chance line \d+\.\d",
                                            chance[0]), printed
        assert printed.index(chance[0]) > printed.index(next(l for l in printed if l.startswith("'Alexander")))
        for row in df.itertuples(index=False):
            assert list(row.token_ids) == hook_ids(hf, tok, row, hook_site), (name, row.source_layer, row.alpha)
        runs[name] = df.token_ids.map(list).tolist()
    assert runs["official"] != runs["same"], "the two protocols gave the same tokens on every row"


def test_explain_residual_source_and_resume_keep_the_target_site(checkpoint, tmp_path, capsys):
    model_dir, _, _ = checkpoint
    out = tmp_path / "run"
    argv = explain(model_dir, out)
    argv[argv.index("mlp_out")] = "residual"
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("protocol: official Superscopes: α × residual")
    assert set(pd.read_parquet(out / "results.parquet").target_site) == {"residual"}
    # resuming with the other protocol is refused and names the setting
    assert main(argv + ["--resume", "--target-site", "same"]) == 2
    assert "target_site" in capsys.readouterr().err


def test_bad_target_site_is_one_line_before_the_model_loads(tmp_path, capsys):
    assert main(explain(str(tmp_path / "no_model_here"), tmp_path / "run", "--target-site", "hs")) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "bad --target-site 'hs'" in err
