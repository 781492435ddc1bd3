"""``superscopes plan --script``: a paper script's recorded plan equals what the same script really sends.

The reference is the real thing: the script run with ``--remote`` through ndif 0.1.2's own server code
(tests/ndif_server.py: nnsight's real client, every request body written to ``request.bin`` by the runner).
Per case the recorded plan (:func:`superscopes_nn.output.plan_script.plan_script`, nothing sent) must have
the same number of requests, each of exactly the bytes the server received, in order, and a result bound
at least the size of what the server returned. token_identity opens a session of its own (the logit lens,
recorded by ``RecordingBackend`` on fake tensors) before its rows; attribute_extraction runs rows and
``generate_plain`` (custom requests). A script that refuses ``--remote`` plans as its one-line refusal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import experiments
import ndif_server
from superscopes_nn.output.plan_script import main as plan_main
from superscopes_nn.output.plan_script import plan_script
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint

CASES = {
    "token_identity": ["--limit", "1", "--max-positions", "1", "--layer-stride", "2"],
    "attribute_extraction": ["--limit", "1", "--max-new-tokens", "2", "--tasks", "country_capital_city",
                             "--layer-stride", "1000"],
}

ZSTD_SLACK = 32
"""Bytes a compressed body may differ by between two sends of the same request (seen: 3)."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan_ckpt") / "llama"
    save_tiny_checkpoint(d, "llama", seed=3)
    ndif_server.seed_id_cache(d)
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ndif_server.start(tmp_path_factory)
    yield srv
    srv.close()


@pytest.mark.ndif_server
@pytest.mark.parametrize("name,compress", [("token_identity", False), ("attribute_extraction", True)],
                         ids=["token_identity-raw", "attribute_extraction-zstd"])
def test_recorded_plan_is_what_the_script_sends(name, compress, ckpt, server, monkeypatch, tmp_path):
    """Raw bodies (``CONFIG.API.COMPRESS = False``): every request's bytes exactly. Compressed (nnsight's
    default): within :data:`ZSTD_SLACK` bytes, since a body names each tensor's storage by its memory address
    (``torch.save``'s storage key), so the same request compresses to a few bytes more or less run to run."""
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "COMPRESS", compress)
    planned = plan_script(name, str(ckpt), CASES[name])
    assert not planned.refused and planned.requests > 0, planned.text
    start = len(server.log)
    with monkeypatch.context() as mp:
        ndif_server.route(mp, server)
        experiments.run(name, ["--model", str(ckpt), *CASES[name], "--remote", "--out", str(tmp_path / "out")])
    log = server.log[start:]
    assert all(not e["errors"] for e in log), [e["errors"] for e in log]
    sent = tuple((Path(e["dir"]) / "request.bin").stat().st_size for e in log)
    got = tuple((Path(e["dir"]) / "result-trusted.bin").stat().st_size for e in log)
    print(f"{name}: recorded sent {planned.sent} results <= {planned.result}; server got {sent}, returned {got}")
    if compress:
        assert len(planned.sent) == len(sent)
        assert all(abs(a - b) <= ZSTD_SLACK for a, b in zip(planned.sent, sent)), (planned.sent, sent)
    else:
        assert planned.sent == sent
    assert all(bound >= real for bound, real in zip(planned.result, got))


def test_a_refused_script_plans_as_its_refusal(ckpt, capsys):
    planned = plan_script("persona_control", str(ckpt), ["--limit", "1"])
    assert planned.refused.startswith("--remote: ") and planned.requests == 0
    assert planned.text == f"plan: persona_control: refused: {planned.refused}"
    assert plan_main(["persona_control", str(ckpt), "--limit", "1"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [planned.text]


def test_the_command_prints_one_line_per_request(ckpt, capsys, monkeypatch):
    """The printed table: the summary line, a header, one line per recorded request, rc 0 within the limits."""
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "COMPRESS", False)  # raw bodies: the same bytes on every run
    args = CASES["token_identity"]
    planned = plan_script("token_identity", str(ckpt), args)
    assert plan_main(["token_identity", str(ckpt), *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"plan: token_identity on {ckpt}: {planned.requests} NDIF requests")
    assert [int(ln.split()[4]) for ln in lines[2:]] == list(planned.sent)
    assert str(Path(sys.prefix)) not in lines[0] and "superscopes-plan-" not in "\n".join(lines)
