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
from superscopes_nn.testing.tiny_models import tiny_model

import torch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from superscopes_nn.testing.tiny_models import save_tiny_checkpoint

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
    ("affine shape", lambda m: patchscope(m, [(_src(), Target(), Affine(torch.zeros(3, 5)))]), ValueError, "[3, 5]"),
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
    (["explain", "Alexander the Great", "--position", "Smith"], "Smith"),
    (["explain", "Alexander the Great", "--alphas", "1,nan"], "nan"),
    (["explain", "Alexander the Great", "--alphas", "1,-3"], "-3"),
    (["explain", "Alexander the Great", "--sites", "mlp"], "'mlp'"),
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
    from superscopes_nn.engine.rows import resolve

    rows = resolve(model, patches)
    batched = run_rows(model, rows, max_new_tokens=3)
    single = run_rows(model, rows, max_new_tokens=3, max_batch_size=1)
    assert batched.token_ids.tolist() == single.token_ids.tolist()


# ------------------------------------------------------------------ issue 31: the last unclean inputs


def test_max_new_tokens_beyond_the_context_is_refused_naming_both(model, tmp_path):
    """Issue 31.4: a value past the context left after the prompt is refused before anything runs."""
    from superscopes_nn.engine.api import generate_plain
    from superscopes_nn.structure.info import model_info

    ctx = model_info(model).context
    n = len(model.tokenizer(ENTITY_PROMPT)["input_ids"])
    with pytest.raises(ValueError) as info:
        sweep(model, "Pink Floyd", layers=[1], max_new_tokens=10**9, run_dir=tmp_path / "run")
    assert str(info.value) == (f"max_new_tokens 1000000000 exceeds the context left after the prompt: "
                               f"{model_info(model).name} has a context of {ctx} tokens and the longest prompt takes "
                               f"{n}, so at most {ctx - n} new tokens fit")
    assert not (tmp_path / "run" / "config.json").exists()
    with pytest.raises(ValueError, match=f"max_new_tokens {ctx - n + 1} exceeds .* so at most {ctx - n} new"):
        sweep(model, "Pink Floyd", layers=[1], max_new_tokens=ctx - n + 1)
    assert len(sweep(model, "Pink Floyd", layers=[1], max_new_tokens=2)) == 1  # in range: runs
    m = len(model.tokenizer("Pink Floyd")["input_ids"])
    with pytest.raises(ValueError, match=f"context of {ctx} tokens and the longest prompt takes {m}, so at most "
                                         f"{ctx - m} new tokens fit"):
        generate_plain(model, ["Pink Floyd"], max_new_tokens=ctx - m + 1)


def test_cli_max_new_tokens_beyond_the_context_is_one_line(model_dir, tmp_path, capsys):
    code = main(["explain", "Pink Floyd", "--layers", "1", "--alphas", "1", "--max-new-tokens", "1000000000",
                 "--model", model_dir, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: max_new_tokens 1000000000 exceeds the context left after "
                                                   "the prompt:")


def test_config_json_that_is_not_an_object_is_one_line(model_dir, tmp_path, capsys):
    """Issue 31.5: a run directory's or a checkpoint's config.json holding valid JSON that is not an object."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("[1, 2]")
    argv = ["explain", "Pink Floyd", "--layers", "1", "--alphas", "1", "--max-new-tokens", "2", "--no-progress",
            "--out", str(out), "--resume"]
    assert main(argv + ["--model", model_dir]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"error: cannot resume {out}: config.json must hold a JSON object, got list [1, 2]")
    import shutil

    bad = tmp_path / "ckpt"
    shutil.copytree(model_dir, bad)
    (bad / "config.json").write_text('"llama"')
    with pytest.raises(ValueError) as info:
        load_model(str(bad))
    assert str(info.value) == f"cannot load model {str(bad)!r}: {bad / 'config.json'} must hold a JSON object, got str"


def test_prompt_that_is_not_valid_text_is_one_line(model, model_dir, tmp_path):
    """Issue 31.5: a lone surrogate in an API prompt, a Latin-1 byte in a CLI prompt (Python reads it as one)."""
    with pytest.raises(ValueError) as info:
        patchscope(model, [(_src(prompt="Caf\ud800 au lait"), Target(), None)])
    assert str(info.value) == ("prompt 'Caf\\ud800 au lait' is not valid text: character 3 is the lone surrogate "
                               "'\\ud800' (a byte that is not UTF-8, e.g. Latin-1 in a command-line argument?); "
                               "pass UTF-8 text")
    with pytest.raises(ValueError, match="prompt 'x: \\\\udcff' is not valid text"):
        patchscope(model, [(_src(), Target("x: \udcff"), None)])
    proc = subprocess.run([sys.executable.encode(), b"-m", b"superscopes_nn.output.cli", b"explain", b"Caf\xe9",
                           b"--layers", b"1", b"--alphas", b"1", b"--model", model_dir.encode(),
                           b"--out", str(tmp_path / "run").encode(), b"--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: source prompt 'Caf\\udce9' is not valid text: character 3 is the lone surrogate '\\udce9' (a byte "
        "that is not UTF-8, e.g. Latin-1 in a command-line argument?); pass UTF-8 text")


def test_fn_mapping_of_the_wrong_shape_is_refused_before_any_row_runs(model, tmp_path):
    """Issue 31.5: the mapping is tried on one source-sized vector first; no chunk runs, nothing is stored."""
    from superscopes_nn import Fn
    from superscopes_nn.structure.info import model_name

    half = Fn(lambda v: v[: v.shape[0] // 2], name="half")
    with pytest.raises(ValueError) as info:
        sweep(model, ["Pink Floyd", "Star Wars"], layers=[0, 1, 2], mapping=half, max_batch_size=1,
              run_dir=tmp_path / "run")
    assert str(info.value) == ("mapping 'half' returns shape [32] for a [64] source vector; the target model "
                               f"{model_name(model)} needs a [64] tensor (its hidden size)")
    assert not (tmp_path / "run").exists()

    def broken(v):
        raise KeyError("w")

    with pytest.raises(ValueError, match=r"^mapping 'broken' fails on a \[64\] float32 vector on cpu \(the source "
                                         r"vector it gets per row\): KeyError: 'w'$"):
        patchscope(model, [(_src(), Target(), Fn(broken, name="broken"))])
    good = Fn(lambda v: 2 * v, name="double")
    assert len(patchscope(model, [(_src(), Target(), good)], max_new_tokens=2)) == 1


@pytest.mark.parametrize("spec,want", [("-3--1", [-3, -2, -1]), ("-2,-1", [-2, -1]), ("-1", [-1])])
def test_cli_negative_layer_lists_and_ranges(model_dir, tmp_path, spec, want):
    """Issue 31.5: ``--layers -3--1`` / ``--layers -2,-1`` (argparse read them as options)."""
    from superscopes_nn.core.store import load_run
    from superscopes_nn.structure.info import model_info

    out = tmp_path / "run"
    assert main(["explain", "Pink Floyd", "--layers", spec, "--alphas", "1", "--max-new-tokens", "1", "--model",
                 model_dir, "--out", str(out), "--no-progress"]) == 0
    n = model_info(load_model(model_dir)).n_layers
    assert load_run(out)[0].source_layer.tolist() == [n + k for k in want]
