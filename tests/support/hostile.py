"""A hostile web server for tests: every trap the open web sets for a crawler, on loopback only.

Usage::

    from tests.support.hostile import HostileWeb

    with HostileWeb(hosts=["127.0.10.1", "127.0.10.2"]) as web:
        start = web.url("/")                        # http://127.0.10.1:<port>/
        other = web.url("/page/1", host="127.0.10.2")
        ...crawl...
        assert web.requests_to(web.decoy) == []     # nothing reached the refused address
        assert [h.path for h in web.log if h.path.startswith("/trap/calendar/")]

One server listens on every address of ``hosts`` (all 127.0.0.0/8: each a distinct host, on one
shared port) and on a *decoy*: ``127.0.0.1`` on another port, the target of every redirect and link
to a private address (``web.decoy`` is its ``(host, port)``). A guarded crawler allowed only the
site's ``host:port`` must never reach the decoy; ``web.log`` proves it. Every request is logged
(:class:`Hit`: listener host and port, path, monotonic time, peer) before it is answered.

Bounded in time: each response ends within ``max_response_s`` (slow drips stop, big bodies are cut),
sockets time out after ``socket_timeout_s``, and ``close()`` stops every listener; handler threads
are daemons, so a test can never hang on this server.

Paths (``web.url(path)``; the 3,000-character URL is ``web.long_url()``):

===============================  ==============================================================
``/``                            index linking every trap below
``/robots.txt``                  ``Sitemap:`` lines for ``/sitemap.xml`` and the XML bombs
``/sitemap.xml``                 urlset listing the traps; ``/sitemap.xml.gz``: a gzip bomb
                                 (~1 GiB of zeros once decompressed)
``/feed.xml``                    RSS listing the traps
``/xml/sitemap-laughs.xml``      billion laughs in a sitemap; ``/xml/feed-laughs.xml`` in a feed
``/xml/sitemap-xxe.xml``         external entity (``file:///etc/passwd``) in a sitemap;
                                 ``/xml/feed-xxe.xml`` in a feed
``/page/<n>``                    an ordinary page linking ``/page/<n+1>`` (n < 50)
``/trap/calendar/<y>/<m>``       infinite calendar: links next and previous month, forever
``/trap/loop/a``                 redirect loop a -> b -> a
``/trap/chain/<n>``              endless redirect chain n -> n+1
``/huge``                        50 MB HTML body with Content-Length; ``/huge/stream``: the same
                                 without Content-Length (close-delimited)
``/slow``                        slow drip: headers, then 1 byte every ``drip_interval_s``
``/bomb/gzip``                   HTML with Content-Encoding gzip, ~1 GiB decompressed;
                                 ``/bomb/deflate``; ``/bomb/br`` (brotli, 256 MiB)
``/links/100k``                  100,000 distinct links
``/links/schemes``               links to file://, ftp://, gopher://, data:, javascript:,
                                 mailto: and a 3,000-character URL
``/links/private``               links to the decoy by every odd address form (see redirects)
``/encoding/<kind>``             ``invalid-utf8``, ``unknown-charset``, ``utf16-as-utf8``,
                                 ``bom-mismatch``
``/control-chars``               1 MB of control characters in an HTML body
``/rate-limited``                429 with ``Retry-After: 1`` the first time, then 200
``/redirect/<target>``           302 to: ``other-port`` (127.0.0.1:<decoy port>), ``other-host``
                                 (second host, same port), ``localhost``, ``mapped``
                                 ([::ffff:127.0.0.1]), ``mapped-hex`` ([::ffff:7f00:1]),
                                 ``decimal`` (2130706433), ``octal`` (0177.0.0.1), ``hex``
                                 (0x7f.0.0.1), ``short`` (127.1), ``metadata``
                                 (169.254.169.254), ``zero`` (0.0.0.0), ``file``, ``ftp``,
                                 ``gopher``, ``data``, ``javascript``, ``long`` (3,000+ chars);
                                 all but metadata aim at the decoy's port
``/long/<...>``                  what the long URL serves (a page), if ever fetched
``/api/endless?page=<n>``        JSON API whose ``next`` never ends; items ``/api/item/<n>``
``/stolen``                      what the decoy serves (a crawler must never fetch it)
===============================  ==============================================================

DNS rebinding: :func:`rebinding_resolver` is a resolver for ``CRAWLSTREAM_RESOLVER`` that answers
from the JSON table in the environment variable ``HOSTILE_DNS`` (host -> list of answers, the
n-th lookup of a host gets the n-th answer, the last one repeats), e.g. a public address for the
check and the decoy's 127.0.0.1 for the connect.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HUGE_BYTES = 50 * 1024 * 1024
BOMB_MIB = 1024
BROTLI_BOMB_MIB = 256
LINKS_100K = 100_000
CONTROL_CHARS_BYTES = 1024 * 1024
LONG_URL_CHARS = 3_000
CALENDAR_START = (2026, 12)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Hit:
    """One request the server received: which listener (host, port), what, when, from where."""

    host: str
    port: int
    path: str
    time: float
    peer: tuple[str, int]


def _html(title: str, links: Iterable[str] = (), body: str = "") -> bytes:
    anchors = "".join(f'<a href="{href}">{href[:80]}</a>\n' for href in links)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1>{body}{anchors}</body></html>"
    ).encode()


@functools.cache
def gzip_bomb(mib: int = BOMB_MIB, prefix: bytes = b"<html><body>") -> bytes:
    """A gzip stream of ``prefix`` and ``mib`` MiB of zeros, about 1 KiB per MiB.

    After a full flush deflate forgets its history, so every 1 MiB block of zeros compresses to
    the same bytes: the stream is built from one block, not by compressing a GiB.
    """
    raw, crc, size = _deflate_blocks(prefix, mib)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + raw + struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


@functools.cache
def deflate_bomb(mib: int = BOMB_MIB, prefix: bytes = b"<html><body>") -> bytes:
    """The same as :func:`gzip_bomb` in the zlib format (Content-Encoding: deflate)."""
    chunk = bytes(1 << 20)
    raw, _crc, _size = _deflate_blocks(prefix, mib)
    adler = zlib.adler32(prefix)
    for _ in range(mib):
        adler = zlib.adler32(chunk, adler)
    return b"\x78\xda" + raw + struct.pack(">I", adler & 0xFFFFFFFF)


def _deflate_blocks(prefix: bytes, mib: int) -> tuple[bytes, int, int]:
    chunk = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return head + block * mib + tail, crc, len(prefix) + mib * len(chunk)


@functools.cache
def brotli_bomb(mib: int = BROTLI_BOMB_MIB) -> bytes:
    import brotli  # Scrapy decodes br with it; only this path needs it

    compressor = brotli.Compressor(quality=1)
    chunk = bytes(1 << 20)
    parts = [compressor.process(b"<html><body>")]
    parts += [compressor.process(chunk) for _ in range(mib)]
    parts.append(compressor.finish())
    return b"".join(parts)


@functools.cache
def _links_page(count: int) -> bytes:
    anchors = "".join(f'<a href="/page/{n}">{n}</a>\n' for n in range(count))
    return f"<html><head><title>{count} links</title></head><body>{anchors}</body></html>".encode()


def _laughs(kind: str) -> bytes:
    entities = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{n} "{("&lol" + (str(n - 1) if n > 1 else "") + ";") * 10}">' for n in range(1, 10)
    )
    if kind == "sitemap":
        doc = (
            f"<?xml version='1.0'?><!DOCTYPE urlset [{entities}]>"
            "<urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
            "<url><loc>&lol9;</loc></url></urlset>"
        )
    else:
        doc = (
            f"<?xml version='1.0'?><!DOCTYPE rss [{entities}]><rss version='2.0'><channel>"
            "<title>&lol9;</title><item><title>&lol9;</title><link>&lol9;</link></item></channel></rss>"
        )
    return doc.encode()


def _xxe(kind: str, base: str) -> bytes:
    dtd = "<!DOCTYPE r [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>"
    if kind == "sitemap":
        doc = (
            f"<?xml version='1.0'?>{dtd}<urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>"
            f"<url><loc>{base}/page/1?leak=&xxe;</loc></url><url><loc>&xxe;</loc></url></urlset>"
        )
    else:
        doc = (
            f"<?xml version='1.0'?>{dtd}<rss version='2.0'><channel><title>x</title>"
            f"<item><title>&xxe;</title><link>{base}/page/2?leak=&xxe;</link></item>"
            "<item><link>&xxe;</link></item></channel></rss>"
        )
    return doc.encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, web: HostileWeb, address: tuple[str, int]) -> None:
        self.web = web
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a client that hung up or timed out: what capped crawlers do
            return
        self.web.errors.append(repr(error))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.web.socket_timeout_s  # StreamRequestHandler applies it
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        web = self.server.web
        host, port = self.server.server_address[:2]
        web._record(Hit(str(host), int(port), self.path, time.monotonic(), self.client_address[:2]))
        try:
            web._answer(self)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up: what a crawler with caps does

    do_HEAD = do_GET

    # Helpers the routes use.
    def send(self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send(status, b"", Location=location)

    def stream(self, chunks: Iterator[bytes], ctype: str = "text/html", length: int | None = None) -> None:
        """Send ``chunks`` until they end, the client leaves or the response deadline passes."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        deadline = time.monotonic() + self.server.web.max_response_s
        for chunk in chunks:
            if time.monotonic() > deadline or self.server.web.stopping.is_set():
                self.close_connection = True
                return
            self.wfile.write(chunk)


