"""The frontier of the stream worker (``python -m streams worker``) on the running stack.

Links reach ``<prefix>.links`` and pages ``<prefix>.pages.raw`` as the crawlers produce them
(confluent-kafka, keyed by canonical URL); the worker runs as a subprocess with its own topic
prefix and app id (the ``pipeline`` fixture of the stage tests). Pages are produced and processed
first, so the ``urls`` table knows them when their links arrive; every wait is on committed
offsets (the worker commits a link once its request is delivered), never on time.

Recrawl intervals are the stage's defaults (StormCrawler AdaptiveScheduler semantics,
:mod:`streams.recrawl`): a new page is due after one day, a changed one sooner (x0.8), an
unchanged one later (x1.2). Fetch times are hours away from those edges. The last test closes
the loop with a distributed crawler (``python -m crawlers requests``) on a loopback site.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from crawlstream import offsets
from crawlstream.records import CrawlRequest, DeadLetter, LinkRecord, PageRecord
from crawlstream.settings import Settings
from crawlstream.urls import canonical_url, host_of
from tests.integration.test_streams_stage import REPO, Pipeline, Worker, pipeline, wait_for  # noqa: F401
from tests.integration.test_streams_stats import ready

pytestmark = pytest.mark.integration


def page(url: str, text: str, at: datetime) -> tuple[bytes, bytes]:
    body = f"<html><body><main><h1>A page</h1><p>{text}</p></main></body></html>"
    record = PageRecord(
        url=url, canonical_url=url, final_url=url, status=200, fetched_at=at, body=body, run_id="it-run"
    )
    return url.encode(), record.to_bytes()


def link(canonical: str, source: str, depth: int = 1, query: str = "") -> tuple[bytes, bytes]:
    record = LinkRecord(
        url=canonical + query,
        canonical_url=canonical,
        host=canonical.split("/")[2],
        source_url=source,
        depth=depth,
        job_id="it-job",
        run_id="it-run",
    )
    return canonical.encode(), record.to_bytes()


def links_drained(pipe: Pipeline) -> bool:
    """The worker committed every link: each one's request (if any) is on the requests topic."""
    settings, name = pipe.settings, pipe.topics.links.name
    end = offsets.end_offsets(settings, name)
    return not offsets.lag(end, offsets.committed_offsets(settings, settings.streams.app_id, name))


