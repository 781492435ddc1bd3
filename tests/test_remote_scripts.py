"""Every registered paper script with ``--remote`` on a full-size config: meta weights only, or a refusal first.

* in-process, per script (``experiments.EXPERIMENTS``): ``main([... --model DIR --remote ...])`` with DIR a
  published full-size config (Llama-3.1-405B) and ``superscopes_nn.load_model`` replaced by a recorder that
  stops the run at its first load: the first load is ``load_model(DIR, remote=True)`` (meta weights), never
  a local-weights load; a script that cannot run on NDIF (:data:`REFUSED`) refuses in one line naming the
  step, with no load at all;
* end to end, in a fresh interpreter: ``superscopes run NAME --remote`` and ``python -m experiments NAME
  --remote`` on the same DIR (meta build, then the hub-id lookup of a local path) answer the library's
  refusal as one ``error:`` line with status 2 and no traceback;
* one parse of a remote value (``check_remote``): ``remote_host`` and ``RunOptions`` agree with it, and
  ``--remote`` is spelt the same in the scripts and in ``superscopes explain``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import experiments
import superscopes_nn
from superscopes_nn.core.options import RunOptions, add_remote_argument, parse_remote
from superscopes_nn.core.validate import check_remote
from superscopes_nn.remote.errors import remote_host

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "fixtures" / "large_configs" / "Llama-3.1-405B"
REFUSED = {"persona_control": "fine-tuning the taught model"}
"""Scripts that need local weights for a step, and the step their refusal names."""


class StopAtLoad(Exception):
    pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from superscopes_nn.testing.tiny_models import tiny_tokenizer

    d = tmp_path_factory.mktemp("large") / "Llama-3.1-405B"
    d.mkdir()
    shutil.copy(CONFIG / "config.json", d / "config.json")
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture
def loads(monkeypatch):
    calls = []

    def recorder(name=None, *args, remote=False, **kw):
        calls.append((name, remote))
        raise StopAtLoad

    monkeypatch.setattr(superscopes_nn, "load_model", recorder)
    return calls


@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_remote_loads_meta_weights_or_refuses_first(name, model_dir, loads, tmp_path, capsys):
    argv = ["--model", str(model_dir), "--remote", "--limit", "1", "--out", str(tmp_path / "out")]
    if name in REFUSED:
        with pytest.raises(ValueError) as err:
            experiments.run(name, argv)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("--remote: ") and REFUSED[name] in msg, msg
        assert loads == [], f"{name} loaded {loads} before refusing --remote"
        return
    with pytest.raises(StopAtLoad):
        experiments.run(name, argv)
    assert loads[:1] == [(str(model_dir), True)], f"{name}: first load {loads}, not meta weights of {model_dir}"


@pytest.mark.parametrize("remote, loaded", [(False, False), ("local", False), (True, True), ("https://h.example", True)])
def test_load_builds_meta_weights_only_for_ndif(remote, loaded, loads, model_dir):
    from experiments.common import load

    with pytest.raises(StopAtLoad):
        load(argparse.Namespace(model=str(model_dir), remote=remote))
    assert loads == [(str(model_dir), loaded)]


@pytest.mark.parametrize("command", [[str(ROOT / ".venv" / "bin" / "superscopes"), "run"],
                                     [sys.executable, "-m", "experiments"]])
def test_a_refusal_is_one_error_line_with_status_2(command, model_dir, tmp_path):
    if not Path(command[0]).exists():
        command = [sys.executable, "-m", "superscopes_nn.output.cli", "run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*command, "superscopes_fig3", "--model", str(model_dir), "--remote", "--limit", "1",
                           "--layers", "0", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith("error: cannot run "), lines
    assert "meta weights" in proc.stdout and "hub id" in lines[0]


@pytest.mark.parametrize("given, value, ndif, host", [
    (False, False, False, None), (None, False, False, None), ("local", "local", False, None),
    ("LOCAL", "local", False, None), (True, True, True, None), ("ndif", True, True, None),
    ("https://h.example", "https://h.example", True, "https://h.example")])
def test_one_parse_of_a_remote_value(given, value, ndif, host):
    r = check_remote(given)
    assert (r.value, r.is_ndif, r.host) == (value, ndif, host)
    assert check_remote(r) is r
    assert RunOptions(remote=given).remote == value and RunOptions(remote=given).ndif is ndif
    assert (remote_host(given) is not None) is ndif
    if host:
        assert remote_host(given) == host


def test_remote_spellings_are_one_flag_everywhere():
    p = argparse.ArgumentParser(exit_on_error=False)
    add_remote_argument(p)
    p.add_argument("--x", action="store_true")
    got = {tuple(a): p.parse_args(a).remote for a in ([], ["--remote"], ["--remote", "local"], ["--remote", "ndif"],
                                                       ["--remote", "false"], ["--remote", "https://h.example"],
                                                       ["--remote", "--x"])}
    assert got == {(): False, ("--remote",): True, ("--remote", "local"): "local", ("--remote", "ndif"): True,
                   ("--remote", "false"): False, ("--remote", "https://h.example"): "https://h.example",
                   ("--remote", "--x"): True}
    with pytest.raises(argparse.ArgumentError, match="bad --remote 'nowhere'"):
        p.parse_args(["--remote", "nowhere"])
    assert parse_remote(True) is True
    from superscopes_nn.output.cli import build_parser
    from experiments.common import parser

    explain = build_parser()._subparsers._group_actions[0].choices["explain"]
    for q in (explain, parser("d", out="runs/x")):
        remote = next(a for a in q._actions if a.dest == "remote")
        assert remote.nargs == "?" and remote.metavar == "WHERE"
        for given, want in got.items():  # explain keeps the text (its own error: line), parsed to the same value
            if "--x" not in given:
                assert parse_remote(q.parse_known_args(["p", *given] if q is explain else list(given))[0].remote) == want
