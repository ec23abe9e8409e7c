"""A local web server with everything a polite, safe crawler must cope with (test fixture).

Serves on 127.0.0.1 (a thread per request) and logs every request with its arrival time
(``time.monotonic()``), so tests measure the real gaps between requests. Routes:

robots.txt (``Disallow: /private/``, ``Crawl-delay``, ``Sitemap:``), a sitemap index and two
sitemaps with lastmod, an RSS feed, redirect chains (301 then 302), a redirect loop, a redirect to
a private host name, 429 with ``Retry-After: <seconds>`` and 503 with an HTTP-date (each once),
a permanent 500, a slow page, a huge page, a large page, invalid encodings, binary content,
duplicate links, tracking parameters, ``<link rel=canonical>``, a paginated JSON API (``/api``).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGES = 8
HUGE_BYTES = 3 * 1024 * 1024
LARGE_TEXT_BYTES = 300 * 1024
SLOW_S = 6.0


@dataclass
class HostileSite:
    crawl_delay: float = 0.25
    retry_after_s: int = 2
    requests: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    served_once: set[str] = field(default_factory=set)
    base_url: str = ""
    server: ThreadingHTTPServer | None = None

    def paths(self) -> list[str]:
        with self.lock:
            return [p for _, p in self.requests]

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [t for t, p in self.requests if p == path]

    def once(self, path: str) -> bool:
        """True the first time ``path`` is asked for."""
        with self.lock:
            first = path not in self.served_once
            self.served_once.add(path)
            return first

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _html(title: str, links: list[str], extra_head: str = "", body: str = "") -> bytes:
    anchors = "".join(f'<a href="{href}">{href}</a>\n' for href in links)
    return (
        f"<!doctype html><html><head><title>{title}</title>{extra_head}</head>"
        f"<body><h1>{title}</h1>{body}{anchors}</body></html>"
    ).encode()


def _index() -> bytes:
    links = [f"/page/{n}" for n in range(1, PAGES + 1)]
    links += [
        "/page/1",  # duplicate link
        "/page/1?utm_source=news&utm_medium=x&fbclid=abc",  # tracking parameters
        "/page/2#section",  # fragment only
        "/private/secret",
        "/redirect/a",
        "/loop/1",
        "/to-private",
        "/limited",
        "/busy",
        "/error",
        "/slow",
        "/huge",
        "/large",
        "/bad-encoding",
        "/unknown-charset",
        "/image.png",
        "/canon",
        "/missing",
    ]
    return _html("Index", links)


def make_handler(site: HostileSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def send(
            self, status: int, body: bytes, ctype: str = "text/html; charset=utf-8", **hdrs: str
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in hdrs.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, status: int, location: str) -> None:
            self.send(status, b"", Location=location)

        def do_GET(self) -> None:
            with site.lock:
                site.requests.append((time.monotonic(), self.path))
            path = self.path.split("?", 1)[0]
            host = site.base_url.rstrip("/")
            if path == "/robots.txt":
                robots = (
                    f"User-agent: *\nDisallow: /private/\nCrawl-delay: {site.crawl_delay}\n"
                    f"Sitemap: {host}/sitemap_index.xml\n"
                )
                self.send(200, robots.encode(), "text/plain")
            elif path in ("/", "/index.html"):
                self.send(200, _index(), Last_Modified=formatdate(0, usegmt=True), ETag='"idx"')
            elif path.startswith("/page/"):
                self.send(200, _html(f"Page {path[6:]}", ["/", "/page/1"]))
            elif path == "/private/secret":
                self.send(200, _html("Secret", []))
            elif path == "/redirect/a":
                self.redirect(301, "/redirect/b")
            elif path == "/redirect/b":
                self.redirect(302, "/landing")
            elif path == "/landing":
                self.send(200, _html("Landing", []))
            elif path.startswith("/loop/"):
                self.redirect(302, "/loop/2" if path == "/loop/1" else "/loop/1")
            elif path == "/to-private":
                self.redirect(302, f"http://localhost:{self.server.server_address[1]}/page/ssrf")
            elif path == "/limited":
                if site.once(path):
                    self.send(429, b"slow down", "text/plain", Retry_After=str(site.retry_after_s))
                else:
                    self.send(200, _html("Limited", []))
            elif path == "/busy":
                if site.once(path):
                    when = formatdate(time.time() + site.retry_after_s, usegmt=True)
                    self.send(503, b"busy", "text/plain", Retry_After=when)
                else:
                    self.send(200, _html("Busy", []))
            elif path == "/error":
                self.send(500, b"boom", "text/plain")
            elif path == "/slow":
                time.sleep(SLOW_S)
                self.send(200, _html("Slow", []))
            elif path == "/huge":
                self.send(200, b"<html><body>" + b"x" * HUGE_BYTES + b"</body></html>")
            elif path == "/large":
                self.send(200, _html("Large", [], body="<p>" + "é" * (LARGE_TEXT_BYTES // 2) + "</p>"))
            elif path == "/bad-encoding":
                self.send(
                    200, b"<html><head><title>Bad \xff\xfe caf\xe9</title></head><body>\x80\x81</body></html>"
                )
            elif path == "/unknown-charset":
                self.send(200, _html("Unknown charset", []), "text/html; charset=x-no-such-charset")
            elif path == "/image.png":
                self.send(200, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "image/png")
            elif path == "/canon":
                self.send(200, _html("Canon", [], extra_head='<link rel="canonical" href="/page/2">'))
            elif path == "/sitemap_index.xml":
                body = (
                    '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                    f"<sitemap><loc>{host}/sitemap-a.xml</loc></sitemap>"
                    f"<sitemap><loc>{host}/sitemap-b.xml</loc></sitemap></sitemapindex>"
                )
                self.send(200, body.encode(), "application/xml")
            elif path in ("/sitemap-a.xml", "/sitemap-b.xml"):
                lastmod = "2020-01-01" if path.endswith("a.xml") else time.strftime("%Y-%m-%d")
                pages = range(1, 5) if path.endswith("a.xml") else range(5, PAGES + 1)
                urls = "".join(
                    f"<url><loc>{host}/page/{n}</loc><lastmod>{lastmod}</lastmod></url>" for n in pages
                )
                body = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
                self.send(200, body.encode(), "application/xml")
            elif path == "/feed.xml":
                items = "".join(
                    f"<item><title>Page {n}</title><link>{host}/page/{n}</link></item>" for n in range(1, 4)
                )
                body = f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel>'
                body += "</rss>"
                self.send(200, body.encode(), "application/rss+xml")
            elif path == "/noise":  # incompressible: a record of it stays big after compression
                noise = base64.b64encode(os.urandom(30_000)).decode()
                self.send(200, _html("Noise", [], body=f"<p>{noise}</p>"))
            elif path == "/api":
                page = 2 if self.path.endswith("page=2") else 1
                items = [{"url": f"/page/{n}"} for n in ((1, 2) if page == 1 else (3,))]
                payload = {"items": items, "next": "/api?page=2" if page == 1 else None}
                self.send(200, json.dumps(payload).encode(), "application/json")
            else:
                self.send(404, b"not found", "text/plain")

    return Handler


def start_test_site(**kwargs: float) -> HostileSite:
    site = HostileSite(**kwargs)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(site))
    server.daemon_threads = True
    site.server = server
    site.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return site
