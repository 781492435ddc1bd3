"""Remote failures, end to end against a fake NDIF on 127.0.0.1, and the retry logic.

``FakeNDIF`` speaks just enough of the protocol nnsight's RemoteBackend uses:
the ``/subscribe`` websocket (handshake, the session-id message, status frames)
and ``POST /request``. Each test configures one failure and checks the
:class:`NDIFError` message names the cause, and how many tries the server saw.
Everything stays on 127.0.0.1 with short timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import queue
import select
import socket
import struct
import threading
import time
from collections import Counter

import httpx
import pytest
from nnsight.intervention.backends.remote import RemoteError

from superscopes_nn.ndif_errors import NDIFError, call_remote, classify
from superscopes_nn.resolver import sweep_rows
from superscopes_nn.run import run_rows
from superscopes_nn.specs import ENTITY_PROMPT, Target
from superscopes_nn.testing import tiny_model

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 5.0


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked (server -> client) websocket frame."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n))
    return head + payload


class FakeNDIF:
    """A threaded HTTP server playing one failure mode of NDIF.

    ``ws_status``: answer the websocket handshake with this HTTP status.
    ``ws_drop``: accept the handshake, then drop the TCP connection.
    ``post_status``: answer ``POST /request`` with this status and ``{"detail": detail}``.
    ``job_error``: accept the POST, then send an ERROR status with this description.
    """

    def __init__(self, ws_status=None, ws_drop=False, post_status=None, detail="", job_error=None):
        self.ws_status, self.ws_drop, self.post_status = ws_status, ws_drop, post_status
        self.detail, self.job_error = detail, job_error
        self.counts: Counter = Counter()
        self.post_headers: list[dict] = []
        self.frames: queue.Queue = queue.Queue()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = TIMEOUT

            def log_message(self, *args):
                pass

            def reply(self, status, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def do_GET(self):
                if self.path != "/subscribe":
                    return self.reply(404, {"detail": f"no route {self.path}"})
                fake.counts["subscribe"] += 1
                if fake.ws_status is not None:
                    return self.reply(fake.ws_status, {"detail": fake.detail})
                accept = base64.b64encode(
                    hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest()).decode()
                self.send_response(101, "Switching Protocols")
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                if fake.ws_drop:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(ws_frame(json.dumps({"session_id": "session-1"}).encode()))
                self.wfile.flush()
                deadline = time.monotonic() + TIMEOUT
                try:  # send the job's status once the POST put it in the queue; answer the client's close
                    while time.monotonic() < deadline:
                        try:
                            self.wfile.write(ws_frame(fake.frames.get_nowait()))
                            self.wfile.flush()
                        except queue.Empty:
                            pass
                        if select.select([self.connection], [], [], 0.02)[0]:
                            self.connection.recv(1024)  # the client's close frame (or EOF)
                            self.wfile.write(ws_frame(b"\x03\xe8", opcode=0x8))
                            self.wfile.flush()
                            return
                except OSError:
                    pass

            def do_POST(self):
                fake.counts["request"] += 1
                fake.post_headers.append(dict(self.headers))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if fake.post_status is not None:
                    return self.reply(fake.post_status, {"detail": fake.detail})
                self.reply(200, {"id": "job-1", "status": "RECEIVED", "description": "received"})
                if fake.job_error is not None:
                    fake.frames.put(json.dumps({"id": "job-1", "status": "ERROR",
                                                "description": fake.job_error}).encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


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


# ------------------------------------------------------------------ end to end


def test_connection_refused_is_retried_then_names_the_host(remote_run):
    url = f"http://127.0.0.1:{free_port()}"
    err, sleeps = call(remote_run, url, retries=2)
    msg = str(err)
    assert msg.startswith(f"could not reach NDIF at {url} (connection refused) after 3 tries")
    assert "check the host" in msg and "\n" not in msg
    assert sleeps == [1.0, 2.0] and err.attempts == 3 and err.failure.transient
    assert isinstance(err.__cause__, ConnectionRefusedError)


@pytest.mark.parametrize("where", ["handshake", "post"])
def test_http_401_is_an_api_key_error_not_retried(remote_run, where):
    kw = {"ws_status": 401} if where == "handshake" else {"post_status": 401}
    with FakeNDIF(detail="Invalid API key", **kw) as srv:
        err, sleeps = call(remote_run, srv.url)
    msg = str(err)
    assert msg.startswith("NDIF rejected the API key (HTTP 401)")
    assert "Invalid API key" in msg and "set_default_api_key" in msg and "NDIF_API_KEY" in msg
    assert sleeps == [] and srv.counts["subscribe"] == 1
    assert srv.counts["request"] == (1 if where == "post" else 0)
    assert err.__cause__ is not None


def test_http_404_model_not_on_ndif(remote_run):
    with FakeNDIF(post_status=404, detail="Model superscopes/tiny-llama is not deployed") as srv:
        err, sleeps = call(remote_run, srv.url)
    msg = str(err)
    assert f"NDIF at {srv.url} does not serve" in msg and "HTTP 404" in msg and "not deployed" in msg
    assert sleeps == [] and srv.counts["request"] == 1
    assert isinstance(err.__cause__, RemoteError) and isinstance(err.__cause__.__cause__, httpx.HTTPStatusError)


@pytest.mark.parametrize("status", [503, 429])
def test_http_503_and_429_are_retried(remote_run, status):
    with FakeNDIF(post_status=status, detail="overloaded") as srv:
        err, sleeps = call(remote_run, srv.url, retries=2)
    msg = str(err)
    assert f"HTTP {status}" in msg and "after 3 tries" in msg and "overloaded" in msg and srv.url in msg
    assert srv.counts["request"] == 3 and srv.counts["subscribe"] == 3
    assert sleeps == [1.0, 2.0]


def test_websocket_dropped_is_retried(remote_run):
    with FakeNDIF(ws_drop=True) as srv:
        err, sleeps = call(remote_run, srv.url, retries=1)
    assert "websocket closed" in str(err) and "after 2 tries" in str(err)
    assert srv.counts["subscribe"] == 2 and srv.counts["request"] == 0 and sleeps == [1.0]


def test_server_side_job_error_carries_the_server_message(remote_run):
    with FakeNDIF(job_error="CUDA out of memory. Tried to allocate 2.00 GiB") as srv:
        err, sleeps = call(remote_run, srv.url)
    assert str(err) == "NDIF job failed on the server: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert isinstance(err.__cause__, RemoteError) and sleeps == [] and srv.counts["request"] == 1


@pytest.mark.parametrize("how", ["post", "job"])
def test_version_mismatch(remote_run, how):
    text = "nnsight version mismatch: client 0.8.1 is not supported, the server requires nnsight 0.9.0"
    kw = {"post_status": 400, "detail": text} if how == "post" else {"job_error": text}
    with FakeNDIF(**kw) as srv:
        err, sleeps = call(remote_run, srv.url)
    msg = str(err)
    assert msg.startswith("nnsight version mismatch: client 0.8.1, server says") and "0.9.0" in msg
    assert sleeps == [] and srv.counts["request"] == 1
    assert srv.post_headers[0].get("nnsight-version") == "0.8.1"  # what the server gates on


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
    with pytest.raises(NDIFError, match=r"timed out\) after 4 tries") as info:
        call_remote(fn, retries=3, sleep=sleeps.append, host="https://ndif.example")
    assert len(calls) == 4 and sleeps == [1.0, 2.0, 4.0] and isinstance(info.value.__cause__, TimeoutError)


def test_permanent_failure_is_not_retried():
    fn, calls = failing(10, RemoteError("Traceback ... KeyError: 'model.layers.99'"))
    with pytest.raises(NDIFError, match="NDIF job failed on the server: Traceback"):
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
    assert not forbidden.transient and forbidden.status == 403 and "Key revoked" in forbidden.message
    resp = httpx.Response(502, text="<html>Bad Gateway</html>", request=request)
    gateway = classify(_wrapped(httpx.HTTPStatusError("502", request=request, response=resp)))
    assert gateway.transient and "HTTP 502" in gateway.message
    assert classify(KeyError("x")) is None
