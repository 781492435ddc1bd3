"""Reliability suite, part 2 (issue 20): odd inputs, each accepted (the data asserted) or refused
with one line naming the value; CLI output-directory faults refused before the model loads;
remote misconfiguration named; duplicates warned about; over-long prompts refused; the demo reruns."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from superscopes_nn import Source, Target, load_model, patchscope, sweep
from superscopes_nn.output import cli
from superscopes_nn.core import dirlock
from superscopes_nn.structure import models
from superscopes_nn.output.cli import main
from superscopes_nn.testing.tiny_models import tiny_hf_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
RUN = dict(max_new_tokens=2, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny9")
    hf, tok = tiny_hf_model("llama", seed=1, n_layers=9)  # the demo sweeps layers 0-8
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory):
    """A tiny model with a 16-token context."""
    d = tmp_path_factory.mktemp("tiny_ctx16")
    hf, tok = tiny_hf_model("llama", seed=2)
    hf.config.max_position_embeddings = 16
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def one_line(text: str) -> str:
    assert "Traceback" not in text, text
    errors = [l for l in text.strip().splitlines() if l.startswith("error: ")]
    assert len(errors) == 1, text
    return errors[0]


# ------------------------------------------------------------------ the Python API: accepted

ACCEPTED = [  # (name, call, check on the frame)
    ("alphas=np.array([1, 3])", lambda m: sweep(m, "Pink Floyd", layers=[1], alphas=np.array([1, 3]), **RUN),
     lambda df: df.alpha.tolist() == [1.0, 3.0]),
    ("layers=np.arange(2)", lambda m: sweep(m, "Pink Floyd", layers=np.arange(2), **RUN),
     lambda df: df.source_layer.tolist() == [0, 1]),
    ("layers=3", lambda m: sweep(m, "Pink Floyd", layers=3, **RUN), lambda df: df.source_layer.tolist() == [3]),
    ("numpy scalars", lambda m: sweep(m, "Pink Floyd", layers=np.int64(2), alphas=np.float32(3), token=np.int64(-1),
                                      max_new_tokens=np.int64(2), max_batch_size=np.int32(4), progress=False),
     lambda df: (df.source_layer.tolist(), df.alpha.tolist()) == ([2], [3.0])),
    ('sites="mlp_out"', lambda m: sweep(m, "Pink Floyd", layers=1, sites="mlp_out", **RUN),
     lambda df: df.site.tolist() == ["mlp_out"]),
    ("Source(layer=np.int64)", lambda m: patchscope(m, [(Source("Pink Floyd", np.int64(1)), Target())], max_new_tokens=2),
     lambda df: df.source_layer.tolist() == [1]),
]


@pytest.mark.parametrize("name,call,check", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_odd_input_accepted(model, name, call, check):
    df = call(model)
    assert check(df), df[["source_layer", "site", "alpha"]]
    assert df.interpretation.notna().all() and df.error.isna().all()


# ------------------------------------------------------------------ the Python API: refused in one line


def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


REFUSED = [  # (name, call(model, tmp_path), exception type, the exact message)
    ("1-tuple patch", lambda m, t: patchscope(m, [(Source("Pink Floyd", 1),)]), ValueError,
     "a patch is (Source, Target) or (Source, Target, mapping), got (Source(prompt='Pink Floyd', layer=1, "
     "position=-1, site='residual'),)"),
    ('dtype="float99"', lambda m, t: load_model("gemma-3-270m", dtype="float99"), ValueError,
     "unknown dtype 'float99': use a torch dtype or its name, e.g. float32, bfloat16, float16"),
    ('device="cuda" without a GPU', lambda m, t: load_model("gemma-3-270m", device="cuda"), ValueError,
     "device 'cuda': no CUDA GPU is available here; use device=None (CPU)"),
    ('device="gpu0"', lambda m, t: load_model("gemma-3-270m", device="gpu0"), ValueError,
     "unknown device 'gpu0': use e.g. 'cpu', 'cuda', 'cuda:0' or 'mps'"),
    ("a missing local path", lambda m, t: load_model(str(t / "no" / "model")), FileNotFoundError, "{t}/no/model"),
    ("a missing relative path", lambda m, t: load_model("./no/such/model"), FileNotFoundError,
     "model path not found: './no/such/model' (no such directory)"),
    ('remote="garbage"', lambda m, t: sweep(m, "Pink Floyd", layers=1, remote="garbage", run_dir=t / "r", **RUN),
     ValueError, "remote must be False, True, 'local' or an http(s):// host URL, got 'garbage'"),
    ("remote host, in-memory model", lambda m, t: sweep(m, "Pink Floyd", layers=1, remote="https://127.0.0.1:9",
                                                        run_dir=t / "r", **RUN),
     ValueError, "cannot run 'LlamaForCausalLM' on https://127.0.0.1:9: a remote run sends the model's hub id"),
    ("alphas with a nan", lambda m, t: sweep(m, "Pink Floyd", layers=1, alphas=np.array([1, np.nan]), **RUN),
     ValueError, "amplification factor must be a finite number > 0, got nan"),
    ("2-D layers", lambda m, t: sweep(m, "Pink Floyd", layers=np.array([[0, 1]]), **RUN), ValueError,
     "layer must be an int, got [0, 1]"),
    ("layers=[True]", lambda m, t: sweep(m, "Pink Floyd", layers=[True], **RUN), ValueError,
     "layer must be an int, got True"),
    ('layers="3"', lambda m, t: sweep(m, "Pink Floyd", layers="3", **RUN), ValueError, "layer must be an int, got '3'"),
    ("max_batch_size=2.5", lambda m, t: sweep(m, "Pink Floyd", layers=1, max_batch_size=2.5, **RUN), ValueError,
     "max_batch_size must be an int, got 2.5"),
    ('sites="m"', lambda m, t: sweep(m, "Pink Floyd", layers=1, sites="m", **RUN), ValueError, "unknown site 'm'"),
]


@pytest.mark.parametrize("name,call,exc,message", REFUSED, ids=[c[0] for c in REFUSED])
def test_odd_input_refused_in_one_line(model, tmp_path, monkeypatch, name, call, exc, message):
    _no_gpu(monkeypatch)
    with pytest.raises(exc) as info:
        call(model, tmp_path)
    text = str(info.value)
    assert type(info.value) is exc and "\n" not in text
    assert message.format(t=tmp_path) in text, text
    assert not (tmp_path / "r" / "config.json").exists()  # a failed (remote) start leaves no config behind


def test_prompt_longer_than_the_context_names_both_lengths(short_dir):
    m = load_model(short_dir)
    prompt = "Alexander the Great was a king of Macedon. " * 3
    n = len(m.tokenizer(prompt)["input_ids"])
    assert n > 16
    with pytest.raises(ValueError, match=rf"^prompt of {n} tokens exceeds the context length 16 of "):
        sweep(m, prompt, layers=1, **RUN)


def test_duplicate_layers_and_alphas_are_dropped_with_a_warning(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = sweep(model, "Pink Floyd", layers=[1, 1], alphas=np.array([1, 1]), **RUN)
    assert len(df) == 1
    said = [str(w.message) for w in caught if "repeated" in str(w.message)]
    assert said == ["repeated layer values dropped: [1, 1] -> [1]", "repeated alpha values dropped: [1.0, 1.0] -> [1.0]"]


# ------------------------------------------------------------------ the CLI


def _explain(model_dir, out, *extra):
    return ["explain", "Pink Floyd", "--layers", "1", "--alphas", "1", "--max-new-tokens", "2", "--no-progress",
            "--model", model_dir, "--out", str(out), *extra]


def _no_model_load(monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))


def _file(tmp_path):
    (tmp_path / "f").write_text("x")
    return tmp_path / "f"


def _unwritable(tmp_path, monkeypatch):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: simulate the refusal the kernel gives everyone else
        monkeypatch.setattr(dirlock.tempfile, "mkstemp", lambda **k: (_ for _ in ()).throw(
            PermissionError(errno.EACCES, "Permission denied")))
    return d / "run"


def _full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(dirlock.os, "write", lambda fd, data: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    return tmp_path / "run"


OUT_FAULTS = [  # (name, make the --out path, the exact error line)
    ("--out names a file", lambda t, mp: _file(t), "error: run directory {t}/f exists and is a file; choose a directory"),
    ("--out under a file", lambda t, mp: _file(t) / "run",
     "error: cannot create run directory {t}/f/run: {t}/f is a file"),
    ("--out unwritable", _unwritable, "error: cannot write run directory {t}/ro/run (in {t}/ro): Permission denied"),
    ("--out on a full disk", _full_disk, "error: cannot write run directory {t}/run (in {t}): No space left on device"),
]


@pytest.mark.parametrize("name,make,line", OUT_FAULTS, ids=[c[0] for c in OUT_FAULTS])
def test_cli_output_dir_fault_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, name, make, line):
    out = make(tmp_path, monkeypatch)
    _no_model_load(monkeypatch)
    assert main(_explain("unused-model", out)) == 2
    assert one_line(capsys.readouterr().err) == line.format(t=tmp_path)
    assert not list(tmp_path.rglob("config.json")) and not list(tmp_path.rglob(".probe-*"))


CLI_REFUSED = [  # (name, extra argv, needle in the one error line), all before any model loads
    ("--max-new-tokens 0", ["--max-new-tokens", "0"], "error: max_new_tokens must be an int >= 1, got 0"),
    ("--max-batch-size 0", ["--max-batch-size", "0"], "error: max_batch_size must be an int >= 1, got 0"),
    ("--sites mlp_out,mlp", ["--sites", "mlp_out,mlp"], "error: unknown site 'mlp'"),
    ("--alphas 1,0", ["--alphas", "1,0"], "error: bad --alphas '1,0': amplification factor must be a finite number > 0, got 0.0"),
    ("--remote garbage", ["--remote", "garbage"], "error: bad --remote 'garbage': use false, local, true or an https:// host"),
]


@pytest.mark.parametrize("name,extra,needle", CLI_REFUSED, ids=[c[0] for c in CLI_REFUSED])
def test_cli_bad_value_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys, name, extra, needle):
    _no_model_load(monkeypatch)
    assert main(_explain("unused-model", tmp_path / "run", *extra)) == 2
    assert one_line(capsys.readouterr().err).startswith(needle)
    assert not (tmp_path / "run").exists()


def test_cli_remote_host_with_a_local_model_names_the_host(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_explain(model_dir, out, "--remote", "https://127.0.0.1:9")) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot run '{model_dir}' on https://127.0.0.1:9: a remote run sends the model's "
                           f"hub id, and '{model_dir}' has none NDIF can look up")
    assert not (out / "config.json").exists()


def test_cli_remote_true_offline_is_one_line(model_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "superscopes_nn.output.cli", *_explain(model_dir, out, "--remote", "true")],
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    # the meta model builds from the local directory; the run is refused before anything is sent:
    # a remote run needs the model's hub id, which a local directory does not have
    assert line.startswith(f"error: cannot run '{model_dir}' on ") and "hub id" in line, line
    assert not (out / "config.json").exists()


def test_cli_remote_host_builds_meta_weights(model_dir, tmp_path, capsys, monkeypatch):
    """Issue 31.3: ``--remote https://HOST`` loads the model on meta weights, as ``--remote true`` does."""
    built = []
    real = models.load_model

    def spy(name, **kw):
        built.append(real(name, **kw))
        return built[-1]

    monkeypatch.setattr(models, "load_model", spy)
    assert main(_explain(model_dir, tmp_path / "run", "--remote", "https://127.0.0.1:9")) == 2
    one_line(capsys.readouterr().err)  # no hub id for a local directory: refused before anything is sent
    assert len(built) == 1 and {str(p.device) for p in built[0]._module.parameters()} == {"meta"}


