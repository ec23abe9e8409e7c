"""A real Scrapy crawl of the generated demo site on 127.0.0.1, in a fresh process, without Kafka.

The subprocess runs ``python -m crawlers crawl`` with ITEM_PIPELINES swapped for
:class:`FileKafkaPagePipeline`: the real pipeline code with a producer that appends to a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from control.demosite import DemoSiteManifest, generate_demo_site, serve_directory
from crawlers.pipelines import DeliveryCallback, KafkaPagePipeline, ProducerLike
from crawlstream.records import decode_page

REPO = Path(__file__).resolve().parents[3]


class _Delivered:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def key(self) -> bytes:
        return self._key


class FileProducer:
    """The Producer interface, writing one JSON line per message; deliveries succeed on poll."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending: list[tuple[bytes, DeliveryCallback]] = []

    def produce(self, topic: str, value: bytes, key: bytes, *, on_delivery: DeliveryCallback) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"topic": topic, "key": key.decode(), "value": value.decode()}) + "\n")
        self.pending.append((key, on_delivery))

    def poll(self, timeout: float) -> int:
        served, self.pending = self.pending, []
        for key, callback in served:
            callback(None, _Delivered(key))
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0

    def __len__(self) -> int:
        return len(self.pending)


class FileKafkaPagePipeline(KafkaPagePipeline):
    def make_producer(self, config: dict[str, Any]) -> ProducerLike:
        return FileProducer(Path(os.environ["CRAWLSTREAM_TEST_RECORDS_FILE"]))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoSiteManifest, str]]:
    root = tmp_path_factory.mktemp("site")
    manifest = generate_demo_site(root, pages=120, seed=3)
    server, base_url = serve_directory(root)
    yield manifest, base_url
    server.shutdown()
    server.server_close()


def _crawl(tmp_path: Path, base_url: str, *extra: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    records_file = tmp_path / "records.jsonl"
    report_file = tmp_path / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO)]),
        "CRAWLSTREAM_TEST_RECORDS_FILE": str(records_file),
        "CRAWLSTREAM_STACK__STATE_DIR": str(tmp_path / "state"),  # no stack.env from a running stack
        "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": "crawltest",
    }
    pipelines = json.dumps({"test_crawl_demo_site.FileKafkaPagePipeline": 300})
    cmd = [
        sys.executable, "-m", "crawlers", "crawl",
        "--start-url", base_url + "index.html",
        "--allow-private-host", urlsplit(base_url).netloc,  # that host, on that port only
        "--metrics-port", "-1",
        "--job-id", "job-1", "--run-id", "run-1",
        "--set", f"ITEM_PIPELINES={pipelines}",
        "--report", str(report_file),
        *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "crawl finished" in done.stdout or "crawl max_pages" in done.stdout, done.stdout
    lines = records_file.read_text(encoding="utf-8").splitlines() if records_file.exists() else []
    return json.loads(report_file.read_text()), [json.loads(line) for line in lines]


def test_full_crawl_matches_manifest(tmp_path: Path, demo: tuple[DemoSiteManifest, str]) -> None:
    manifest, base_url = demo
    report, messages = _crawl(tmp_path, base_url)

    assert report["finish_reason"] == "finished"
    assert report["pages_fetched"] == manifest.expected_html_responses
    assert report["distinct_canonical_urls"] == manifest.expected_distinct_canonical_urls
    assert report["canonical_urls"] == manifest.expected_canonical_urls(base_url)
    assert report["non_html"] == manifest.expected_non_html_responses
    assert report["robots_denied"] == manifest.expected_robots_denied
    assert report["responses_total"] == manifest.expected_responses_total
    assert report["records_delivered"] == len(messages) == manifest.expected_html_responses
    assert (report["delivery_failures"], report["fetch_errors"], report["private_refused"]) == (0, 0, 0)

    assert {m["topic"] for m in messages} == {"crawltest.pages.raw"}
    records = [decode_page(m["value"].encode()) for m in messages]
    assert all(r.canonical_url == m["key"] for r, m in zip(records, messages, strict=True))
    assert not [r for r in records if "/private/" in r.url]
    keys = Counter(r.canonical_url for r in records)
    # Every tracking-parameter variant was fetched and shares its key with the plain page.
    assert sum(n - 1 for n in keys.values()) == len(manifest.tracking_variants) > 0
    assert {r.url.removeprefix(base_url.rstrip("/")) for r in records if "utm_source" in r.url} == set(
        manifest.tracking_variants
    )
    assert {(r.job_id, r.run_id) for r in records} == {("job-1", "run-1")}
    start = next(r for r in records if r.url == base_url + "index.html")
    assert (start.depth, start.referrer, start.title) == (0, None, "Demo site")


def test_max_pages_is_exact(tmp_path: Path, demo: tuple[DemoSiteManifest, str]) -> None:
    report, messages = _crawl(tmp_path, demo[1], "--max-pages", "7")

    assert report["finish_reason"] == "max_pages"
    assert report["pages_fetched"] == report["records_delivered"] == len(messages) == 7


def test_private_host_refused_without_allow_list(tmp_path: Path, demo: tuple[DemoSiteManifest, str]) -> None:
    base_url = demo[1]
    report_file = tmp_path / "report.json"
    env = {**os.environ, "CRAWLSTREAM_STACK__STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "crawlers", "crawl", "--start-url", base_url + "index.html",
        "--metrics-port", "-1", "--set", "ITEM_PIPELINES={}", "--report", str(report_file),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(report_file.read_text())
    # The guard runs ahead of the robots.txt middleware: the start request is refused before
    # robots.txt is even requested, and nothing connects.
    assert (report["private_refused"], report["responses_total"], report["pages_fetched"]) == (1, 0, 0)


class _RedirectToLocalhost(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        port = self.server.server_address[1]  # type: ignore[index]
        self.send_response(302 if self.path != "/robots.txt" else 404)
        self.send_header("Location", f"http://localhost:{port}/index.html")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_redirect_hop_to_private_host_is_refused(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RedirectToLocalhost)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        report, messages = _crawl(
            tmp_path, f"http://127.0.0.1:{server.server_address[1]}/",
            "--allowed-domain", "127.0.0.1", "--allowed-domain", "localhost",
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    # 127.0.0.1 is allow-listed, localhost is not: the redirect hop is refused. The only response the
    # engine sees is 127.0.0.1's robots.txt (the 302 is consumed inside the redirect middleware).
    assert (report["responses_total"], report["private_refused"], report["pages_fetched"]) == (1, 1, 0)
    assert messages == []
