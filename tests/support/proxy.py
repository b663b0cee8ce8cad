"""A loopback HTTP proxy in front of a test registry: counts, redirects and faults.

`RegistryProxy(upstream_url)` forwards every request and records it, so tests can
assert "zero blob GETs" (`proxy.count("GET", BLOB_PATH)`). With
`redirect_blobs=True` blob GETs are answered 307 to a second loopback server
(`proxy.blob_store`) that serves the same bytes and records any Authorization
header it receives. `proxy.faults` is the hook for failures: each `Fault`
applies to the next `times` matching requests, e.g.

    proxy.faults.append(ServerErrors(status=503, times=2))
    proxy.faults.append(RateLimited(retry_after=1))
    proxy.faults.append(ResetMidBody(after_bytes=1000))
    proxy.faults.append(Trickle(chunk_size=100, delay=0.05))
    proxy.faults.append(CorruptBody())
    proxy.faults.append(held := Held(at=1_000_000)); ...; held.release.set()
"""

from __future__ import annotations

import contextlib
import http.client
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: Matches the path of a blob request: /v2/<repository>/blobs/sha256:<hex>.
BLOB_PATH = r"^/v2/.+/blobs/sha256:[a-f0-9]{64}$"
MANIFEST_PATH = r"^/v2/.+/manifests/"
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                "proxy-connection", "te", "upgrade"}
_UPSTREAM_TIMEOUT = 30.0
#: How long a held body waits for its release at most.
_HOLD_TIMEOUT = 60.0


@dataclass
class Request:
    """A request the proxy (or blob store) received."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    """What the proxy sends back; faults change it."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: Content-Length to announce (default: len(body)).
    content_length: int | None = None
    #: Reset the connection (TCP RST) after this many body bytes.
    cut_after: int | None = None
    chunk_size: int = 64 * 1024
    chunk_delay: float = 0.0
    #: Send this many body bytes, then wait for `release` before the rest.
    hold_at: int | None = None
    release: threading.Event | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class Fault:
    """Base of the fault hook: affects the next `times` requests matching method and path.

    Subclasses set `canned = True` and build a reply in `apply(request, None)`
    (the registry is not asked), or change the forwarded `reply` and return it.
    `times=None` affects every matching request.
    """

    canned = False

    def __init__(self, path: str = BLOB_PATH, *, method: str = "GET", times: int | None = 1):
        self.path = re.compile(path)
        self.method = method
        self.remaining = times
        self.hits = 0
        self._lock = threading.Lock()

    def claim(self, request: Request) -> bool:
        if request.method != self.method or not self.path.search(request.path):
            return False
        with self._lock:
            if self.remaining is not None:
                if self.remaining <= 0:
                    return False
                self.remaining -= 1
            self.hits += 1
            return True

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        raise NotImplementedError


class ServerErrors(Fault):
    """Answers `status` (default 503) without asking the registry: a burst of 5xx."""

    canned = True

    def __init__(self, path: str = BLOB_PATH, *, status: int = 503, method: str = "GET",
                 times: int | None = 1):
        super().__init__(path, method=method, times=times)
        self.status = status

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected failure"}]}'
        return Reply(self.status, [("Content-Type", "application/json")], body)


