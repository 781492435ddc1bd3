"""A hostile host cannot run code in the client: every result is decoded as data only (issue 41).

A fake NDIF on 127.0.0.1 (tests/fake_ndif.py) accepts the request and answers COMPLETED with a result
URL serving a payload: a pickle whose ``__reduce__`` calls ``exec``, pickles importing ``os.system``
(protocol 2's ``GLOBAL`` and protocol 4's ``STACK_GLOBAL``), an oversized result (announced, and a
decompression bomb), a truncated one (the body cut off, the archive cut short), and results of the
wrong shape. Each must give one clean line naming the host and the problem, through the real CLI
(``superscopes explain ... --remote http://127.0.0.1:PORT``: rc 2, one ``error:`` line) and through
the API, and must leave no marker file behind. Plain http to a non-loopback host is refused unless
allowed by name. The honest results of every entry point are decoded by the same loader in the
``ndif_server`` tier (tests/ndif_server.py decodes with ``load_result``; test_ndif_server.py checks it).
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nnsight import CONFIG

from fake_ndif import FakeNDIF
from superscopes_nn import generate_plain, sweep
from superscopes_nn.output import cli
from superscopes_nn.remote import hosts, safe_load
from superscopes_nn.remote.backend import NDIFBackend
from superscopes_nn.remote.errors import NDIFError
from superscopes_nn.remote.safe_load import load_frame, load_result, pickle_globals
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MARKER = "superscopes-pwned"


class Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write(str(__import__('os').getpid()))",)


class System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo $$ > {self.marker}",)


def saved(value, protocol: int = 2) -> bytes:
    """``value`` as a host sends a result: ``torch.save``, zstd-compressed when the client asks for it."""
    buf = io.BytesIO()
    torch.save(value, buf, pickle_protocol=protocol)
    if CONFIG.API.COMPRESS:
        import zstandard

        return zstandard.ZstdCompressor().compress(buf.getvalue())
    return buf.getvalue()


def truncated_archive() -> bytes:
    buf = io.BytesIO()
    torch.save({"outs": [torch.arange(50)]}, buf)
    raw = buf.getvalue()[:-200]
    if CONFIG.API.COMPRESS:
        import zstandard

        return zstandard.ZstdCompressor().compress(raw)
    return raw


# name -> (result bytes given the marker path, fake options, what the one line must say)
PAYLOADS = {
    "exec_reduce": (lambda m: saved({"outs": Exec(m)}), {}, "it tries to load builtins.exec, which is not data"),
    "os_system": (lambda m: saved({"outs": [System(m)]}), {}, "it tries to load posix.system, which is not data"),
    "os_system_protocol4": (lambda m: saved({"vectors": System(m)}, protocol=4), {},
                            "it tries to load posix.system, which is not data"),
    "oversized": (lambda m: saved({"outs": [torch.rand(200_000)]}), {},
                  "bytes, over the 128.0 KiB a result may be"),  # ~700 KB: refused on its Content-Length, unread
    "decompression_bomb": (lambda m: saved({"outs": [torch.zeros(2_000_000)]}), {},
                           "it decompresses to more than 128.0 KiB, over the 128.0 KiB a result may be"
                           if CONFIG.API.COMPRESS else "its result announces"),
    "truncated_body": (lambda m: saved({"outs": [torch.arange(50)]}), {"result_length": 50_000},
                       "truncated"),
    "truncated_archive": (lambda m: truncated_archive(), {}, "not a complete torch.save zip archive"),
    "list_not_dict": (lambda m: saved([torch.arange(3)]), {},
                      "it is a list, not the dict of saved values (name -> value) a session returns"),
    "outs_missing": (lambda m: saved({"outs": []}), {}, "its outs is a list of 0 where a list of 1 belongs"),
    "outs_wrong_type": (lambda m: saved({"outs": [torch.arange(3)]}), {}, "its outs[0] is an integer tensor [3] "
                                                                          "where a tuple of 3 belongs"),
    "stray_name": (lambda m: saved({"zork": "x"}), {}, "it returns 'zork', not a name its session uses"),
}


@pytest.fixture
def fast(monkeypatch):
    import superscopes_nn.remote.backend as nb

    monkeypatch.setattr(nb, "POLL_INTERVAL", 0.01)
    monkeypatch.setattr(nb, "LOST_AFTER", 5.0)
    monkeypatch.setattr(safe_load, "MAX_RESULT_BYTES", 128 * 1024)  # the knob, small enough for tiny payloads
    monkeypatch.setattr(hosts, "_ALLOWED", set())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_tiny_checkpoint(d, "llama")
    return d


@pytest.fixture
def hub_dir(checkpoint, monkeypatch):
    from nnsight.modeling import huggingface

    monkeypatch.setitem(huggingface._ID_CACHE, str(checkpoint), str(checkpoint))  # the dir is its own hub id
    return checkpoint


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_hostile_result_through_the_cli_is_one_line_and_runs_nothing(name, fast, hub_dir, tmp_path, capsys):
    marker = tmp_path / MARKER
    payload, options, says = PAYLOADS[name]
    with FakeNDIF(result=(200, payload(marker)), completed=True, **options) as srv:
        rc = cli.main(["explain", "Pink Floyd", "--model", str(hub_dir), "--remote", srv.url, "--layers", "1",
                       "--amps", "2", "--max-new-tokens", "2", "--no-progress", "--out", str(tmp_path / "run")])
        assert srv.counts["request"] == 1  # accepted once, never resubmitted
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: refused a result from {srv.url}: ") and says in lines[0], lines[0]
    assert "Pink Floyd" not in lines[0] and "Traceback" not in err  # the problem, not a row's repr
    assert not marker.exists()


@pytest.mark.parametrize("name", ["exec_reduce", "os_system", "oversized", "truncated_body", "list_not_dict"])
def test_hostile_result_through_the_api_is_one_line_and_runs_nothing(name, fast, hub_dir, tmp_path):
    from superscopes_nn import load_model

    model = load_model(str(hub_dir), remote=True)
    marker = tmp_path / MARKER
    payload, options, says = PAYLOADS[name]
    for run in (lambda url: sweep(model, "Pink Floyd", layers=1, alphas=2, max_new_tokens=2, progress=False,
                                  remote=url),
                lambda url: generate_plain(model, ["Pink Floyd"], max_new_tokens=2, remote=url)):
        with FakeNDIF(result=(200, payload(marker)), completed=True, **options) as srv:
            with pytest.raises(NDIFError) as info:
                run(srv.url)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"refused a result from {srv.url}: ") and says in msg, msg
        assert info.value.failure.kind == "permanent"
    assert not marker.exists()


def test_the_reported_attack_in_a_fresh_client_process(tmp_path):
    """The issue's run: `superscopes explain P --remote http://127.0.0.1:PORT` in its own process, against a host
    that passes /status and /env; the payload would write the client's pid into the marker."""
    import nnsight

    save_tiny_checkpoint(tmp_path / "org" / "tiny", "llama")  # a hub-shaped id, read from the working directory
    marker = tmp_path / MARKER
    status = {"deployments": {"r": {"repo_id": "org/tiny", "revision": "main", "application_state": "RUNNING"}}}
    env = {"python_version": sys.version, "packages": {"nnsight": nnsight.__version__}}
    with FakeNDIF(result=(200, saved({"outs": Exec(marker)})), completed=True, status=status, env=env) as srv:
        proc = subprocess.run([sys.executable, "-m", "superscopes_nn.output.cli", "explain", "Pink Floyd", "--model",
                               "org/tiny", "--remote", srv.url, "--layers", "1", "--amps", "2", "--max-new-tokens", "2",
                               "--no-progress", "--out", str(tmp_path / "run")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
        assert srv.counts["/status"] == 1 and srv.counts["download"] == 1
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and lines == [f"error: refused a result from {srv.url}: it tries to load "
                                              "builtins.exec, which is not data"], proc.stderr
    assert not marker.exists()


# ------------------------------------------------------------------ the decoder itself


def _raw(value, protocol=2) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf, pickle_protocol=protocol)
    return buf.getvalue()


def test_honest_values_of_every_dtype_load():
    value = {"outs": [(torch.arange(6).view(2, 3), torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)),
                      torch.randn(2, 5, dtype=torch.bfloat16), torch.randn(2, 5, dtype=torch.float16), None],
             "vectors": {("Pink Floyd", 1, "mlp_out", -1): torch.randn(4), ("x", 0): torch.randn(4, dtype=torch.float16)},
             "values": {(0, "residual"): torch.randn(3, 4)}, "n": 3, "s": "text", "f": 1.5}
    got = load_result(_raw(value), "https://api.ndif.us", compressed=False)
    assert got.keys() == value.keys() and torch.equal(got["outs"][1], value["outs"][1])
    assert type(got["outs"][0]) is tuple and got["outs"][3] is None and got["vectors"].keys() == value["vectors"].keys()


