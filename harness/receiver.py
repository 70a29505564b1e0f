"""A real HTTP server on loopback that records requests and answers as it is told.

The base for the demo's webhook receiver and for every vendor emulator in the tests:
subclass-free, you pass a `responder` that maps a `ReceivedRequest` to a `Reply`.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-cased names
    body: bytes  # gzip already undone when Content-Encoding said so
    received_at: float  # time.monotonic()


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


Responder = Callable[[ReceivedRequest], Reply]


# A reply that closes the connection without answering (a vendor that hung up).
HANG_UP = Reply(status=-1)


def always(reply: Reply) -> Responder:
    return lambda _request: reply


class Receiver:
    """`with Receiver(responder) as receiver:` serves on `receiver.url` until the block ends."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or always(Reply(200, b"{}"))
        self._requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Without this, a keep-alive client's next request waits ~40 ms for the
            # delayed ACK of a response written in two sends (Nagle): the benchmark would
            # measure the receiver, not Broadcast.
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
                    body = gzip.decompress(body)
                request = ReceivedRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    received_at=time.monotonic(),
                )
                with receiver._lock:
                    receiver._requests.append(request)
                reply = receiver.responder(request)
                if reply.status < 0:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                # Headers and body in one send (`end_headers` would flush the headers alone).
                self._headers_buffer.append(b"\r\n" + reply.body)
                self.wfile.write(b"".join(self._headers_buffer))
                self._headers_buffer = []

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def requests(self, path_prefix: str = "") -> list[ReceivedRequest]:
        with self._lock:
            return [r for r in self._requests if r.path.startswith(path_prefix)]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
