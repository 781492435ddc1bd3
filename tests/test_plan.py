"""The plan of a remote run (superscopes_nn.engine.plan), checked against what the run really sends.

* the requests it counts are the sessions run_requests() runs (same rows per request, same order);
* ``sent`` is the size of the bytes a CaptureBackend writes for that very request (to nnsight's
  few bytes of variation between two serializations of one request);
* ``result`` bounds the ``torch.save`` of what the request's session really returns, within 2x;
* a run that would break a limit (Gemma-3-27B's 262k-entry logits x 64 rows: 64 MiB over NDIF's
  8 MiB inline cap) is refused before the first request, naming the number and the knob;
* every remote run prints its plan line and one line per request; ``superscopes plan`` prints the table;
* so do the runs that are not rows (``generate_plain``, ``collect``, ``logit_lens``: one session per request,
  sent bytes = the call's own captured request, result bytes bound what the session returns), and a limit
  they break (a 62-layer lens over Gemma-3-27B's 262k vocabulary: 31 MiB) is refused before the first request.
"""

import io
import re
import shutil
from pathlib import Path

import pytest
import torch

from superscopes_nn import Amplify, Source, Target, load_model, resolve, sweep_rows
from superscopes_nn.engine import run as run_mod
from superscopes_nn.engine import plan as plan_mod
from superscopes_nn.engine import chunks as chunks_mod
from superscopes_nn.core.options import RunOptions
from superscopes_nn.engine.plan import LIMITS, plan
from superscopes_nn.output.cli import main as cli_main
from superscopes_nn.remote.capture import CaptureBackend, RequestCaptured
from superscopes_nn.testing.tiny_models import tiny_model, tiny_tokenizer

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "large_configs"
PROMPTS = ["Alexander the Great", "Pink Floyd", "Star Wars", "Will Smith and Daft Punk"]


TINY_MODEL = ("llama", 2)


def _rows(model, layers=range(4), alphas=(1, 3, 6)):
    return sweep_rows(model, PROMPTS, layers=list(layers), sites=["mlp_out"], alphas=list(alphas))


def test_requests_are_the_sessions_the_run_sends(model, monkeypatch):
    rows = _rows(model)
    p = plan(model, rows, max_new_tokens=3, max_batch_size=4, chunks_per_request=2)
    sent = []
    real = run_mod.run_chunks
    monkeypatch.setattr(run_mod, "run_chunks", lambda m, jobs, **kw: sent.append(
        sum(len(j.target_ids) for j in jobs)) or real(m, jobs, **kw))
    list(run_mod.run_requests(model, rows, gen_kwargs=plan_mod.greedy_kwargs(model, 3), max_batch_size=4, remote="local",
                         chunks_per_request=2))
    assert [r.rows for r in p.requests] == sent and len(sent) > 2
    assert p.rows == len(rows) == sum(sent) and p.chunk_count == sum(r.chunks for r in p.requests)


def test_sent_bytes_are_the_captured_request(model, tmp_path):
    rows = _rows(model)
    p = plan(model, rows, max_new_tokens=3, max_batch_size=4, chunks_per_request=2)
    with pytest.raises(RequestCaptured):
        run_mod.run_rows(model, rows, max_new_tokens=3, max_batch_size=4, chunks_per_request=2,
                         backend=CaptureBackend(tmp_path / "first.bin"))
    # nnsight's serialization of one request varies by a few bytes between captures (measured: 10532-10546)
    assert abs(p.requests[0].sent - (tmp_path / "first.bin").stat().st_size) <= 0.01 * p.requests[0].sent


def test_result_bytes_bound_the_real_result(model):
    rows = _rows(model)
    p = plan(model, rows, max_new_tokens=3, max_batch_size=4, chunks_per_request=2)
    planned = plan_mod.plan_requests(model, rows, batching=plan_mod.batching(model, RunOptions(max_batch_size=4, chunks_per_request=2)),
                                     gen_kwargs=plan_mod.greedy_kwargs(model, 3))
    known = {}
    for measured, request in zip(p.requests, planned):
        given = {k: known[k] for k in request.given}
        outs, used = chunks_mod.run_chunks(model, list(request.chunks), vectors=given)
        known.update(used)
        buf = io.BytesIO()
        torch.save([outs, dict(used)], buf)
        real = len(buf.getvalue())
        assert real <= measured.result <= 2 * real, (real, measured.result)


