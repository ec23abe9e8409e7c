"""Loopback webhook receivers with scripted behaviours (healthy, failing, dripping, garbage,
huge, redirecting), for the follower's unit and integration tests. Raw sockets, so a receiver can
misbehave in ways an HTTP server library would not allow. Bounded in time: ``close()`` ends every
connection and behaviour."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str


Behaviour = Callable[["Receiver", socket.socket, Request], bool]  # True: keep the connection


@dataclass
class Receiver:
    behaviour: Behaviour
    host: str = "127.0.0.1"
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    server_names: list[str | None] = field(default_factory=list)  # TLS SNI of each connection

    def __post_init__(self) -> None:
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/hook?token=s3cr3t-token", host: str | None = None) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                continue
            with self.lock:
                self.connections += 1
                self.open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        buffer = b""
        try:
            if self.tls is not None:
                self.tls.sni_callback = self._record_sni
                conn = self.tls.wrap_socket(conn, server_side=True)
            while not self.stopped.is_set():
                request, buffer = _read_request(conn, buffer, self.stopped)
                if request is None:
                    return
                with self.lock:
                    self.requests.append(request)
                if not self.behaviour(self, conn, request):
                    return
        except OSError:
            return
        finally:
            conn.close()

    def _record_sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        with self.lock:
            for conn in self.open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def _read_request(
    conn: socket.socket, buffer: bytes, stopped: threading.Event
) -> tuple[Request | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        if stopped.is_set() or len(buffer) > 1 << 20:
            return None, b""
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            if stopped.is_set():
                return None, b""
            continue
        if not chunk:
            return None, b""
        rest += chunk
    peer = conn.getpeername()[0]
    return Request(method, path, headers, rest[:length], peer), rest[length:]


def answer(status: int, body: bytes = b"", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def healthy(status: int = 204) -> Behaviour:
    def behave(_r: Receiver, conn: socket.socket, _req: Request) -> bool:
        conn.sendall(answer(status))
        return True

    return behave


def fails_first(status: int = 500, extra: str = "") -> Behaviour:
    """Each delivery's first attempt gets ``status``, its retries 200."""
    seen: set[str] = set()

    def behave(_r: Receiver, conn: socket.socket, req: Request) -> bool:
        delivery = req.headers.get("x-crawlstream-delivery", "")
        if delivery in seen:
            conn.sendall(answer(200, b"ok"))
        else:
            seen.add(delivery)
            conn.sendall(answer(status, b"try again", extra))
        return True

    return behave


def redirect(location: str) -> Behaviour:
    def behave(_r: Receiver, conn: socket.socket, _req: Request) -> bool:
        conn.sendall(answer(302, extra=f"Location: {location}\r\n"))
        return True

    return behave


def drip(every_s: float = 0.2) -> Behaviour:
    """Starts an answer and sends one byte of it per ``every_s``, forever (until closed)."""

    def behave(r: Receiver, conn: socket.socket, _req: Request) -> bool:
        endless = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000_000
        for i in range(len(endless)):
            if r.stopped.wait(every_s):
                return False
            conn.sendall(endless[i : i + 1])
        return False

    return behave


def garbage_or_huge() -> Behaviour:
    """Alternates per connection: bytes that are not HTTP, or a 200 whose body never ends."""

    def behave(r: Receiver, conn: socket.socket, _req: Request) -> bool:
        if r.connections % 2:
            conn.sendall(b"\x00\xff\xfeNOT HTTP AT ALL\r\n\r\n" + bytes(range(256)) * 64)
            return False
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        chunk = b"\xff" * 65536
        while not r.stopped.is_set():
            conn.sendall(chunk)  # until the client closes: OSError ends the connection
        return False

    return behave