Route = Callable[[_Handler, str, dict[str, list[str]]], None]


class HostileWeb:
    """The hostile server; see the module docstring for its paths."""

    def __init__(
        self,
        hosts: Sequence[str] = ("127.0.10.1",),
        *,
        decoy_host: str = "127.0.0.1",
        max_response_s: float = 20.0,
        socket_timeout_s: float = 10.0,
        drip_interval_s: float = 0.2,
    ) -> None:
        for host in [*hosts, decoy_host]:
            if not host.startswith("127."):
                raise ValueError(f"HostileWeb serves on loopback (127.0.0.0/8) only, not {host!r}")
        if not hosts:
            raise ValueError("HostileWeb needs at least one host")
        self.hosts = list(hosts)
        self.max_response_s = max_response_s
        self.socket_timeout_s = socket_timeout_s
        self.drip_interval_s = drip_interval_s
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._log: list[Hit] = []
        self.errors: list[str] = []  # handler errors other than clients hanging up (should stay empty)
        self._served_once: set[str] = set()
        self._servers: list[_Server] = []
        self.port = 0
        self._bind_all(decoy_host)
        self.decoy: tuple[str, int] = (decoy_host, self._servers[-1].server_address[1])
        for server in self._servers:
            threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()

    def _bind_all(self, decoy_host: str) -> None:
        for _attempt in range(20):
            servers: list[_Server] = []
            try:
                first = _Server(self, (self.hosts[0], 0))
                servers.append(first)
                port = first.server_address[1]
                servers += [_Server(self, (host, port)) for host in self.hosts[1:]]
                servers.append(_Server(self, (decoy_host, 0)))
            except OSError as exc:
                for server in servers:
                    server.server_close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            self._servers, self.port = servers, port
            return
        raise OSError("no port free on every host")

    # The API tests use.
    def __enter__(self) -> HostileWeb:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def netloc(self, host: str | None = None) -> str:
        return f"{host or self.hosts[0]}:{self.port}"

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{self.netloc(host)}{path if path.startswith('/') else '/' + path}"

    def long_url(self, host: str | None = None) -> str:
        stem = self.url("/long/", host)
        return stem + "x" * (LONG_URL_CHARS - len(stem))

    @property
    def log(self) -> list[Hit]:
        with self._lock:
            return list(self._log)

    def requests_to(self, listener: tuple[str, int] | None = None, path_prefix: str = "") -> list[Hit]:
        """Hits on one listener ((host, port); None: any) whose path starts with ``path_prefix``."""
        return [
            hit
            for hit in self.log
            if (listener is None or (hit.host, hit.port) == listener) and hit.path.startswith(path_prefix)
        ]

    def wait_for_hits(self, path_prefix: str, count: int = 1, timeout_s: float = 30.0) -> list[Hit]:
        deadline = time.monotonic() + timeout_s
        while True:
            hits = self.requests_to(None, path_prefix)
            if len(hits) >= count or time.monotonic() > deadline:
                return hits
            time.sleep(0.05)  # polling the log until the condition holds

    def redirect_targets(self) -> dict[str, str]:
        """Where each ``/redirect/<name>`` points."""
        port = self.decoy[1]
        targets = {
            "other-port": f"http://127.0.0.1:{port}/stolen",
            "localhost": f"http://localhost:{port}/stolen",
            "mapped": f"http://[::ffff:127.0.0.1]:{port}/stolen",
            "mapped-hex": f"http://[::ffff:7f00:1]:{port}/stolen",
            "decimal": f"http://2130706433:{port}/stolen",
            "octal": f"http://0177.0.0.1:{port}/stolen",
            "hex": f"http://0x7f.0.0.1:{port}/stolen",
            "short": f"http://127.1:{port}/stolen",
            "metadata": "http://169.254.169.254/latest/meta-data/",
            "zero": f"http://0.0.0.0:{port}/stolen",
            "file": "file:///etc/passwd",
            "ftp": f"ftp://127.0.0.1:{port}/stolen",
            "gopher": f"gopher://127.0.0.1:{port}/_stolen",
            "data": "data:text/html,<h1>stolen</h1>",
            "javascript": "javascript:alert(1)",
            "long": self.long_url(),
        }
        if len(self.hosts) > 1:
            targets["other-host"] = self.url("/stolen", host=self.hosts[1])
        return targets

    def trap_paths(self) -> list[str]:
        paths = [
            f"/trap/calendar/{CALENDAR_START[0]}/{CALENDAR_START[1]}",
            "/trap/loop/a",
            "/trap/chain/0",
            "/huge",
            "/huge/stream",
            "/slow",
            "/bomb/gzip",
            "/bomb/deflate",
            "/bomb/br",
            "/links/100k",
            "/links/schemes",
            "/links/private",
            "/control-chars",
            "/rate-limited",
            "/page/0",
            "/api/endless?page=0",
        ]
        paths += [
            f"/encoding/{kind}"
            for kind in ("invalid-utf8", "unknown-charset", "utf16-as-utf8", "bom-mismatch")
        ]
        paths += [f"/redirect/{name}" for name in self.redirect_targets()]
        return paths

    # Serving.
    def _record(self, hit: Hit) -> None:
        with self._lock:
            self._log.append(hit)

    def _once(self, key: str) -> bool:
        with self._lock:
            first = key not in self._served_once
            self._served_once.add(key)
            return first

    def _base(self, handler: _Handler) -> str:
        host, port = handler.server.server_address[:2]
        return f"http://{host}:{port}"

    def _answer(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        path, query = parts.path, parse_qs(parts.query)
        if (handler.server.server_address[0], handler.server.server_address[1]) == self.decoy:
            handler.send(200, _html("Stolen", body="<p>a refused address answered</p>"))
            return
        for prefix, route in self._routes():
            # "/x/" routes take a suffix; every other route is one exact path.
            if path == prefix or (len(prefix) > 1 and prefix.endswith("/") and path.startswith(prefix)):
                route(handler, path.removeprefix(prefix), query)
                return
        handler.send(404, b"not found", "text/plain")

    def _routes(self) -> list[tuple[str, Route]]:
        return [
            ("/", self._index),
            ("/robots.txt", self._robots),
            ("/sitemap.xml", self._sitemap),
            ("/sitemap.xml.gz", self._sitemap_bomb),
            ("/feed.xml", self._feed),
            ("/xml/", self._xml),
            ("/page/", self._page),
            ("/trap/calendar/", self._calendar),
            ("/trap/loop/", self._loop),
            ("/trap/chain/", self._chain),
            ("/huge", self._huge),
            ("/huge/stream", self._huge),
            ("/slow", self._slow),
            ("/bomb/", self._bomb),
            ("/links/", self._links),
            ("/encoding/", self._encoding),
            ("/control-chars", self._control_chars),
            ("/rate-limited", self._rate_limited),
            ("/redirect/", self._redirect),
            ("/long/", self._long),
            ("/api/endless", self._api),
            ("/api/item/", self._page),
            ("/stolen", self._stolen),
        ]

    def _index(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        h.send(200, _html("Hostile index", self.trap_paths()))

    def _robots(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        base = self._base(h)
        names = ("sitemap.xml", "sitemap.xml.gz", "xml/sitemap-laughs.xml", "xml/sitemap-xxe.xml")
        body = "User-agent: *\nDisallow: /private/\n" + "".join(f"Sitemap: {base}/{n}\n" for n in names)
        h.send(200, body.encode(), "text/plain")

    def _sitemap(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        base = self._base(h)
        urls = "".join(f"<url><loc>{base}{p.replace('&', '&amp;')}</loc></url>" for p in self.trap_paths())
        urls += f"<url><loc>{self.long_url(h.server.server_address[0])}</loc></url>"
        urls += "<url><loc>file:///etc/passwd</loc></url>"
        body = f"<?xml version='1.0'?><urlset xmlns='http://www.sitemaps.org/schemas/sitemap/0.9'>{urls}</urlset>"
        h.send(200, body.encode(), "application/xml")

    def _sitemap_bomb(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        h.send(200, gzip_bomb(BOMB_MIB, b"<?xml version='1.0'?><urlset><url><loc>"), "application/x-gzip")

    def _feed(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        base = self._base(h)
        links = [base + p for p in self.trap_paths()] + [self.long_url(h.server.server_address[0])]
        links += ["file:///etc/passwd", "javascript:alert(1)", f"http://127.0.0.1:{self.decoy[1]}/stolen"]
        items = "".join(f"<item><title>t</title><link>{u.replace('&', '&amp;')}</link></item>" for u in links)
        body = (
            f"<?xml version='1.0'?><rss version='2.0'><channel><title>hostile</title>{items}</channel></rss>"
        )
        h.send(200, body.encode(), "application/rss+xml")

    def _xml(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        kind, _, attack = rest.removesuffix(".xml").partition("-")
        if kind not in ("sitemap", "feed") or attack not in ("laughs", "xxe"):
            h.send(404, b"not found", "text/plain")
            return
        body = _laughs(kind) if attack == "laughs" else _xxe(kind, self._base(h))
        h.send(200, body, "application/xml" if kind == "sitemap" else "application/rss+xml")

    def _page(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        n = int(rest) if rest.isdigit() else 0
        h.send(200, _html(f"Page {n}", [f"/page/{n + 1}"] if n < 50 else []))

    def _calendar(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        try:
            year, month = (int(x) for x in rest.strip("/").split("/")[:2])
        except ValueError:
            year, month = CALENDAR_START
        nxt = (year + month // 12, month % 12 + 1)
        prev = (year - 1, 12) if month == 1 else (year, month - 1)
        links = [f"/trap/calendar/{y}/{m}" for y, m in (nxt, prev)]
        h.send(200, _html(f"Calendar {year}-{month:02d}", links))

    def _loop(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        h.redirect("/trap/loop/b" if rest == "a" else "/trap/loop/a")

    def _chain(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        h.redirect(f"/trap/chain/{int(rest) + 1 if rest.isdigit() else 0}")

    def _huge(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        head, tail = b"<html><head><title>Huge</title></head><body><p>", b"</p></body></html>"
        filler = HUGE_BYTES - len(head) - len(tail)

        def chunks() -> Iterator[bytes]:
            yield head
            for start in range(0, filler, _CHUNK):
                yield b"x" * min(_CHUNK, filler - start)
            yield tail

        streamed = h.path.startswith("/huge/stream")
        h.stream(chunks(), "text/html; charset=utf-8", None if streamed else HUGE_BYTES)

    def _slow(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        def drip() -> Iterator[bytes]:
            yield b"<html><head><title>Slow</title></head><body>"
            while True:
                time.sleep(self.drip_interval_s)  # the drip itself, not synchronisation
                yield b"."

        h.stream(drip(), "text/html", 1024 * 1024)

    def _bomb(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        bombs: dict[str, Callable[[], bytes]] = {
            "gzip": gzip_bomb,
            "deflate": deflate_bomb,
            "br": brotli_bomb,
        }
        if rest not in bombs:
            h.send(404, b"not found", "text/plain")
            return
        h.send(200, bombs[rest](), "text/html", Content_Encoding=rest)

    def _links(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        if rest == "100k":

            def chunks() -> Iterator[bytes]:
                yield b"<html><head><title>100k links</title></head><body>"
                for start in range(0, LINKS_100K, 1000):
                    yield "".join(
                        f'<a href="/page/{n}">{n}</a>\n' for n in range(start, start + 1000)
                    ).encode()
                yield b"</body></html>"

            body = b"".join(chunks())
            h.send(200, body)
        elif rest == "schemes":
            targets = self.redirect_targets()
            links = [targets[k] for k in ("file", "ftp", "gopher", "data", "javascript", "long")]
            links += ["mailto:someone@example.org", "/page/1"]
            h.send(200, _html("Schemes", links))
        elif rest == "private":
            targets = self.redirect_targets()
            names = ("other-port", "localhost", "mapped", "mapped-hex", "decimal", "octal", "hex", "short",
                     "metadata", "zero")  # fmt: skip
            h.send(200, _html("Private", [targets[n] for n in names if n in targets] + ["/page/2"]))
        else:
            h.send(404, b"not found", "text/plain")

    def _encoding(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        if rest == "invalid-utf8":
            h.send(
                200, b"<html><head><title>Bad \xff\xfe caf\xe9</title></head><body>\x80\x81\xc3</body></html>"
            )
        elif rest == "unknown-charset":
            h.send(200, _html("Unknown charset", ["/page/3"]), "text/html; charset=x-no-such-charset")
        elif rest == "utf16-as-utf8":
            h.send(200, "<html><title>utf16</title><body>é</body></html>".encode("utf-16-le"))
        elif rest == "bom-mismatch":
            body = b"\xef\xbb\xbf" + "<html><title>bom</title><body>é</body></html>".encode("latin-1")
            h.send(200, body, "text/html; charset=iso-8859-1")
        else:
            h.send(404, b"not found", "text/plain")

    def _control_chars(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        controls = bytes(c for c in range(1, 32) if c not in (9, 10, 13))
        filler = (controls * (CONTROL_CHARS_BYTES // len(controls) + 1))[:CONTROL_CHARS_BYTES]
        h.send(200, b"<html><head><title>Controls</title></head><body>" + filler + b"</body></html>")

    def _rate_limited(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        if self._once(f"{h.server.server_address}/rate-limited"):
            h.send(429, b"slow down", "text/plain", Retry_After="1")
        else:
            h.send(200, _html("Rate limited, then served"))

    def _redirect(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        target = self.redirect_targets().get(rest)
        if target is None:
            h.send(404, b"no such redirect", "text/plain")
        else:
            h.redirect(target)

    def _long(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        h.send(200, _html("Long URL"))

    def _api(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        page = int(q.get("page", ["0"])[0] or 0)
        payload: dict[str, Any] = {
            "items": [{"url": f"/api/item/{page * 3 + n}"} for n in range(3)],
            "next": f"/api/endless?page={page + 1}",
        }
        h.send(200, json.dumps(payload).encode(), "application/json")

    def _stolen(self, h: _Handler, rest: str, q: dict[str, list[str]]) -> None:
        h.send(200, _html("Stolen"))


def rebinding_resolver(host: str, port: int) -> list[str]:
    """A resolver (``CRAWLSTREAM_RESOLVER``) answering from ``$HOSTILE_DNS``; other names: the system's."""
    table = _dns_table()
    answers = table.get(host.lower())
    if answers is None:
        from crawlstream.addresses import resolve

        return resolve(host, port)
    with _DNS_LOCK:
        n = _DNS_CALLS.get(host.lower(), 0)
        _DNS_CALLS[host.lower()] = n + 1
    answer = answers[min(n, len(answers) - 1)]
    return list(answer)


_DNS_LOCK = threading.Lock()
_DNS_CALLS: dict[str, int] = {}


@functools.cache
def _dns_table() -> dict[str, list[list[str]]]:
    raw = os.environ.get("HOSTILE_DNS", "{}")
    table: dict[str, list[list[str]]] = json.loads(raw)
    return {host.lower(): answers for host, answers in table.items()}
