"""A fake NDIF on 127.0.0.1 for the transport tests (tests/test_ndif_errors.py)."""

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

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TIMEOUT = 5.0


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked (server -> client) websocket frame."""
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n))
    return head + payload


class _Server(http.server.ThreadingHTTPServer):
    """A client that refuses a result (an oversized one) closes the socket while the body is still being sent:
    that broken pipe is the client working as meant, so it is not printed as the server's traceback."""

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class FakeNDIF:
    """A threaded HTTP server playing one failure mode of NDIF.

    ``ws_status``: answer the websocket handshake with this HTTP status.
    ``ws_drop``: accept the handshake, then drop the TCP connection.
    ``post_status``: answer ``POST /request`` with this status and ``{"detail": detail}``.
    ``job_error``: accept the POST, then send an ERROR status with this description.
    ``drop_after_post``: accept the POST, then drop the websocket (the job keeps running).
    ``polls``: ``(status, body)`` answers to ``GET /response/{id}`` (then 404); ``result``:
    ``(status, bytes)`` for the presigned result URL ``GET /results/{id}``. ``status`` / ``env``: the
    bodies of ``GET /status`` / ``GET /env`` (recorded NDIF responses; None: 404).
    ``completed``: once ``polls`` run out, every poll answers COMPLETED with the result URL (a host that
    serves whatever ``result`` holds, e.g. a hostile one); ``result_length``: the ``Content-Length`` the
    result URL announces (default its true length; more: the body is cut off, a truncated download).
    """

    def __init__(self, ws_status=None, ws_drop=False, post_status=None, detail="", job_error=None,
                 drop_after_post=False, polls=(), result=(200, b""), status=None, env=None, completed=False,
                 result_length=None):
        self.ws_status, self.ws_drop, self.post_status = ws_status, ws_drop, post_status
        self.detail, self.job_error, self.drop_after_post = detail, job_error, drop_after_post
        self.polls, self.result = list(polls), result  # GET /response/{id} answers; GET /results/{id}
        self.completed, self.result_length = completed, result_length
        self.published = {"/status": status, "/env": env}  # recorded GET /status, GET /env bodies (None: 404)
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
                if self.path in fake.published:
                    fake.counts[self.path] += 1
                    body = fake.published[self.path]
                    return self.reply(404, {"detail": "Not Found"}) if body is None else self.reply(200, body)
                if self.path.startswith("/response/"):
                    fake.counts["poll"] += 1
                    if fake.polls:
                        status, body = fake.polls.pop(0)
                    elif fake.job_error is not None:  # the ERROR status NDIF stores for the job
                        status, body = 200, {"id": "job-1", "status": "ERROR", "description": fake.job_error}
                    elif fake.completed:
                        status, body = 200, {"id": "job-1", "status": "COMPLETED", "description": "done",
                                             "data": f"{fake.url}/results/job-1"}
                    else:
                        status, body = 404, {"detail": "none yet"}
                    return self.reply(status, body)
                if self.path.startswith("/results/"):
                    fake.counts["download"] += 1
                    status, data = fake.result
                    self.send_response(status)
                    self.send_header("Content-Length", str(fake.result_length or len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data)
                    self.close_connection = True
                    return
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
                            frame = fake.frames.get_nowait()
                            if frame is None:  # the job was accepted; now the connection drops
                                self.connection.shutdown(socket.SHUT_RDWR)
                                return
                            self.wfile.write(ws_frame(frame))
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
                if fake.drop_after_post:
                    fake.frames.put(None)
                if fake.job_error is not None:
                    fake.frames.put(json.dumps({"id": "job-1", "status": "ERROR",
                                                "description": fake.job_error}).encode())

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