SETTINGS = [
    dict(max_batch_size=4, chunks_per_request=2),
    dict(max_batch_size=3, chunks_per_request=1),
    dict(max_batch_size=2),                                  # the remote default: 8 chunks per request
    dict(max_batch_size=5, chunks_per_request=3, exact=True),  # one row per chunk, no prefix reuse
    dict(max_batch_size=4, chunks_per_request=2, shared_prefix=False),
    dict(max_batch_size=4, chunks_per_request=2, cross_model=True),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_plan_and_execution_make_the_same_request_list(model, monkeypatch, settings):
    """One request loop: the rows of every request the plan measures are those execution sends, in order."""
    settings = dict(settings)
    target = tiny_model("llama", seed=3) if settings.pop("cross_model", False) else model
    rows = sweep_rows(model, PROMPTS + ["The Eiffel Tower is in Paris"], layers=[0, 2], sites=["mlp_out"],
                      alphas=[1, 3], target_model=target)
    p = plan(model, rows, target_model=target, max_new_tokens=2, **settings)
    calls, chunks = [], []
    real_run, real_execute = run_mod.run_chunks, run_mod.run_requests
    monkeypatch.setattr(run_mod, "run_chunks", lambda m, jobs, **kw: (
        calls.append(len(jobs)) if isinstance(jobs, list) else None) or real_run(m, jobs, **{**kw, "remote": False}))

    def spy(*a, **k):
        for idx, job, out in real_execute(*a, **k):
            chunks.append(list(idx))
            yield idx, job, out

    monkeypatch.setattr(run_mod, "run_requests", spy)
    monkeypatch.setattr(run_mod, "remote_caller", lambda *a, **k: (lambda fn: fn()))
    monkeypatch.setattr(run_mod, "session_backend", lambda m, r, b: None)
    monkeypatch.setattr(run_mod, "announce", lambda *a, **k: None)
    run_mod.run_rows(model, rows, target_model=target, max_new_tokens=2, remote=True, **settings)
    sent, it = [], iter(chunks)
    for n in calls:
        sent.append(tuple(i for _ in range(n) for i in next(it)))
    assert [r.row_indices for r in p.requests] == sent and len(sent) > 1
    assert sorted(i for r in sent for i in r) == list(range(len(rows)))
    if settings.get("exact"):
        assert all(len(c) == 1 for c in chunks)


def meta_dir(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    shutil.copy(CONFIGS / name / "config.json", d / "config.json")
    tiny_tokenizer().save_pretrained(d)
    return d


def test_a_run_over_a_limit_is_refused_before_the_first_request(tmp_path, monkeypatch, capsys):
    from nnsight.modeling import huggingface

    d = meta_dir(tmp_path, "Gemma-3-27B")
    monkeypatch.setitem(huggingface._ID_CACHE, str(d), str(d))  # a local dir stands in for the hub id
    gemma = load_model(str(d), remote=True, dtype=torch.bfloat16)
    rows = resolve(gemma, [(Source(p, layer=l), Target(), Amplify(2)) for p in ["Pink Floyd"] * 64 for l in [0]] +
                   [(Source("Pink Floyd", layer=61), Target(), None)])
    p = plan(gemma, rows, logits=True, max_batch_size=64)
    assert p.problems() and "max_batch_size" in p.problems()[0] and "8.00 MiB" in p.problems()[0]
    assert p.requests[0].result > 64 * 262208 * 4 > LIMITS["result"].value
    monkeypatch.setattr(chunks_mod, "run_chunks", lambda *a, **k: pytest.fail("a request was sent"))
    monkeypatch.setattr(run_mod, "run_chunks", lambda *a, **k: pytest.fail("a request was sent"))
    from superscopes_nn import patched_logits

    with pytest.raises(ValueError, match=r"refused before the first request: NDIF request 1 of \d+ \(64 rows\) has "
                                         r"64\.\d+ MiB of result bytes per request, over 8\.00 MiB"):
        patched_logits(gemma, rows, remote="http://127.0.0.1:9")
    assert plan(gemma, rows, logits=True, max_batch_size=4).problems() == []  # the knob named fixes it


def test_remote_runs_print_the_plan_and_each_request(model, monkeypatch, capsys):
    rows = _rows(model, layers=[1], alphas=[1, 2])
    p = plan(model, rows, max_new_tokens=2, max_batch_size=2, chunks_per_request=1)
    monkeypatch.setattr(run_mod, "remote_caller", lambda *a, **k: (lambda fn: fn()))
    monkeypatch.setattr(run_mod, "session_backend", lambda m, r, b: None)
    real = run_mod.run_chunks
    monkeypatch.setattr(run_mod, "run_chunks", lambda m, jobs, **kw: real(m, jobs, **{**kw, "remote": False}))
    run_mod.run_rows(model, rows, max_new_tokens=2, max_batch_size=2, chunks_per_request=1, remote=True)
    err = capsys.readouterr().err.splitlines()
    # the sent bytes are compressed, and the pickle they compress names each storage by its memory address
    # (torch.save's storage keys), so a second capture of the same request differs by a few bytes: the line
    # equals the plan's but for those numbers, which agree to the printed 0.1 KiB (compressed sizes here vary ~10 B)
    sizes = re.compile(r"(\d+\.\d+) KiB")
    assert sizes.sub("<KiB>", err[0]) == f"[superscopes] {sizes.sub('<KiB>', p.line())}", err[0]
    got, want = sizes.findall(err[0]), sizes.findall(p.line())
    assert len(got) == len(want) >= 2 and all(abs(float(a) - float(b)) <= 0.1 for a, b in zip(got, want)), err[0]
    assert [e for e in err[1:] if "NDIF request" in e] == [
        f"[superscopes] NDIF request {i}/{len(p.requests)}: {r.rows} rows" for i, r in enumerate(p.requests, 1)]


def test_plan_command(tmp_path, capsys):
    d = meta_dir(tmp_path, "Qwen2.5-72B")
    assert cli_main(["plan", str(d), "--prompts", "Pink Floyd", "Star Wars", "--layers", "0,40,79", "--alphas", "1,6",
                     "--max-batch-size", "4", "--chunks-per-request", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"plan: {d}, 12 rows in 3 chunks -> 3 NDIF requests (4 rows each)")
    assert len(out) == 2 + 3 and all(int(line.split()[3]) > 0 for line in out[2:])
    assert cli_main(["plan", str(d), "--layers", "0"]) == 2
    assert "error: no prompts" in capsys.readouterr().err


# ------------------------------------------------------------- runs that are not rows: one session per request

from superscopes_nn import collect, generate_plain, logit_lens  # noqa: E402

RUNS = {
    "generate_plain": lambda m, **kw: generate_plain(m, PROMPTS, max_new_tokens=2, max_batch_size=2, **kw),
    "collect": lambda m, **kw: collect(m, "Pink Floyd", [0, 2], ["residual", "mlp_out"], **kw),
    "logit_lens": lambda m, **kw: logit_lens(m, "Pink Floyd", layers=[3, 0, 1], k=2, **kw),
}


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    elif hasattr(a, "equals"):
        assert a.equals(b)
    else:
        assert a == b


class Sent(Exception):
    pass


def _local_sends(monkeypatch, model, sent: list):
    """The remote path up to the send, which runs here (nnsight's serialization round trip) and is counted."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    monkeypatch.setattr(run_mod, "remote_caller", lambda *a, **k: (lambda fn: fn()))
    monkeypatch.setattr(run_mod, "session_backend", lambda m, r, b: sent.append(1) or LocalSimulationBackend(m))


@pytest.mark.parametrize("name", RUNS)
def test_every_remote_run_prints_its_plan_and_each_request(model, monkeypatch, capsys, tmp_path, name):
    from nnsight.intervention.backends.local import LocalSimulationBackend

    local = RUNS[name](model)
    first = tmp_path / "first.bin"
    with pytest.raises(RequestCaptured):
        RUNS[name](model, backend=CaptureBackend(first))
    measured, sent = [], []
    real = run_mod.measure_custom_requests
    monkeypatch.setattr(run_mod, "measure_custom_requests", lambda m, s, *a, **k: measured.append((s, real(m, s, *a, **k)))
                        or measured[-1][1])
    _local_sends(monkeypatch, model, sent)
    capsys.readouterr()
    _same(RUNS[name](model, remote=True), local)
    [(sessions, p)] = measured
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"[superscopes] {p.line()}" and p.problems() == []
    assert [e for e in err[1:] if "NDIF request" in e] == [
        f"[superscopes] NDIF request {i}/{len(p.requests)}: {r.rows} rows" for i, r in enumerate(p.requests, 1)]
    assert len(sent) == len(p.requests) == len(sessions)
    assert p.rows == (len(PROMPTS) if name == "generate_plain" else 1)
    if name == "generate_plain":
        assert len(p.requests) > 1  # one generate per group of equal token length
    # sent: the bytes the public call itself sends first (a capture backend in its place)
    assert abs(p.requests[0].sent - first.stat().st_size) <= 0.01 * p.requests[0].sent
    # result: bounds the torch.save of what each session really returns, within 2x
    for s, r in zip(sessions, p.requests):
        buf = io.BytesIO()
        torch.save(s.open(LocalSimulationBackend(model)), buf)
        assert len(buf.getvalue()) <= r.result <= 2 * len(buf.getvalue()), (len(buf.getvalue()), r.result)


def test_a_lens_over_a_huge_vocabulary_is_refused_before_the_first_request(tmp_path, monkeypatch):
    from nnsight.modeling import huggingface

    d = meta_dir(tmp_path, "Gemma-3-27B")
    monkeypatch.setitem(huggingface._ID_CACHE, str(d), str(d))
    gemma = load_model(str(d), remote=True, dtype=torch.bfloat16)
    monkeypatch.setattr(run_mod, "session_backend", lambda *a: (_ for _ in ()).throw(Sent()))
    n, vocab = 62, 262208  # Gemma-3-27B's published layers and vocabulary: 62 x 262208 bf16 logits = 31 MiB
    with pytest.raises(ValueError, match=r"refused before the first request: NDIF request 1 of 1 \(1 rows\) has "
                                         r"31\.\d\d MiB of result bytes per request, over 8\.00 MiB \(.*redis\.py.*\): "
                                         rf"pass fewer layers per call \(now {n} layers x {vocab} vocabulary"):
        logit_lens(gemma, "Pink Floyd", remote="http://127.0.0.1:9")
    with pytest.raises(Sent):  # the knob named fixes it: 8 layers (4 MiB) pass the plan and reach the send
        logit_lens(gemma, "Pink Floyd", layers=range(8), remote="http://127.0.0.1:9")


@pytest.mark.parametrize("name, key, knob", [
    ("collect", "result", r"read fewer layers or sites per call, or a shorter prompt \(now 4 reads x \d+ tokens\)"),
    ("generate_plain", "request", r"lower max_batch_size or max_new_tokens \(now max_batch_size=2, max_new_tokens=2\)"),
    ("logit_lens", "request", r"pass fewer layers per call \(now 3 layers"),
])
def test_a_broken_limit_is_refused_before_the_first_request(model, monkeypatch, name, key, knob):
    import dataclasses

    sent = []
    _local_sends(monkeypatch, model, sent)
    monkeypatch.setitem(plan_mod.LIMITS, key, dataclasses.replace(LIMITS[key], value=1000))
    with pytest.raises(ValueError, match=rf"^refused before the first request: NDIF request 1 of \d+ \(\d+ rows\) has "
                                         rf"[\d.]+ KiB of {LIMITS[key].name}, over 1\.0 KiB \(.*\): {knob}"):
        RUNS[name](model, remote=True)
    assert sent == []
