"""NDIF's failures as NDIF writes them (table-driven), end to end against a fake NDIF, and retries.

``FakeNDIF`` speaks just enough of the protocol nnsight's RemoteBackend uses:
the ``/subscribe`` websocket (handshake, the session-id message, status frames)
and ``POST /request``. Each test configures one failure and checks the
:class:`NDIFError` message names the cause, and how many tries the server saw.
Everything stays on 127.0.0.1 with short timeouts.
"""

from __future__ import annotations

import socket

import httpx
import pytest
from nnsight.intervention.backends.remote import RemoteError

from fake_ndif import TIMEOUT, FakeNDIF
from superscopes_nn.remote.errors import NDIFError, call_remote, classify
from superscopes_nn.engine.rows import sweep_rows
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.specs import ENTITY_PROMPT, Target
from superscopes_nn.testing.tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama")
    rows = sweep_rows(model, ["Alexander the Great"], layers=[1], alphas=[2.0], target=Target(ENTITY_PROMPT))
    return model, rows


@pytest.fixture
def remote_run(tiny, monkeypatch):
    """``run(url)``: the tiny sweep sent to ``url``; offline-safe model key, bounded websocket waits."""
    import nnsight.modeling.huggingface as hf
    import websocket._socket

    model, rows = tiny
    monkeypatch.setitem(hf._ID_CACHE, model.repo_id, "superscopes/tiny-llama")  # no hub lookup
    monkeypatch.setattr(websocket._socket, "_default_timeout", TIMEOUT)
    import superscopes_nn.remote.backend as nb

    monkeypatch.setattr(nb, "POLL_INTERVAL", 0.01)  # NDIFBackend polls the fake quickly, and gives up on
    monkeypatch.setattr(nb, "LOST_AFTER", 1.0)      # a job with no recorded status after a second
    return lambda url, **kw: run_rows(model, rows, max_new_tokens=2, remote=url, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(remote_run, url, retries=2):
    """The entry point's own NDIF retries (every remote entry point has them, run_dir or not)."""
    sleeps = []
    with pytest.raises(NDIFError) as info:
        remote_run(url, retries=retries, sleep=sleeps.append)
    return info.value, sleeps


# ------------------------------------------------------------------ NDIF's own texts, table-driven

# Each text verbatim from NDIF's docs/reference/error-messages.md (ndif 0.1.2 sdist), with its
# HTTP status (ingress, after nnsight's "Failed to send request:") or None (a job's ERROR).
KEY = "Invalid API key format: 'abc'. API keys must be in the format: xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
NDIF_TEXTS = [
    ("Missing or invalid API key. Please visit https://login.ndif.us to get one", 401, "fix"),
    (KEY, 400, "fix"),
    ("Invalid API key.", 403, "fix"),
    ("Invalid JSON: EOF while parsing a value at line 1 column 0", 422, "fix"),
    ("Service temporarily unavailable: compute backend is reconnecting. Please try again in a few minutes.",
     503, "retry"),
    ("Auth backend unavailable.", 503, "retry"),
    ("Internal server error.", 500, "retry"),
    ("Could not retrieve cluster status.", 503, "retry"),
    ("Timed out waiting for cluster status.", 504, "retry"),
    ("Client nnsight version was not provided. This usually means an outdated nnsight; please "
     "`pip install --upgrade nnsight` and retry.", 400, "fix"),
    ("Malformed nnsight version 'abc'.", 400, "fix"),
    ("Client nnsight version 0.7.0 is below the minimum supported 0.8.0. Please `pip install --upgrade nnsight`.",
     400, "fix"),
    ("Client python version was not provided. Please update nnsight.", 400, "fix"),
    ("Malformed python version 'x'.", 400, "fix"),
    ("Client python version 3.11 is below the minimum supported 3.12. Please update python.", 400, "fix"),
    ("OutOfOrderError: 'model.layers.0.output' was requested but the model already ran past it", None, "fix"),
    ("ValueError: A barrier was never reached by every block it waits for; check the count it was created with",
     None, "fix"),
    ("Your request payload could not be read (UnpicklingError: pickle data was truncated). It may be truncated or "
     "corrupted in transit, or compressed differently than the request declared. Re-sending it usually resolves "
     "this; if it persists, check that the client and server nnsight versions match.", None, "retry"),
    ("The model architecture on this server doesn't match the one your code was traced against: it has no module "
     "at 'model.layers.0.mlp'.\n\nThis usually means the package versions differ", None, "fix"),
    ("Your job exceeded the execution timeout of 600s.", None, "fix"),
    ("Your job was cancelled or preempted by the server.", None, "retry"),
    ("Request cancelled by operator.", None, "permanent"),
    ("Replica was evicted while processing your request. Sorry for the inconvenience. Please try again later.",
     None, "retry"),
    ("Error submitting request to model deployment. Please try again later. Sorry for the inconvenience.",
     None, "retry"),
    ("Error provisioning model. Please try again later. Sorry for the inconvenience.", None, "retry"),
    ("Error starting model. Please try again later.", None, "retry"),
    ("Could not deploy this model. Repository Not Found for url: https://huggingface.co/api/models/x/y", None, "fix"),
    ("Critical server error occurred. Please try again later. Sorry for the inconvenience.", None, "retry"),
    ("Traceback (most recent call last):\n  File \"greenlet\", line 1\nValueError: Cannot switch to a different "
     "thread", None, "retry"),
]


def _sent(text: str, status: int | None) -> Exception:
    """The exception nnsight raises for ``text``: a wrapped HTTP error, or the job's RemoteError."""
    if status is None:
        return RemoteError(text)
    request = httpx.Request("POST", "https://api.ndif.us/request")
    resp = httpx.Response(status, json={"detail": text}, request=request)
    return _wrapped(httpx.HTTPStatusError(str(status), request=request, response=resp))


@pytest.mark.parametrize("text,status,kind", NDIF_TEXTS, ids=[t[0][:40] for t in NDIF_TEXTS])
def test_ndif_documented_texts(text, status, kind):
    failure = classify(_sent(text, status), host="https://api.ndif.us")
    assert failure is not None and failure.kind == kind, (text, failure)
    assert failure.transient == (kind == "retry")
    assert "\n" not in failure.message
    assert text.split("\n")[0][:60] in failure.message or text.splitlines()[-1] in failure.message


def test_python_version_gate_names_the_versions():
    msg = classify(_sent(NDIF_TEXTS[14][0], 400)).message
    assert "3.11 is below the minimum supported 3.12" in msg and "HTTP 400" in msg


def test_architecture_mismatch_points_to_ndif_compare():
    failure = classify(RemoteError(NDIF_TEXTS[18][0]))
    assert "ndif.compare()" in failure.message and "transformers" in failure.message and "version" not in \
        failure.message.split(":")[0]


def test_job_traceback_keeps_its_last_line_and_oom_says_lower_max_batch_size():
    frames = "".join(f'  File "/srv/ndif/x{i}.py", line {i}, in f\n    y = g()\n' for i in range(40))
    text = f"Traceback (most recent call last):\n{frames}torch.OutOfMemoryError: CUDA out of memory. " \
           "Tried to allocate 2.00 GiB"
    failure = classify(RemoteError(text))
    assert failure.kind == "fix" and "torch.OutOfMemoryError: CUDA out of memory" in failure.message
    assert "lower max_batch_size" in failure.message
    user = classify(RemoteError(f"Traceback (most recent call last):\n{frames}KeyError: 'model.layers.99'"))
    assert user.kind == "fix" and user.message.startswith("NDIF job failed: KeyError: 'model.layers.99'")


@pytest.mark.parametrize("status,body,kind,says", [
    (403, "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", "fix",
     "Request has expired"),
    (404, "<Error><Code>NoSuchBucket</Code></Error>", "permanent", "NoSuchBucket"),
    (403, "<Error><Code>SignatureDoesNotMatch</Code></Error>", "permanent", "SignatureDoesNotMatch"),
])
def test_result_download_failures_are_named_as_such(status, body, kind, says):
    url = "https://store.ndif.us/dev/results/abc.pt?X-Amz-Signature=1"
    request = httpx.Request("GET", url)
    err = httpx.HTTPStatusError(str(status), request=request, response=httpx.Response(status, text=body,
                                                                                          request=request))
    failure = classify(err, host="https://api.ndif.us")
    assert failure.kind == kind and failure.message.startswith("result download failed") and says in failure.message
    assert "API key" not in failure.message and "X-Amz-Signature" not in failure.message


def test_result_download_dns_failure_is_not_a_host_problem():
    request = httpx.Request("GET", "http://minio:27018/dev/results/abc.pt")
    failure = classify(httpx.ConnectError("[Errno -2] Name or service not known", request=request),
                       host="https://api.ndif.us")
    assert failure.kind == "permanent" and failure.message.startswith("result download failed")
    assert "object store" in failure.message


# ------------------------------------------------------------------ end to end (fake NDIF on 127.0.0.1)


def test_connection_refused_is_retried_then_names_the_host(remote_run):
    url = f"http://127.0.0.1:{free_port()}"
    err, sleeps = call(remote_run, url, retries=2)
    msg = str(err)
    assert msg.startswith(f"could not reach NDIF at {url} (connection refused)") and "after 3 tries" in msg
    assert "check the host" in msg and "\n" not in msg
    assert sleeps == [1.0, 2.0] and err.attempts == 3 and err.failure.transient
    assert "Connection refused" in str(err.__cause__)  # the POST of NDIFBackend's submit (no websocket)


def test_post_403_invalid_key_is_not_retried(remote_run):
    with FakeNDIF(post_status=403, detail="Invalid API key.") as srv:
        err, sleeps = call(remote_run, srv.url)
    assert "Invalid API key." in str(err) and "NDIF_API_KEY" in str(err) and err.failure.kind == "fix"
    assert sleeps == [] and srv.counts["request"] == 1


@pytest.mark.parametrize("status,detail", [(503, "Auth backend unavailable."), (504, "Timed out waiting for "
                                                                                      "cluster status.")])
def test_ingress_503_504_are_retried(remote_run, status, detail):
    with FakeNDIF(post_status=status, detail=detail) as srv:
        err, sleeps = call(remote_run, srv.url, retries=2)
    msg = str(err)
    assert f"HTTP {status}" in msg and "after 3 tries" in msg and detail in msg and srv.url in msg
    assert srv.counts["request"] == 3 and sleeps == [1.0, 2.0]


def test_evicted_job_is_retried(remote_run):
    text = "Replica was evicted while processing your request. Sorry for the inconvenience. Please try again later."
    with FakeNDIF(job_error=text) as srv:
        err, sleeps = call(remote_run, srv.url, retries=1)
    assert text in str(err) and srv.counts["request"] == 2 and sleeps == [1.0]


def test_websocket_drop_after_submit_is_never_resubmitted(remote_run):
    with FakeNDIF(drop_after_post=True) as srv:
        err, sleeps = call(remote_run, srv.url, retries=3)
    assert srv.counts["request"] == 1 and sleeps == [] and err.failure.kind == "permanent"
    assert "not resubmitted" in str(err) and "NDIFBackend" in str(err)


def test_version_gate_400(remote_run):
    text = "Client nnsight version 0.8.1 is below the minimum supported 0.9.0. Please `pip install --upgrade nnsight`."
    with FakeNDIF(post_status=400, detail=text) as srv:
        err, sleeps = call(remote_run, srv.url)
    assert "0.8.1 is below the minimum supported 0.9.0" in str(err) and err.failure.kind == "fix"
    assert sleeps == [] and srv.counts["request"] == 1
    assert srv.post_headers[0].get("nnsight-version") == "0.8.1"  # what the server gates on


# ------------------------------------------------------------------ NDIFBackend: one submit, wait on its id


def _result_blob(saved: dict) -> bytes:
    import io

    import torch
    import zstandard
    from nnsight import CONFIG

    buf = io.BytesIO()
    torch.save(saved, buf)
    return zstandard.ZstdCompressor().compress(buf.getvalue()) if CONFIG.API.COMPRESS else buf.getvalue()


def _job(status, url=None):
    return 200, {"id": "job-1", "status": status, "description": status.lower(), "data": url}


def test_ndif_backend_waits_on_the_same_job_through_poll_failures(tiny, monkeypatch):
    import nnsight.modeling.huggingface as hf
    import torch

    from superscopes_nn import generate_plain
    from superscopes_nn.remote.backend import remote_backend

    model, _ = tiny
    monkeypatch.setitem(hf._ID_CACHE, model.repo_id, "superscopes/tiny-llama")
    want = generate_plain(model, ["Pink Floyd"], max_new_tokens=3)
    with model.generate(torch.tensor([model.tokenizer("Pink Floyd")["input_ids"]]), max_new_tokens=3,
                        do_sample=False, pad_token_id=model.tokenizer.pad_token_id) as tracer:
        ids = tracer.result.save()
    polls = [(503, {"detail": "Auth backend unavailable."}), _job("QUEUED"), _job("RUNNING")]
    with FakeNDIF(polls=polls, result=(200, _result_blob({"result": ids}))) as srv:
        srv.polls.append(_job("COMPLETED", f"{srv.url}/results/job-1"))
        backend = remote_backend(model, srv.url, sleep=lambda s: None)
        got = generate_plain(model, ["Pink Floyd"], max_new_tokens=3, backend=backend)
    assert got == want
    assert srv.counts["request"] == 1 and srv.counts["subscribe"] == 0 and srv.counts["poll"] == 4
    assert backend.job_id == "job-1"


def test_ndif_backend_expired_result_url_is_a_download_failure(tiny, monkeypatch):
    import nnsight.modeling.huggingface as hf

    from superscopes_nn import generate_plain
    from superscopes_nn.remote.backend import remote_backend

    model, _ = tiny
    monkeypatch.setitem(hf._ID_CACHE, model.repo_id, "superscopes/tiny-llama")
    with FakeNDIF(result=(403, b"<Error><Message>Request has expired</Message></Error>")) as srv:
        srv.polls.append(_job("COMPLETED", f"{srv.url}/results/job-1?X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"))
        backend = remote_backend(model, srv.url, sleep=lambda s: None)
        with pytest.raises(NDIFError) as info:
            call_remote(lambda: generate_plain(model, ["Pink Floyd"], max_new_tokens=2, backend=backend),
                        host=srv.url, sleep=lambda s: pytest.fail("retried"))
    assert str(info.value).startswith("result download failed (HTTP 403 Request has expired")
    assert srv.counts["request"] == 1


# ------------------------------------------------------------------ retry logic (no network)


def failing(times: int, exc: Exception, result="ok"):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise exc
        return result

    return fn, calls


def test_transient_failure_then_success():
    fn, calls = failing(2, ConnectionRefusedError(111, "Connection refused"), result=42)
    sleeps = []
    assert call_remote(fn, retries=3, backoff=0.5, sleep=sleeps.append) == 42
    assert len(calls) == 3 and sleeps == [0.5, 1.0]


def test_retries_exhausted_counts_attempts():
    fn, calls = failing(10, TimeoutError("timed out"))
    sleeps = []
    with pytest.raises(NDIFError, match=r"timed out\).*after 4 tries") as info:
        call_remote(fn, retries=3, sleep=sleeps.append, host="https://ndif.example")
    assert len(calls) == 4 and sleeps == [1.0, 2.0, 4.0] and isinstance(info.value.__cause__, TimeoutError)


def test_permanent_failure_is_not_retried():
    fn, calls = failing(10, RemoteError("Traceback (most recent call last):\nKeyError: 'model.layers.99'"))
    with pytest.raises(NDIFError, match="NDIF job failed: KeyError: 'model.layers.99'"):
        call_remote(fn, retries=3, sleep=lambda s: pytest.fail("slept"))
    assert len(calls) == 1


def test_unrelated_errors_pass_through_unchanged():
    err = ValueError("bad layer 99")
    fn, calls = failing(10, err)
    with pytest.raises(ValueError) as info:
        call_remote(fn, sleep=lambda s: pytest.fail("slept"))
    assert info.value is err and len(calls) == 1


def test_ndif_error_is_not_wrapped_twice():
    fn, calls = failing(10, NDIFError(classify(ConnectionRefusedError())))
    with pytest.raises(NDIFError, match="connection refused") as info:
        call_remote(fn, sleep=lambda s: pytest.fail("slept"))
    assert info.value.__cause__ is None and len(calls) == 1


@pytest.mark.parametrize("bad", [{"retries": -1}, {"retries": 1.5}, {"backoff": -1.0}, {"backoff": float("nan")}])
def test_bad_retry_settings(bad):
    with pytest.raises(ValueError, match=repr(next(iter(bad.values()))).replace("(", r"\(")):
        call_remote(lambda: 1, **bad)


def _wrapped(cause: Exception) -> RemoteError:
    try:
        raise RemoteError(f"Failed to send request: {cause}") from cause
    except RemoteError as err:
        return err


def test_classify_httpx_errors_as_nnsight_wraps_them():
    request = httpx.Request("POST", "https://ndif.example/request")
    timeout = classify(_wrapped(httpx.ConnectTimeout("timed out", request=request)), host="https://ndif.example")
    assert timeout.transient and "timed out" in timeout.message and "https://ndif.example" in timeout.message
    refused = classify(_wrapped(httpx.ConnectError("[Errno 111] Connection refused", request=request)))
    assert refused.transient and "connection refused" in refused.message
    resp = httpx.Response(403, json={"detail": "Key revoked"}, request=request)
    forbidden = classify(_wrapped(httpx.HTTPStatusError("403", request=request, response=resp)))
    assert forbidden.kind == "fix" and forbidden.status == 403 and "Key revoked" in forbidden.message
    resp = httpx.Response(502, text="<html>Bad Gateway</html>", request=request)
    gateway = classify(_wrapped(httpx.HTTPStatusError("502", request=request, response=resp)))
    assert gateway.transient and "HTTP 502" in gateway.message
    assert classify(KeyError("x")) is None
