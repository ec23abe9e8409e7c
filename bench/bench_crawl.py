"""Crawl throughput: the Kafka-producing crawler vs. plain Scrapy, same site, same run.

A generated site (crawlstream.demosite, ``--pages`` pages) is served by nginx (Debian
``nginx-light``; falls back to Python's threaded static server, noted in the output, when nginx
is missing). Each round crawls it twice, each crawl in a fresh process:

- baseline: plain Scrapy (the same link following and concurrency, robots.txt obeyed, the
  response parsed for its title), items discarded;
- crawler: ``python -m crawlers crawl`` producing every page record to Kafka (the embedded
  stack's broker, started if needed; a throwaway topic prefix), delivery confirmed before it exits.

Prints pages/s of both and their ratio per round, then the medians. Targets (issue 3): ratio
>= 0.9 and >= 150 pages/s. About a minute:
``.venv/bin/python bench/bench_crawl.py [--rounds 5] [--pages 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    types {{ text/html html; image/png png; application/pdf pdf; text/plain txt; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(root: Path, tmp: Path) -> tuple[str, Any, str]:
    """Start nginx on ``root``; returns (base URL, stopper, server name)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx:
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {(tmp / 'error.log').read_text()}") from None
                time.sleep(0.1)

        def stop() -> None:
            proc.terminate()
            proc.wait(10)

        return f"http://127.0.0.1:{port}/", stop, "nginx"
    from crawlstream.demosite import serve_directory

    server, base = serve_directory(root)
    return base, server.shutdown, "python http.server (nginx missing: install nginx-light)"


def plain_crawl(start_url: str) -> None:
    """The baseline, in this process: plain Scrapy, items discarded; prints pages and seconds."""
    from scrapy import Spider
    from scrapy.crawler import CrawlerProcess
    from scrapy.linkextractors import LinkExtractor

    from crawlstream.settings import CrawlSettings

    crawl = CrawlSettings()

    class PlainSpider(Spider):
        name = "plain"
        start_urls = [start_url]
        extractor = LinkExtractor()
        pages = 0

        def parse(self, response: Any, **kwargs: Any) -> Any:
            if b"text/html" not in (response.headers.get(b"Content-Type") or b""):
                return
            PlainSpider.pages += 1
            yield {"title": response.xpath("//title/text()").get()}
            for link in self.extractor.extract_links(response):
                yield response.follow(link, callback=self.parse)

    process = CrawlerProcess(
        {
            "LOG_LEVEL": "WARNING",
            "ROBOTSTXT_OBEY": True,
            "CONCURRENT_REQUESTS": crawl.concurrency,
            "CONCURRENT_REQUESTS_PER_DOMAIN": crawl.concurrency_per_domain,
            "TELNETCONSOLE_ENABLED": False,
            "COOKIES_ENABLED": False,
            "DEPTH_PRIORITY": 1,
            "SCHEDULER_MEMORY_QUEUE": "scrapy.squeues.FifoMemoryQueue",
            "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        }
    )
    started = time.monotonic()
    process.crawl(PlainSpider)
    process.start()
    print(json.dumps({"pages": PlainSpider.pages, "seconds": time.monotonic() - started}))


def run_plain(start_url: str) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--plain", start_url], capture_output=True, text=True, check=True, cwd=REPO
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return int(data["pages"]), float(data["seconds"])


def run_kafka(start_url: str, prefix: str, tmp: Path) -> tuple[int, float]:
    report = tmp / f"report-{uuid.uuid4().hex}.json"
    host = start_url.split("/")[2].split(":")[0]
    argv = [sys.executable, "-m", "crawlers", "crawl", "--start-url", start_url, "--allow-private-host", host]
    argv += ["--metrics-port", "-1", "--set", "LOG_LEVEL=WARNING", "--report", str(report)]
    env = {**os.environ, "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": prefix}
    subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO, env=env)
    data = json.loads(report.read_text())
    if data["delivery_failures"] or data["records_delivered"] != data["pages_fetched"]:
        raise RuntimeError(f"the Kafka crawl lost records: {data}")
    return int(data["pages_fetched"]), float(data["duration_s"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain_crawl(args.plain)
        return 0

    from crawlstream.cli import migrate
    from crawlstream.demosite import generate_demo_site
    from crawlstream.settings import load_settings
    from crawlstream.stack.supervisor import up
    from crawlstream.topics import catalog, ensure_topics

    up(load_settings(), migrate=migrate)  # the embedded stack's Kafka (idempotent, as `make up`)
    prefix = f"bench-crawl-{uuid.uuid4().hex[:8]}"
    os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"] = prefix
    settings = load_settings()
    del os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"]
    topics = catalog(settings)
    ensure_topics(settings, [topics.raw_pages, topics.dead_letter])
    with tempfile.TemporaryDirectory(prefix="bench-crawl-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        generate_demo_site(tmp / "site", pages=args.pages)
        base, stop, server = serve(tmp / "site", tmp)
        start_url = f"{base}index.html"
        print(f"site: {args.pages} pages served by {server} at {base}; Kafka topic prefix {prefix}")
        plain_rates, kafka_rates, ratios = [], [], []
        try:
            for n in range(1, args.rounds + 1):
                plain_pages, plain_s = run_plain(start_url)
                kafka_pages, kafka_s = run_kafka(start_url, prefix, tmp)
                plain_rate, kafka_rate = plain_pages / plain_s, kafka_pages / kafka_s
                plain_rates.append(plain_rate)
                kafka_rates.append(kafka_rate)
                ratios.append(kafka_rate / plain_rate)
                print(
                    f"round {n}: plain Scrapy {plain_pages} pages in {plain_s:.2f}s "
                    f"= {plain_rate:.0f} pages/s; "
                    f"Kafka crawler {kafka_pages} pages in {kafka_s:.2f}s = {kafka_rate:.0f} pages/s; "
                    f"ratio {kafka_rate / plain_rate:.2f}"
                )
        finally:
            stop()
    print(
        f"median of {args.rounds}: plain Scrapy {statistics.median(plain_rates):.0f} pages/s, "
        f"Kafka crawler {statistics.median(kafka_rates):.0f} pages/s, ratio {statistics.median(ratios):.2f} "
        "(targets: ratio >= 0.9, >= 150 pages/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