HUB_CHECK = r"""
import json, sys, time, warnings
from superscopes_nn import load_model
from superscopes_nn.engine.rows import sweep_rows
from superscopes_nn.engine.run import run_rows
from superscopes_nn.testing.tiny_models import tiny_model

ndif, out = sys.argv[1], {}
t0 = time.monotonic()
try:
    load_model("nobody/nothing", remote=True)
except ValueError as err:
    out["load"] = [str(err), time.monotonic() - t0]
model = tiny_model("llama")
model.repo_id = "superscopes/tiny-llama"
rows = sweep_rows(model, ["Pink Floyd"], layers=[1])
sleeps, t0 = [], time.monotonic()
try:
    run_rows(model, rows, max_new_tokens=2, remote=ndif, sleep=sleeps.append)
except Exception as err:
    out["run"] = [type(err).__name__, str(err), time.monotonic() - t0, sleeps]
print(json.dumps(out))
"""


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_remote_with_no_hub_names_the_hub_at_once(tmp_path):
    """Issue 31.3: with no network (the hub a closed local port, HF_HUB_OFFLINE unset) the meta build
    and the model-id lookup fail in seconds, naming the hub, never NDIF, and nothing is retried."""
    hub, ndif = f"http://127.0.0.1:{_closed_port()}", f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub, HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-c", HUB_CHECK, ndif], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    msg, took = got["load"]
    assert msg.startswith(f"cannot load model 'nobody/nothing' for remote use: its config is not in the local "
                          f"cache, and the Hugging Face hub at {hub} could not be reached (ConnectError:"), msg
    # issue 42: no HF_HUB_OFFLINE=1 hint here (with no cached config it would only lead to a second error)
    assert msg.endswith("connect to the hub, or pass a local folder holding its config.json and tokenizer"), msg
    assert took < 15, took  # one try with a short timeout, not huggingface_hub's retries (~35 s per file)
    kind, msg, took, sleeps = got["run"]
    assert kind == "HubUnreachable" and msg.startswith(
        f"could not reach the Hugging Face hub at {hub} to look up the model id 'superscopes/tiny-llama' "
        "(ConnectError:"), msg
    assert f"NDIF at {ndif} was not contacted" in msg and took < 15 and sleeps == []  # no NDIF retries