@pytest.mark.parametrize("data, says", [
    (pickle.dumps({"a": 1}), "not a complete torch.save zip archive"),  # a bare pickle is not a torch.save archive
    (_raw({"p": torch.nn.Parameter(torch.zeros(2))}), "torch._utils._rebuild_parameter"),
    (_raw({"s": torch.zeros(3).to_sparse()}), "torch._utils._rebuild_sparse_tensor"),
    (_raw({"d": torch.float32}), "which is not data"),
    (_raw({"x": torch.zeros(2, dtype=torch.float64)}), "torch.DoubleStorage"),  # no session returns float64
    (_raw({"o": __import__("collections").OrderedDict(a=1)}), "it holds a collections.OrderedDict, which is not data"),
    (_raw({"x": torch.arange(3)}, protocol=4), "cannot read it as data"),  # FRAME: torch's loader refuses it too
])
def test_non_data_is_refused_by_name(data, says):
    with pytest.raises(NDIFError, match="^refused a result from H: ") as info:
        load_result(data, "H", compressed=False)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_global_computed_at_load_time_is_refused():
    """``STACK_GLOBAL`` whose module is not a literal string (here an empty list): named ``?``, refused."""
    assert pickle_globals(b"\x80\x04]\x8c\x04exec\x93.") == ["?"]
    memo = pickle.dumps(os.system, protocol=4)  # names pushed, memoized, then taken by STACK_GLOBAL
    assert pickle_globals(memo) == ["posix.system"]


