"""One webhook POST, to an address that passed the policy, within a hard deadline.

Built on httpcore (the HTTP/1.1 engine under httpx, same maintainers) because its
``ConnectionPool`` takes a ``network_backend``: :class:`PinnedBackend` is where the connection is
made, so the check and the connection cannot disagree. It resolves the host itself (the lookup
bounded by the deadline; a failed lookup refuses: fail closed), checks every address with the
:class:`~crawlstream.addresses.AddressPolicy`, then connects to one of the checked IPs. httpcore
still sends ``Host`` and TLS SNI (and verifies the certificate) for the URL's own host, so a
DNS answer that changes between the start-up check and a delivery (rebinding) changes nothing.
httpcore never follows redirects: a 3xx is an answer like any other, and the caller fails it.

Every read and write of a connection is bounded by the attempt's deadline (:class:`Deadline`),
not only by a per-operation timeout, so a receiver that drips a byte per second (or reads ours
that slowly) cannot hold an attempt beyond it. At most ``max_response_bytes`` of an answer are
read (h11 caps the header block at 100 KiB); a longer answer is cut and its connection closed.
"""

from __future__ import annotations

import email.utils
import math
import ssl
import time
import typing
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import urlsplit

import httpcore
from httpcore._backends.base import SOCKET_OPTION  # the type NetworkBackend declares

from crawlstream.addresses import AddressPolicy, AddressRefused, Resolver, resolve

WRITE_CHUNK = 16 * 1024
# Lookups run here so that a hanging resolver cannot outlast the deadline (the lookup thread
# finishes on its own later); a few threads serve every receiver.
_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")


def redact(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what logs and dead letters show of a receiver (its
    path and query may carry a token)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class Deadline:
    """The end of the current attempt (monotonic clock), read by every operation of a receiver's
    connections. One receiver, one worker thread: no lock needed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at = math.inf

    def left(self, timeout: float | None, expired: type[Exception]) -> float:
        remaining = self.at - self.clock()
        if remaining <= 0:
            raise expired("webhook attempt deadline passed")
        return remaining if timeout is None else min(timeout, remaining)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads, writes and TLS handshake end by the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # Piece by piece, each with what is left: a receiver reading slowly cannot stretch one
        # write over several timeouts.
        view = memoryview(buffer)
        while view:
            piece = view[:WRITE_CHUNK]
            self._inner.write(bytes(piece), self._deadline.left(timeout, httpcore.WriteTimeout))
            view = view[len(piece) :]

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = self._deadline.left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Resolve, check every address against the policy, connect to a checked IP."""

    def __init__(
        self,
        policy: AddressPolicy,
        deadline: Deadline,
        resolver: Resolver = resolve,
        connector: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.policy, self.deadline, self.resolver = policy, deadline, resolver
        self.connector = connector or httpcore.SyncBackend()
        self.connected_to: str | None = None  # the address of the last connection

    def lookup(self, host: str, port: int) -> list[str]:
        future = _LOOKUPS.submit(self.resolver, host, port)
        try:
            addresses = future.result(timeout=self.deadline.left(None, httpcore.ConnectTimeout))
        except FutureTimeout:
            future.cancel()
            raise AddressRefused("unresolvable", f"{host}: lookup outlasted the deadline") from None
        except (OSError, UnicodeError) as exc:
            raise AddressRefused("unresolvable", f"{host}: {exc}") from None
        if not addresses:
            raise AddressRefused("unresolvable", f"{host}: no address")
        return list(addresses)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.lookup(host, port)
        for address in addresses:  # every one, before any connection: none may be private
            self.policy.check_address(host, port, address)
        failure: Exception = httpcore.ConnectError(f"{host}: no address to connect to")
        for address in addresses:
            try:
                stream = self.connector.connect_tcp(
                    address,  # the checked IP itself: no second lookup can answer differently
                    port,
                    timeout=self.deadline.left(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
                continue
            self.connected_to = address
            return DeadlineStream(stream, self.deadline)
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.UnsupportedProtocol("webhooks are delivered over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class Answer:
    """What a receiver answered: status, its Retry-After in seconds if any, bytes read."""

    status: int
    retry_after_s: float | None
    body_bytes_read: int
    body_truncated: bool


class WebhookClient:
    """POSTs to one receiver URL; one per receiver, used by its worker thread only."""

    def __init__(
        self,
        url: str,
        policy: AddressPolicy,
        *,
        max_response_bytes: int,
        resolver: Resolver = resolve,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.max_response_bytes, self.clock = url, max_response_bytes, clock
        self.deadline = Deadline(clock)
        self.backend = PinnedBackend(policy, self.deadline, resolver)
        self.pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            max_keepalive_connections=1,
            keepalive_expiry=30.0,
            network_backend=self.backend,
        )

    def post(self, body: bytes, headers: list[tuple[str, str]], deadline_at: float) -> Answer:
        """One attempt, over by ``deadline_at`` (monotonic clock) whatever the receiver does.
        Raises httpcore's timeout, network and protocol errors, and AddressRefused."""
        self.deadline.at = deadline_at
        left = self.deadline.left(None, httpcore.ConnectTimeout)
        timeouts = {"connect": left, "read": left, "write": left, "pool": left}
        with self.pool.stream(
            "POST", self.url, headers=headers, content=body, extensions={"timeout": timeouts}
        ) as response:
            read, truncated = 0, False
            if self.max_response_bytes > 0:
                for chunk in response.iter_stream():
                    read += len(chunk)
                    if read >= self.max_response_bytes:
                        truncated = True  # closing an unfinished answer closes its connection
                        break
            else:
                truncated = True
            wait = retry_after_seconds(_header(response.headers, b"retry-after"), time.time())
            return Answer(response.status, wait, min(read, self.max_response_bytes), truncated)

    def close(self) -> None:
        self.pool.close()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta-seconds or an HTTP date); None when absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value[:9]))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