class RateLimited(Fault):
    """Answers 429 Too Many Requests with `Retry-After: <retry_after>`."""

    canned = True

    def __init__(self, path: str = BLOB_PATH, *, retry_after: int = 1, method: str = "GET",
                 times: int | None = 1):
        super().__init__(path, method=method, times=times)
        self.retry_after = retry_after

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        return Reply(429, [("Retry-After", str(self.retry_after)),
                           ("Content-Type", "application/json")],
                     b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')


class ResetMidBody(Fault):
    """Announces the full length, sends `after_bytes` of the body, then resets the connection."""

    def __init__(self, path: str = BLOB_PATH, *, after_bytes: int = 1024, method: str = "GET",
                 times: int | None = 1):
        super().__init__(path, method=method, times=times)
        self.after_bytes = after_bytes

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        assert reply is not None
        reply.cut_after = self.after_bytes
        return reply


class Trickle(Fault):
    """Sends the body `chunk_size` bytes at a time with `delay` seconds between chunks."""

    def __init__(self, path: str = BLOB_PATH, *, chunk_size: int = 256, delay: float = 0.05,
                 method: str = "GET", times: int | None = 1):
        super().__init__(path, method=method, times=times)
        self.chunk_size = chunk_size
        self.delay = delay

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        assert reply is not None
        reply.chunk_size, reply.chunk_delay = self.chunk_size, self.delay
        return reply


class Held(Fault):
    """Sends the first `at` bytes of the body (all but the last -`at` when negative),
    then waits for `release` (set by the test) before the rest: a download caught
    half-way, for as long as the test needs."""

    def __init__(self, path: str = BLOB_PATH, *, at: int, method: str = "GET",
                 times: int | None = 1):
        super().__init__(path, method=method, times=times)
        self.at = at
        self.release = threading.Event()

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        assert reply is not None
        reply.hold_at = self.at if self.at >= 0 else max(0, len(reply.body) + self.at)
        reply.release = self.release
        return reply


class CorruptBody(Fault):
    """Flips one byte in the middle of the body (same length, wrong sha256)."""

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        assert reply is not None
        if reply.body:
            middle = len(reply.body) // 2
            flipped = bytes([reply.body[middle] ^ 0xFF])
            reply.body = reply.body[:middle] + flipped + reply.body[middle + 1:]
        return reply


class ExtraBytes(Fault):
    """Appends `extra` to the body (and to Content-Length): a blob bigger than declared."""

    def __init__(self, path: str = BLOB_PATH, *, extra: bytes = b"\0" * 4096, method: str = "GET",
                 times: int | None = 1):
        super().__init__(path, method=method, times=times)
        self.extra = extra

    def apply(self, request: Request, reply: Reply | None) -> Reply:
        assert reply is not None
        reply.body += self.extra
        return reply


class BlobStore:
    """A loopback server that serves registered bytes (with Range) and records auth headers."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _blob_store_handler(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> str:
        """Registers `data` under a fresh unguessable URL and returns it."""
        key = secrets.token_hex(8)
        self._blobs[key] = data
        return f"{self.url}/blob/{key}"

    def get(self, key: str) -> bytes | None:
        return self._blobs.get(key)

    @property
    def authorization_headers(self) -> list[str]:
        """Authorization headers received (an empty list is what tests want)."""
        return [r.headers["authorization"] for r in self.requests if "authorization" in r.headers]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class RegistryProxy:
    """A counting, optionally redirecting, fault-injecting proxy for one upstream registry."""

    def __init__(self, upstream_url: str, *, redirect_blobs: bool = False) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        parts = urlsplit(self.upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.blob_store = BlobStore() if redirect_blobs else None
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(self))
        self._httpd.daemon_threads = True
        port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.host = f"127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def count(self, method: str, path: str = ".*") -> int:
        """How many `method` requests had a path matching regex `path`."""
        pattern = re.compile(path)
        with self._lock:
            return sum(1 for r in self.requests if r.method == method and pattern.search(r.path))

    def blob_gets(self) -> int:
        return self.count("GET", BLOB_PATH)

    def clear(self) -> None:
        """Forgets recorded requests (faults stay)."""
        with self._lock:
            self.requests.clear()

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def fault_for(self, request: Request) -> Fault | None:
        return next((f for f in list(self.faults) if f.claim(request)), None)

    def forward(self, request: Request, body: bytes, *, full: bool = False) -> Reply:
        """Sends the request upstream and returns the whole answer."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        if full:
            headers.pop("range", None)
        connection = http.client.HTTPConnection(*self._upstream, timeout=_UPSTREAM_TIMEOUT)
        try:
            connection.request(request.method, request.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            reply_headers = [(k, self._rewrite(k, v)) for k, v in response.getheaders()
                             if k.lower() not in _HOP_HEADERS]
            length = response.getheader("Content-Length")
        finally:
            connection.close()
        reply = Reply(response.status, reply_headers, data)
        if request.method == "HEAD" and length is not None:
            reply.content_length = int(length)
        return reply

    def _rewrite(self, name: str, value: str) -> str:
        if name.lower() == "location" and value.startswith(self.upstream_url):
            return self.url + value[len(self.upstream_url):]
        return value

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        if self.blob_store is not None:
            self.blob_store.stop()

    def __enter__(self) -> RegistryProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _read_request(self) -> tuple[Request, bytes]:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        return Request(self.command, self.path, headers), body

    def send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        length = reply.content_length if reply.content_length is not None else len(reply.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        body = reply.body if reply.cut_after is None else reply.body[:reply.cut_after]
        parts = [body] if reply.hold_at is None else [body[:reply.hold_at], body[reply.hold_at:]]
        for number, part in enumerate(parts):
            if number and reply.release is not None:
                reply.release.wait(_HOLD_TIMEOUT)
            for chunk in _chunks(part, reply.chunk_size):
                self.wfile.write(chunk)
                self.wfile.flush()
                if reply.chunk_delay:
                    time.sleep(reply.chunk_delay)
        if reply.cut_after is not None:
            self._reset()

    def _reset(self) -> None:
        """Closes the connection with a TCP RST, as a crashed server would."""
        self.wfile.flush()
        # Give the client time to read what was sent: an RST discards unread data.
        time.sleep(0.2)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), max(1, size)):
        yield data[start:start + size]


def _proxy_handler(proxy: RegistryProxy) -> type[BaseHTTPRequestHandler]:
    class ProxyHandler(_Handler):
        def handle_any(self) -> None:
            request, body = self._read_request()
            proxy.record(request)
            fault = proxy.fault_for(request)
            if fault is not None and fault.canned:
                self.send(fault.apply(request, None))
                return
            redirect = (proxy.blob_store is not None and request.method == "GET"
                        and re.search(BLOB_PATH, request.path))
            reply = proxy.forward(request, body, full=bool(redirect))
            if redirect and reply.status == 200 and proxy.blob_store is not None:
                location = proxy.blob_store.put(reply.body)
                reply = Reply(307, [("Location", location)])
            if fault is not None:
                reply = fault.apply(request, reply)
            self.send(reply)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any  # noqa: N815

    return ProxyHandler


def _blob_store_handler(store: BlobStore) -> type[BaseHTTPRequestHandler]:
    class BlobStoreHandler(_Handler):
        def handle_any(self) -> None:
            request, _ = self._read_request()
            store.requests.append(request)
            data = store.get(request.path.rsplit("/", 1)[-1].split("?", 1)[0])
            if data is None:
                self.send(Reply(404, body=b"no such blob"))
                return
            match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("range", ""))
            if match and int(match.group(1)) < len(data):
                start = int(match.group(1))
                content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
                self.send(Reply(206, [("Content-Range", content_range),
                                      ("Accept-Ranges", "bytes")], data[start:]))
                return
            self.send(Reply(200, [("Accept-Ranges", "bytes"),
                                  ("Content-Type", "application/octet-stream")], data))

        do_GET = do_HEAD = handle_any  # noqa: N815

    return BlobStoreHandler


class SilentServer:
    """A loopback socket that accepts connections and never answers."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._sock.accept()
                self.accepted.append(connection)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() below
        self._sock.close()
        for connection in self.accepted:
            connection.close()
        self._thread.join(timeout=5)