def test_a_websocket_frame_is_decoded_as_data(tmp_path):
    from nnsight.schema.response import ResponseModel

    honest = ResponseModel(id="j", status="COMPLETED", data=_raw({"x": torch.arange(2)})).pickle()
    frame = load_frame(honest, "H")
    assert frame["id"] == "j" and load_result(frame["data"], "H", compressed=False)["x"].tolist() == [0, 1]
    with pytest.raises(NDIFError, match="it tries to load builtins.exec"):
        load_frame(ResponseModel(id="j", status="COMPLETED", data=Exec(tmp_path / MARKER)).pickle(), "H")
    assert not (tmp_path / MARKER).exists()


# ------------------------------------------------------------------ plain http


@pytest.mark.parametrize("host", ["http://127.0.0.1:5001", "http://127.3.4.5", "http://localhost:8", "http://[::1]:9",
                                  "https://api.ndif.us", "https://10.0.0.5:5001"])
def test_loopback_and_https_hosts_are_accepted(host, monkeypatch):
    monkeypatch.setattr(hosts, "_ALLOWED", set())
    assert hosts.check_host(host) == host
    NDIFBackend("k", host=host)


@pytest.mark.parametrize("host", ["http://10.0.0.5:5001", "http://api.ndif.us", "http://localhost.evil.example",
                                  "http://127.0.0.1.nip.io"])
def test_plain_http_elsewhere_is_refused_unless_allowed_by_name(host, monkeypatch):
    monkeypatch.setattr(hosts, "_ALLOWED", set())
    with pytest.raises(ValueError, match=f"^refused plain-http host {host}: .*allow_insecure_http"):
        NDIFBackend("k", host=host)
    assert NDIFBackend("k", host=host, allow_insecure_http=True).allow_insecure_http
    hosts.allow_insecure_http(host)
    assert hosts.check_host(host) == host


def test_plain_http_is_refused_before_anything_is_sent(hub_dir, tmp_path, capsys, monkeypatch):
    from superscopes_nn import load_model

    monkeypatch.setattr(hosts, "_ALLOWED", set())
    host = "http://10.255.255.1:9"
    argv = ["explain", "Pink Floyd", "--remote", host, "--layers", "1", "--amps", "2", "--no-progress"]
    assert cli.main([*argv, "--model", str(hub_dir), "--out", str(tmp_path / "run")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: refused plain-http host {host}: "), lines
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=f"^refused plain-http host {host}"):
        sweep(load_model(str(hub_dir), remote=True), "Pink Floyd", layers=1, remote=host)
    # --allow-insecure-http names that host (and only it); the run then stops at a missing model, offline
    assert cli.main([*argv, "--allow-insecure-http", "--model", str(tmp_path / "missing"),
                     "--out", str(tmp_path / "run2")]) == 2
    assert "model path not found" in capsys.readouterr().err
    assert hosts.insecure_allowed(host) and not hosts.insecure_allowed("http://10.255.255.1:10")


@pytest.mark.parametrize("url, says", [
    ("http://10.0.0.5:27018/results/job-1", "is plain http to another machine"),
    ("file:///etc/passwd", "is not an http(s) URL"),
])
def test_a_result_url_elsewhere_over_plain_http_is_not_fetched(url, says, fast, hub_dir):
    from superscopes_nn import load_model

    model = load_model(str(hub_dir), remote=True)
    with FakeNDIF(polls=[(200, {"id": "job-1", "status": "COMPLETED", "description": "", "data": url})]) as srv:
        with pytest.raises(NDIFError, match=f"^refused a result from {srv.url}: ") as info:
            generate_plain(model, ["Pink Floyd"], max_new_tokens=2, remote=srv.url)
    assert says in str(info.value)