def read_partitions(settings: Settings, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every (partition, key, value) of ``topic`` up to its current end offsets."""
    consumer = Consumer(
        settings.kafka.librdkafka(
            **{"group.id": f"it-frontier-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        remaining = {p: end for p, end in offsets.end_offsets(settings, topic).items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in remaining])
        out: list[tuple[int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        while remaining and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None
            assert offset is not None
            out.append((partition, msg.key(), msg.value()))
            if offset + 1 >= remaining.get(partition, 0):
                remaining.pop(partition, None)
        assert not remaining, f"could not read {topic} to its end offsets {remaining}"
        return out
    finally:
        consumer.close()


def requests_on_topic(pipe: Pipeline) -> list[tuple[int, bytes | None, CrawlRequest]]:
    return [
        (partition, key, CrawlRequest.model_validate_json(value or b""))
        for partition, key, value in read_partitions(pipe.settings, pipe.topics.requests.name)
    ]


def produce_and_drain(pipe: Pipeline, worker: Worker, links: list[tuple[bytes, bytes]]) -> None:
    pipe.produce(links, topic=pipe.topics.links.name)
    wait_for("the frontier to commit every link", lambda: links_drained(pipe), worker)


A, B, C, D = (f"https://{h}.frontier.example" for h in "abcd")
FRESH = f"{A}/fresh"  # fetched now: due in a day
STALE = f"{B}/stale"  # fetched two days ago: due
CHANGED = f"{C}/changed"  # fetched 3 days, then 21 h ago, changed: interval 19.2 h, due
STEADY = f"{C}/steady"  # fetched 3 days, then 21 h ago, same text: interval 28.8 h, not due
NEW = [f"{A}/new-1", f"{A}/new-2", f"{B}/new-3", f"{D}/new-4"]


def fetched_pages(now: datetime) -> list[tuple[bytes, bytes]]:
    before, recent = now - timedelta(days=3), now - timedelta(hours=21)
    return [
        page(FRESH, "A fresh page about frontier scheduling and polite crawling.", now),
        page(STALE, "A stale page nobody has fetched for two days now.", now - timedelta(days=2)),
        page(CHANGED, "The changing page, first version of its text.", before),
        page(CHANGED, "The changing page, second and rewritten version of its text.", recent),
        page(STEADY, "The steady page says the same thing every time it is fetched.", before),
        page(STEADY, "The steady page says the same thing every time it is fetched.", recent),
    ]


def test_links_are_requested_once_by_host_and_fetched_pages_only_when_due(pipeline: Pipeline) -> None:  # noqa: F811
    now = datetime.now(UTC)
    pipeline.produce(fetched_pages(now))
    worker = pipeline.start_worker()
    wait_for("the stage to process the fetched pages", pipeline.drained, worker)

    # Each URL linked from several pages; the first link of a new URL carries a tracking query.
    sources = [f"{A}/", f"{B}/", f"{C}/"]
    first = [link(NEW[0], sources[0], depth=2, query="?utm_source=it")]
    first += [link(url, source) for source in sources for url in [*NEW, FRESH, STALE, CHANGED, STEADY]]
    produce_and_drain(pipeline, worker, first)

    found = requests_on_topic(pipeline)
    assert sorted((r.canonical_url, r.reason) for _, _, r in found) == sorted(
        [(url, "link") for url in NEW] + [(STALE, "recrawl"), (CHANGED, "recrawl")]
    )
    for _, key, request in found:
        assert key == request.host.encode() == request.canonical_url.split("/")[2].encode()
        assert (request.job_id, request.run_id) == ("it-job", "it-run")
    by_host: dict[str, set[int]] = {}
    for partition, _, request in found:
        by_host.setdefault(request.host, set()).add(partition)
    assert all(len(parts) == 1 for parts in by_host.values()), by_host  # one host, one partition
    # The request is the first link's: its URL as linked (query kept) and depth.
    new_1 = next(r for _, _, r in found if r.canonical_url == NEW[0])
    assert (new_1.url, new_1.depth) == (NEW[0] + "?utm_source=it", 2)

    # Later: one requested page has been fetched; every URL is linked again. Nothing is due that
    # was not requested already (the requested ones are pending at the crawlers).
    pipeline.produce([page(NEW[0], "The first new page, now fetched by a crawler.", now)])
    wait_for("the stage to process the new page", pipeline.drained, worker)
    again = [link(url, f"{D}/") for url in [*NEW, FRESH, STALE, CHANGED, STEADY]]
    produce_and_drain(pipeline, worker, again)
    assert requests_on_topic(pipeline) == found


def test_poison_links_are_dead_lettered_with_origin_and_the_frontier_goes_on(pipeline: Pipeline) -> None:  # noqa: F811
    name = pipeline.topics.links.name
    good = f"{A}/after-poison"
    valid = LinkRecord(url=good, canonical_url=good, host=good.split("/")[2], source_url=f"{A}/", depth=1)
    poison: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k", b"{not json", "invalid_link"),
        (good.encode(), valid.model_copy(update={"depth": -1}).model_dump_json().encode(), "invalid_link"),
        (b"https://elsewhere.example/", valid.to_bytes(), "key_mismatch"),
        (good.encode(), None, "null_value"),
    ]
    partitions = pipeline.settings.kafka.partitions
    origins: dict[tuple[int, int], tuple[bytes | None, str]] = {}
    producer = Producer(pipeline.settings.kafka.librdkafka(**{"enable.idempotence": True}))

    def delivered(value: bytes | None, reason: str) -> object:
        def report(err: object, msg: object) -> None:
            assert err is None, err
            origins[(msg.partition(), msg.offset())] = (value, reason)  # type: ignore[attr-defined]

        return report

    # Poison first in every partition, so every valid link after it queues behind one.
    for n in range(partitions):
        key, value, reason = poison[n % len(poison)]
        producer.produce(name, value=value, key=key, partition=n, on_delivery=delivered(value, reason))
    for key, value, reason in poison[partitions:]:
        producer.produce(name, value=value, key=key, partition=0, on_delivery=delivered(value, reason))
    assert producer.flush(30) == 0
    assert len(origins) == len(poison)
    urls = [f"{host}/after-poison-{n}" for host in (A, B, C, D) for n in range(3)]
    worker = pipeline.start_worker()
    produce_and_drain(pipeline, worker, [link(url, f"{A}/") for url in [good, *urls]])

    letters = [
        DeadLetter.model_validate_json(v or b"")
        for _, v in pipeline.read_all(pipeline.topics.dead_letter.name)
    ]
    assert {
        (letter.source_partition, letter.source_offset): (letter.original_value(), letter.reason)
        for letter in letters
    } == origins
    assert len(letters) == len(origins)
    assert all(letter.stage == "streams" and letter.source_topic == name for letter in letters)
    found = requests_on_topic(pipeline)
    assert sorted(r.canonical_url for _, _, r in found) == sorted([good, *urls])
    assert worker.metric('streams_dead_letters_total{agent="plan_requests",reason="invalid_link"}') == 2.0


PAGES = 6


class _Site(ThreadingHTTPServer):
    log: list[str]


class _Page(BaseHTTPRequestHandler):
    """``/p/n`` links to the next two pages and back to ``/p/0``: every page is linked 2-3 times."""

    server: _Site

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.log.append(self.path)
        if not self.path.startswith("/p/"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        n = int(self.path[3:])
        links = "".join(f"<a href='/p/{m % PAGES}'>page {m % PAGES}</a> " for m in (n + 1, n + 2, 0))
        body = f"<html><head><title>p{n}</title></head><body><p>{words(n)}</p>{links}</body></html>"
        raw = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def words(n: int) -> str:
    return " ".join(f"w{n}x{k}" for k in range(30))


@pytest.fixture
def site() -> Iterator[_Site]:
    server = _Site(("127.0.0.1", 0), _Page)
    server.log = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_frontier_and_a_distributed_crawler_crawl_each_page_once(
    pipeline: Pipeline,  # noqa: F811
    site: _Site,
) -> None:
    """The loop of issue 4: crawler links -> frontier -> requests -> crawler, from one seed link."""
    worker = pipeline.start_worker()
    wait_for("the worker ready", lambda: pipeline.group_members() == 1 and ready(worker), worker)
    group = f"{pipeline.settings.streams.app_id}-crawlers"
    argv = [sys.executable, "-m", "crawlers", "requests", "--group-id", group, "--idle-exit-s", "20"]
    argv += [
        "--run-id",
        "it-loop",
        "--allow-private-host",
        f"127.0.0.1:{site.server_address[1]}",  # that host on the site's port only
        "--report",
        str(pipeline.tmp / "r.json"),
    ]
    log = pipeline.tmp / "crawler.log"
    with log.open("wb") as out:
        crawler = subprocess.Popen(argv, cwd=REPO, env=pipeline.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        admin = AdminClient(pipeline.settings.kafka.librdkafka())

        def crawler_joined() -> bool:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            return (
                sum(len(m.assignment.topic_partitions) for m in desc.members)
                == pipeline.topics.requests.partitions
            )

        wait_for("the crawler to own the requests topic", crawler_joined, worker)
        root = f"http://127.0.0.1:{site.server_address[1]}/p/0"
        seed = LinkRecord(
            url=root, canonical_url=canonical_url(root), host=host_of(root), source_url=root, depth=0
        )
        pipeline.produce([(seed.canonical_url.encode(), seed.to_bytes())], topic=pipeline.topics.links.name)
        crawler.wait(timeout=300)
        assert crawler.returncode == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if crawler.poll() is None:
            crawler.kill()
            crawler.wait(timeout=30)
    wait_for("the frontier to commit every link", lambda: links_drained(pipeline), worker)

    pages = [f"/p/{n}" for n in range(PAGES)]
    assert sorted(path for path in site.log if path.startswith("/p/")) == pages  # each page once
    found = requests_on_topic(pipeline)
    assert sorted(urlsplit(r.url).path for _, _, r in found) == pages
    assert {(key, r.reason) for _, key, r in found} == {(b"127.0.0.1", "link")}
    assert len({partition for partition, _, _ in found}) == 1  # one host, one partition
    # The crawler left with every request done: nothing was requested after it.
    requests = pipeline.topics.requests.name
    assert offsets.committed_offsets(pipeline.settings, group, requests) == offsets.end_offsets(
        pipeline.settings, requests
    )