def test_a_hub_failure_inside_a_remote_call_is_not_blamed_on_ndif():
    """Issue 31.3: an httpx error on the hub's URL (nnsight's model-key lookup) names the hub."""
    import httpx
    from huggingface_hub import constants

    from superscopes_nn.remote.errors import classify

    url = f"{constants.ENDPOINT}/api/models/meta-llama/Llama-3.1-8B"
    err = httpx.ConnectError("[Errno -2] Name or service not known", request=httpx.Request("GET", url))
    failure = classify(err, host="https://api.ndif.us")
    assert failure.kind == "fix" and failure.message == (
        f"could not reach the Hugging Face hub ({url}: ConnectError: [Errno -2] Name or service not known) to look "
        "up the model id; NDIF at https://api.ndif.us was not contacted: check the network, or set HF_HUB_OFFLINE=1")


def test_cli_duplicates_are_one_row_and_one_warning_line_each(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _explain(model_dir, out)
    argv[argv.index("--layers") + 1], argv[argv.index("--alphas") + 1] = "1,1", "1,1"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: repeated layer values dropped: [1, 1] -> [1]" in err.splitlines()
    assert "warning: repeated alpha values dropped: [1.0, 1.0] -> [1.0]" in err.splitlines()
    assert len((out / "rows.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "config.json").read_text())["layers"] == [1]
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_cli_prompt_longer_than_the_context(short_dir, tmp_path, capsys):
    argv = _explain(short_dir, tmp_path / "run")
    argv[1] = "Alexander the Great was a king of Macedon. " * 3
    assert main(argv) == 2
    assert "exceeds the context length 16 of" in one_line(capsys.readouterr().err)


def test_demo_twice_in_one_folder(model_dir, tmp_path, monkeypatch, capsys):
    """The README's main command, ``superscopes demo``, reruns in the same folder (it resumes its own dir)."""
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--model", model_dir]) == 0
    run = tmp_path / cli.demo_dir(model_dir)
    rows = (run / "rows.jsonl").read_bytes()
    first = capsys.readouterr().out
    assert len(rows.splitlines()) == 42 and (run / "report.html").exists()  # layers 1-7 x 6 alphas
    assert main(["demo", "--model", model_dir]) == 0  # the second run: nothing recomputed
    assert main(["demo", "--model", model_dir, "--resume"]) == 0  # and --resume is accepted
    again = capsys.readouterr().out
    assert (run / "rows.jsonl").read_bytes() == rows
    assert again.count("'Alexander the Great' [mlp_out]") == 2 and first.split("\nchosen")[0] in again
    assert "chance line" in first and "report:" in first
    assert cli.demo_dir(None) == Path("runs/demo")
