"""A simulated broad web on loopback: many hosts, each with its pages, robots.txt and latency.

Usage (tests and bench/bench_frontier.py)::

    from tests.support.broadweb import BroadWeb

    with BroadWeb(hosts=100, pages_per_host=8, latency_s=0.02, seed=7) as web:
        seed = web.url(0, 0)                       # http://127.0.20.1:<port>/p/0
        ...crawl...
        reachable = web.reachable([seed])          # from the link graph, honouring robots.txt
        assert web.peak_in_flight() <= 8           # server-side, per host

Hosts are distinct loopback addresses (127.0.20.1, 127.0.20.2, ...; all of 127.0.0.0/8 is
loopback), all served on one port by one asyncio server in a thread (thousands of concurrent
requests with a think time cost no thread each, which a thread-per-connection server could not
do on two cores; the hostile web (:mod:`tests.support.hostile`) is thread-based and meant for a
few hostile responses, not for throughput). Every page links to a few pages of its host and
sometimes to pages of other hosts (a deterministic graph from ``seed``); host 0's first page
links to the first page of every host, so everything is reachable from it. Special hosts:

- ``big``: host 1 has ``big_pages`` pages (a host much larger than the rest);
- ``rate_limited``: these hosts answer 429 with ``Retry-After`` to every ``rate_every``-th
  request (a retry is served);
- ``trap``: the last host is an infinite calendar (``/cal/<n>`` links ``/cal/<n+1>``, forever);
- ``crawl_delay``: these hosts' robots.txt asks for that ``Crawl-delay``;
- every host's robots.txt disallows ``/private/``, and a page in ten links there.

Pages carry an ``ETag`` and ``Last-Modified``; a request with a matching ``If-None-Match`` (or
``If-Modified-Since``) gets 304. :meth:`BroadWeb.change` changes pages' content (new ETag).

Bounded and observed on the server side: every request is logged (:class:`Hit`: host, path,
arrival and end time, status); :meth:`peak_in_flight` is the most requests a host had open at
once, :meth:`min_gap` the smallest time between two request arrivals on a host,
:meth:`retry_after_violations` the requests that came before a 429's Retry-After had passed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import urlsplit

FIRST = (127, 0, 20, 1)
LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)
MAX_REQUEST_BYTES = 16 * 1024


@dataclass(frozen=True)
class Hit:
    host: str
    path: str
    start: float
    end: float
    status: int


def host_address(n: int) -> str:
    """The loopback address of host ``n`` (127.0.20.1 upwards, skipping .0 and .255)."""
    a, b, c, d = FIRST
    index = (c * 254 + (d - 1)) + n
    return f"{a}.{b}.{index // 254}.{index % 254 + 1}"


@dataclass
class _Site:
    host: str
    pages: int
    trap: bool = False
    rate_every: int = 0
    crawl_delay: float = 0.0
    requests: int = 0
    versions: dict[int, int] = field(default_factory=dict)


class BroadWeb:
    def __init__(
        self,
        hosts: int = 100,
        *,
        pages_per_host: int = 8,
        big_pages: int = 0,
        latency_s: float = 0.02,
        seed: int = 7,
        rate_limited: Sequence[int] = (),
        rate_every: int = 10,
        retry_after_s: int = 1,
        trap: bool = False,
        crawl_delay: dict[int, float] | None = None,
        cross_links: int = 2,
        private_links: bool = True,
    ) -> None:
        if hosts < 2:
            raise ValueError("a broad web has 2 hosts at least")
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.cross_links = cross_links
        self.private_links = private_links
        self.random_seed = seed
        self.sites: list[_Site] = []
        for n in range(hosts):
            site = _Site(host_address(n), big_pages if (n == 1 and big_pages) else pages_per_host)
            site.trap = trap and n == hosts - 1
            site.rate_every = rate_every if n in rate_limited else 0
            site.crawl_delay = (crawl_delay or {}).get(n, 0.0)
            self.sites.append(site)
        self.by_host = {site.host: site for site in self.sites}
        self.hits: list[Hit] = []
        self.open: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._retry_after: dict[str, float] = {}  # host -> when its last 429 allows the next request
        self.violations: list[Hit] = []
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self.port = 0
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(30) or not self.port:
            raise RuntimeError(f"the broad web did not start: {self.errors}")

    # The link graph.
    def links(self, n: int, page: int) -> list[str]:
        """The URLs page ``page`` of host ``n`` links to."""
        site = self.sites[n]
        if site.trap:
            return [self.url(n, path=f"/cal/{page + 1}")]
        rng = random.Random(self.random_seed * 1_000_003 + n * 10_007 + page)
        out = [self.url(n, (page + 1) % site.pages), self.url(n, (page * 7 + 3) % site.pages)]
        out += [self.url(n, rng.randrange(site.pages)) for _ in range(2)]
        for _ in range(self.cross_links):
            other = rng.randrange(len(self.sites))
            if not self.sites[other].trap:
                out.append(self.url(other, rng.randrange(self.sites[other].pages)))
        if n == 0 and page == 0:
            out += [
                self.url(m, 0) if not s.trap else self.url(m, path="/cal/0") for m, s in enumerate(self.sites)
            ]
        if self.private_links and page % 10 == 3:
            out.append(self.url(n, path=f"/private/{page}"))
        return out

    def url(self, n: int, page: int = 0, path: str | None = None) -> str:
        return f"http://{self.sites[n].host}:{self.port}{path or f'/p/{page}'}"

    def reachable(self, seeds: Iterable[str], max_depth: int = 0, max_pages_per_host: int = 0) -> set[str]:
        """Every page URL reachable from ``seeds`` by links (breadth-first, depth counted from the
        seeds; 0: no limit), not disallowed by robots.txt; the trap is left out (it never ends)."""
        depth_of = {url: 0 for url in seeds}
        frontier = list(depth_of)
        while frontier:
            following = []
            for url in frontier:
                parsed = self._parse(url)
                if parsed is None:
                    continue
                n, page = parsed
                if max_depth and depth_of[url] >= max_depth:
                    continue
                for target in self.links(n, page):
                    if target not in depth_of and self._parse(target) is not None:
                        depth_of[target] = depth_of[url] + 1
                        following.append(target)
            frontier = following
        return {url for url in depth_of if self._parse(url) is not None}

    def _parse(self, url: str) -> tuple[int, int] | None:
        parts = urlsplit(url)
        site = self.by_host.get(parts.hostname or "")
        if site is None or site.trap or not parts.path.startswith("/p/"):
            return None
        return self.sites.index(site), int(parts.path[3:])

    def change(self, n: int, pages: Iterable[int]) -> None:
        """New content (and ETag) for these pages of host ``n``."""
        site = self.sites[n]
        for page in pages:
            site.versions[page] = site.versions.get(page, 0) + 1

    # Server-side observations.
    def fetched(self, status: int | None = 200) -> list[str]:
        """URLs of the page requests served (with that status; None: any), in arrival order."""
        return [
            f"http://{hit.host}:{self.port}{hit.path}"
            for hit in list(self.hits)
            if hit.path.startswith(("/p/", "/cal/")) and (status is None or hit.status == status)
        ]

    def peak_in_flight(self) -> dict[str, int]:
        return dict(self.peak)

    def gaps(self, host: str) -> list[float]:
        """The times between consecutive request arrivals on ``host`` (robots.txt included)."""
        starts = sorted(hit.start for hit in self.hits if hit.host == host)
        return [b - a for a, b in itertools.pairwise(starts)]

    def min_gap(self, host: str) -> float | None:
        """The smallest time between two request arrivals on ``host`` (robots.txt included)."""
        gaps = self.gaps(host)
        return min(gaps) if gaps else None

    def first_fetch(self) -> dict[str, float]:
        """When each host got its first page request."""
        first: dict[str, float] = {}
        for hit in self.hits:
            if hit.path.startswith(("/p/", "/cal/")):
                first.setdefault(hit.host, hit.start)
        return first

    # Serving.
    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except Exception as exc:
            self.errors.append(repr(exc))
            ready.set()
            return
        ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        for attempt in range(20):
            port = 0 if attempt == 0 and not self.port else random.randrange(20_000, 60_000)
            servers: list[asyncio.Server] = []
            try:
                first = await asyncio.start_server(self._client, self.sites[0].host, port, backlog=1024)
                servers.append(first)
                port = first.sockets[0].getsockname()[1]
                for site in self.sites[1:]:
                    servers.append(await asyncio.start_server(self._client, site.host, port, backlog=1024))
            except OSError:
                for server in servers:
                    server.close()
                continue
            self._servers, self.port = servers, port
            return
        raise OSError("no port free on every host")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host = writer.get_extra_info("sockname")[0]
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
                except (
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    TimeoutError,
                    ConnectionError,
                ):
                    return
                if len(head) > MAX_REQUEST_BYTES:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = ([*lines[0].split(" "), "", "", ""])[:3]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:])
                    if k
                }
                keep = headers.get("connection", "").lower() != "close"
                status, extra, body = await self._answer(host, path, headers)
                response = [
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'X'}",
                    f"Content-Length: {len(body)}",
                ]
                response += [f"{k}: {v}" for k, v in extra.items()]
                response.append("Connection: keep-alive" if keep else "Connection: close")
                writer.write(
                    ("\r\n".join(response) + "\r\n\r\n").encode() + (body if method != "HEAD" else b"")
                )
                await writer.drain()
                if not keep:
                    return
        except ConnectionError:
            return
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            writer.close()

    async def _answer(
        self, host: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        site = self.by_host[host]
        start = time.monotonic()
        self.open[host] = self.open.get(host, 0) + 1
        self.peak[host] = max(self.peak.get(host, 0), self.open[host])
        status = 200
        try:
            if path != "/robots.txt":
                await asyncio.sleep(self.latency_s)  # the host's think time
            status, extra, body = self._route(site, path, headers)
            return status, extra, body
        finally:
            self.open[host] -= 1
            hit = Hit(host, path, start, time.monotonic(), status)
            until = self._retry_after.get(host)
            if until is not None and start < until:
                self.violations.append(hit)
            if status == 429:
                self._retry_after[host] = start + self.retry_after_s
            self.hits.append(hit)

    def _route(self, site: _Site, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        html = {"Content-Type": "text/html; charset=utf-8"}
        if path == "/robots.txt":
            rules = "User-agent: *\nDisallow: /private/\n"
            if site.crawl_delay:
                rules += f"Crawl-delay: {site.crawl_delay:g}\n"
            return 200, {"Content-Type": "text/plain"}, rules.encode()
        site.requests += 1
        if site.rate_every and site.requests % site.rate_every == 1:
            return 429, {"Retry-After": str(self.retry_after_s), "Content-Type": "text/plain"}, b"slow down"
        n = self.sites.index(site)
        if site.trap and path.startswith("/cal/"):
            step = int(path[5:]) if path[5:].isdigit() else 0
            return 200, html, _page(f"Calendar {step}", self.links(n, step))
        if not path.startswith("/p/") or not path[3:].isdigit() or int(path[3:]) >= site.pages:
            return 404, {"Content-Type": "text/plain"}, b"not found"
        page = int(path[3:])
        version = site.versions.get(page, 0)
        etag = f'"{n}-{page}-{version}"'
        modified = formatdate(1_700_000_000 + version * 3600, usegmt=True)
        validators = {"ETag": etag, "Last-Modified": modified}
        if headers.get("if-none-match") == etag or (
            "if-none-match" not in headers and headers.get("if-modified-since") == modified
        ):
            return 304, validators, b""
        text = " ".join(f"w{n}x{page}x{version}x{k}" for k in range(40))
        return (
            200,
            {**html, **validators},
            _page(f"Host {n} page {page} v{version}", self.links(n, page), text),
        )

    def close(self) -> None:
        def stop() -> None:
            for server in self._servers:
                server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()  # its selector and self-pipe sockets (ResourceWarning otherwise)

    def __enter__(self) -> BroadWeb:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _page(title: str, links: Iterable[str], text: str = "") -> bytes:
    anchors = "".join(f'<a href="{href}">{href.rsplit("/", 2)[-2:]}</a>\n' for href in links)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><main><h1>{title}</h1><p>{text}</p>{anchors}</main></body></html>"
    ).encode()
