"""Bad input: each case raises the exact error type with the bad value in the message,
through the Python API and through the CLI (exit 2, one line, no traceback)."""

import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superscopes_nn import Affine, Amplify, Source, Target, load_model, patchscope, sweep
from superscopes_nn.output.cli import main
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.specs import ENTITY_PROMPT
from superscopes_nn.structure.testing import tiny_model

import torch


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from superscopes_nn.structure.testing import save_tiny_checkpoint

    d = tmp_path_factory.mktemp("tiny")
    save_tiny_checkpoint(d, "llama")
    return str(d)


def _src(**kw):
    base = dict(prompt="Alexander the Great", layer=1, position=-1, site="residual")
    base.update(kw)
    return Source(**base)


API_CASES = [
    ("layer out of range", lambda m: patchscope(m, [(_src(layer=7), Target(), None)]), ValueError, "layer 7"),
    ("negative layer out of range", lambda m: patchscope(m, [(_src(layer=-9), Target(), None)]), ValueError, "-9"),
    ("target layer out of range", lambda m: patchscope(m, [(_src(), Target(layer=12), None)]), ValueError, "12"),
    ("position out of range", lambda m: patchscope(m, [(_src(position=40), Target(), None)]), ValueError, "40"),
    ("token not in prompt", lambda m: patchscope(m, [(_src(position="Smith"), Target(), None)]), ValueError, "Smith"),
    ("ambiguous token", lambda m: patchscope(m, [(_src(prompt="the cat and the dog", position="the"), Target(), None)]),
     ValueError, "ambiguous"),
    ("empty prompt", lambda m: patchscope(m, [(_src(prompt="  "), Target(), None)]), ValueError, "'  '"),
    ("target without placeholder", lambda m: patchscope(m, [(_src(), Target("The capital of France"), None)]),
     ValueError, "'x'"),
    ("alpha NaN", lambda m: sweep(m, "Pink Floyd", layers=[1], alphas=[float("nan")]), ValueError, "nan"),
    ("alpha inf", lambda m: Amplify(math.inf), ValueError, "inf"),
    ("alpha <= 0", lambda m: sweep(m, "Pink Floyd", layers=[1], alphas=[0.0]), ValueError, "0.0"),
    ("empty alpha list", lambda m: sweep(m, "Pink Floyd", layers=[1], alphas=[]), ValueError, "alpha"),
    ("empty layer list", lambda m: sweep(m, "Pink Floyd", layers=[], alphas=[1]), ValueError, "layer"),
    ("unknown site", lambda m: sweep(m, "Pink Floyd", layers=[1], sites=["mlp_output"]), ValueError, "mlp_output"),
    ("unknown model", lambda m: load_model("no-such-model-xyz"), ValueError, "no-such-model-xyz"),
    ("hidden sizes differ", lambda m: patchscope(m, [(_src(), Target(), None)], target_model=tiny_model("gpt2", hidden=32)),
     ValueError, "64"),
    ("affine shape", lambda m: patchscope(m, [(_src(), Target(), Affine(torch.zeros(3, 5)))]), ValueError, "(3, 5)"),
    ("max_new_tokens 0", lambda m: sweep(m, "Pink Floyd", layers=[1], max_new_tokens=0), ValueError, "0"),
    ("batch size 0", lambda m: sweep(m, "Pink Floyd", layers=[1], max_batch_size=0), ValueError, "0"),
    ("unsupported architecture", lambda m: __import__("superscopes_nn").arch_spec(type("C", (), {"model_type": "bert"})()),
     ValueError, "bert"),
]


@pytest.mark.parametrize("name,call,exc,needle", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(model, name, call, exc, needle):
    with pytest.raises(exc) as info:
        call(model)
    assert type(info.value) is exc
    assert needle in str(info.value), str(info.value)


def test_dataset_loader_bad_input(tmp_path):
    datasets = pytest.importorskip("superscopes_nn.data.datasets")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        datasets.load_entities(missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.jsonl"):
        datasets.load_entities(empty)


CLI_CASES = [
    (["explain", "Alexander the Great", "--layers", "0-9"], "layer 4 out of range"),
    (["explain", "Alexander the Great", "--layers", "a-b"], "a-b"),
    (["explain", "Alexander the Great", "--token", "Smith"], "Smith"),
    (["explain", "Alexander the Great", "--amps", "1,nan"], "nan"),
    (["explain", "Alexander the Great", "--amps", "1,-3"], "-3"),
    (["explain", "Alexander the Great", "--site", "mlp"], "'mlp'"),
    (["explain", "Alexander the Great", "--target-prompt", "The capital of France"], "placeholder"),
    (["explain", "Alexander the Great", "--remote", "maybe"], "maybe"),
    (["explain", "", "--layers", "0"], "''"),
]


@pytest.mark.parametrize("argv,needle", CLI_CASES, ids=[" ".join(c[0][2:]) or "empty" for c in CLI_CASES])
def test_cli_bad_input(model_dir, tmp_path, capsys, argv, needle):
    code = main(argv + ["--model", model_dir, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, err
    assert "Traceback" not in err


def test_cli_unknown_model_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "superscopes_nn.output.cli", "explain", "Pink Floyd", "--model",
                           "no-such-model-xyz", "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "no-such-model-xyz" in proc.stderr and "Traceback" not in proc.stderr


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grid=st.lists(st.tuples(st.integers(-4, 3), st.integers(-5, 4), st.integers(0, 3),
                               st.floats(0.1, 20.0, allow_nan=False)), min_size=1, max_size=6))
def test_random_grids_batched_equal_one_at_a_time(model, grid):
    patches = [(Source("Back to the Future", layer, pos, "mlp_out"), Target(ENTITY_PROMPT, layer=tl), Amplify(a))
               for layer, pos, tl, a in grid]
    from superscopes_nn.engine.resolver import resolve

    rows = resolve(model, patches)
    batched = run_rows(model, rows, max_new_tokens=3)
    single = run_rows(model, rows, max_new_tokens=3, max_batch_size=1)
    assert batched.token_ids.tolist() == single.token_ids.tolist()
