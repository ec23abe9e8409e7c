"""Distributed mode: two crawler processes in one consumer group share a crawl from the requests topic.

Small sites on 127.0.0.x loopback addresses, one per partition of the requests topic, chosen so
their host keys cover every partition (librdkafka's default partitioner: CRC32 of the key). Both
processes join the group
first; then every page of every site is requested once. Asserts that each URL is fetched once
between the two processes, that each host is fetched by one process only, and that discovered
links reach the links topic. Needs only the stack's Kafka.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from crawlstream.offsets import committed_offsets, end_offsets
from crawlstream.records import CrawlRequest, DeadLetter, LinkRecord, PageRecord
from crawlstream.settings import load_settings
from crawlstream.topics import catalog, ensure_topics
from tests.integration.kafka_read import read_topic

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PAGES = 6


def _hosts(partitions: int, count: int = 4) -> list[str]:
    chosen: dict[int, list[str]] = {}
    for n in range(2, 250):
        host = f"127.0.0.{n}"
        chosen.setdefault(zlib.crc32(host.encode()) % partitions, []).append(host)
    picks = [hosts[0] for hosts in chosen.values()][:partitions]
    rest = [h for hosts in chosen.values() for h in hosts[1:]]
    return (picks + rest)[:count]


class _Logged(ThreadingHTTPServer):
    log: list[tuple[str, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Logged

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.log.append((self.server.server_address[0], self.path))
        if not self.path.startswith("/p/"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        n = int(self.path[3:])
        link = f"<a href='/p/{(n + 1) % PAGES}'>next</a>"
        raw = f"<html><head><title>p{n}</title></head><body>{link}</body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def sites() -> Iterator[tuple[list[str], list[_Logged]]]:
    settings = load_settings()
    partitions = catalog(settings).requests.partitions
    hosts = _hosts(partitions, count=partitions)  # every partition has a host: both processes work
    servers = []
    for host in hosts:
        server = _Logged((host, 0), _Handler)
        server.log = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield [f"{h}:{s.server_address[1]}" for h, s in zip(hosts, servers, strict=True)], servers
    for server in servers:
        server.shutdown()
        server.server_close()


def test_two_processes_share_a_crawl_one_host_each(
    sites: tuple[list[str], list[_Logged]], tmp_path: Path
) -> None:
    netlocs, servers = sites
    prefix = f"test-dist-{uuid.uuid4().hex[:8]}"
    os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"] = prefix
    try:
        settings = load_settings()
    finally:
        del os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"]
    topics = catalog(settings)
    ensure_topics(settings, [topics.requests, topics.raw_pages, topics.dead_letter, topics.links])
    group = f"{prefix}-crawlers"
    env = {**os.environ, "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": prefix}
    procs = []
    for n in range(2):
        argv = [sys.executable, "-m", "crawlers", "requests", "--group-id", group, "--idle-exit-s", "15"]
        argv += ["--run-id", f"proc{n}", "--report", str(tmp_path / f"r{n}.json")]
        for netloc in netlocs:
            argv += ["--allow-private-host", netloc]
        with (tmp_path / f"p{n}.log").open("w") as log:  # the child keeps its own descriptor
            procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    admin = AdminClient(settings.kafka.librdkafka())
    deadline = time.monotonic() + 60
    while True:  # both members joined and every partition assigned
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        owned = [len(m.assignment.topic_partitions) for m in desc.members]
        if len(owned) == 2 and sum(owned) == topics.requests.partitions and min(owned) > 0:
            break
        assert time.monotonic() < deadline, f"group never had two members with partitions: {desc}"
        time.sleep(0.5)  # poll interval
    producer = Producer(settings.kafka.librdkafka())
    urls = [f"http://{netloc}/p/{n}" for netloc in netlocs for n in range(PAGES)]
    for url in urls:
        host = url.split("/")[2].split(":")[0]
        request = CrawlRequest(url=url, canonical_url=url, host=host, reason="seed")
        producer.produce(topics.requests.name, request.to_bytes(), host.encode())
    assert producer.flush(30) == 0
    for n, proc in enumerate(procs):
        code = proc.wait(timeout=120)
        assert code == 0, (tmp_path / f"p{n}.log").read_text()[-3000:]

    fetched = [(host, path) for server in servers for host, path in server.log if path.startswith("/p/")]
    assert len(fetched) == len(urls) == len(set(fetched))  # each URL once between the two
    pages = [PageRecord.model_validate_json(v) for _, v in read_topic(settings, topics.raw_pages.name)]
    assert sorted(p.url for p in pages) == sorted(urls)
    by_host: dict[str, set[str]] = {}
    for page in pages:
        by_host.setdefault(page.url.split("/")[2], set()).add(page.run_id)
    assert all(len(runs) == 1 for runs in by_host.values()), by_host  # one process per host
    assert {r for runs in by_host.values() for r in runs} == {"proc0", "proc1"}  # both did work
    reports = [json.loads((tmp_path / f"r{n}.json").read_text()) for n in range(2)]
    assert sum(r["pages_fetched"] for r in reports) == len(urls)
    # Every request done: the group committed up to the end of the requests topic.
    assert committed_offsets(settings, group, topics.requests.name) == end_offsets(
        settings, topics.requests.name
    )
    links = [LinkRecord.model_validate_json(v) for _, v in read_topic(settings, topics.links.name)]
    assert len(links) == len(urls)  # one link per page
    assert {link.host for link in links} == {n.split(":")[0] for n in netlocs}


def _garbage() -> list[bytes]:
    """Records no crawler wrote: not JSON, the wrong shape, absurd nesting, binary, near the limit."""
    return [
        b"not json at all",
        b'{"url": 5, "canonical_url": null}',
        b'{"schema_version": 2, "url": "http://a/", "canonical_url": "a", "host": "a"}',
        b'{"url": "http://a/", "canonical_url": "a", "host": "a", "depth": -1}',
        b"[" * 50_000 + b"]" * 50_000,
        b'{"a": ' * 20_000 + b"1" + b"}" * 20_000,
        b"\xff\xfe\x00\x01 binary \x80\x81",
        b"x" * 900_000,  # near the requests topic's limit (the broker default, 1 MiB)
        b"",  # kcat -Z: an empty value is produced as NULL
    ]


def test_garbage_and_hostile_requests_are_handled_and_every_offset_committed(tmp_path: Path) -> None:
    from tests.support.hostile import HostileWeb

    prefix = f"test-dist-garbage-{uuid.uuid4().hex[:8]}"
    os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"] = prefix
    try:
        settings = load_settings()
    finally:
        del os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"]
    topics = catalog(settings)
    ensure_topics(settings, [topics.requests, topics.raw_pages, topics.dead_letter, topics.links])
    group = f"{prefix}-crawlers"
    env = {**os.environ, "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": prefix}
    with HostileWeb(hosts=["127.0.10.3"]) as web:
        argv = [sys.executable, "-m", "crawlers", "requests", "--group-id", group, "--idle-exit-s", "8"]
        argv += ["--allow-private-host", web.netloc(), "--allowed-domain", "127.0.10.3", "--report"]
        argv += [str(tmp_path / "r.json"), "--set", "DOWNLOAD_TIMEOUT=3", "--set", "RETRY_TIMES=0"]
        argv += ["--set", "DEPTH_LIMIT=3"]
        with (tmp_path / "crawler.log").open("w") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        admin = AdminClient(settings.kafka.librdkafka())
        deadline = time.monotonic() + 60
        while True:  # the member joined and owns every partition
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            owned = sum(len(m.assignment.topic_partitions) for m in desc.members)
            if owned == topics.requests.partitions:
                break
            assert time.monotonic() < deadline, f"the crawler never joined: {desc}"
            time.sleep(0.5)  # poll interval

        # Garbage through kcat, a client nobody here wrote: key TAB value, one per line.
        garbage = _garbage()
        lines = b"".join(f"g{n}".encode() + b"\t" + value + b"\n" for n, value in enumerate(garbage))
        kcat = [
            "kcat",
            "-P",
            "-b",
            settings.kafka.bootstrap_servers,
            "-t",
            topics.requests.name,
            "-K",
            "\t",
            "-Z",
        ]
        subprocess.run(kcat, input=lines, check=True, timeout=60)
        # Well-formed requests for hostile things.
        host = "127.0.10.3"
        urls = [
            web.url("/redirect/other-port"),
            web.url("/redirect/metadata"),
            web.url("/redirect/mapped"),
            web.url("/redirect/file"),
            web.url("/huge"),
            web.url("/bomb/gzip"),
            web.url("/slow"),
            web.url("/control-chars"),
            web.url("/page/1"),
            web.long_url(),
            "file:///etc/passwd",
            f"http://127.0.0.1:{web.decoy[1]}/stolen",
        ]
        producer = Producer(settings.kafka.librdkafka())
        for url in urls:
            request = CrawlRequest(url=url, canonical_url=url, host=host, reason="seed")
            producer.produce(topics.requests.name, request.to_bytes(), host.encode())
        deep = CrawlRequest(url=web.url("/page/7"), canonical_url="x", host=host, depth=9)
        producer.produce(topics.requests.name, deep.to_bytes(), host.encode())
        assert producer.flush(30) == 0
        code = proc.wait(timeout=180)
        log.close()
        output = (tmp_path / "crawler.log").read_text()[-5000:]
        assert code == 0, output

        assert web.requests_to(web.decoy) == []
        assert web.errors == []
        report = json.loads((tmp_path / "r.json").read_text())
        refused = report["refused"]
        for reason in (
            "scheme",
            "offsite",
            "depth",
            "url_too_long",
            "response_too_large",
            "decompressed_too_large",
        ):
            assert refused.get(reason, 0) >= 1, (reason, refused)
        letters = [
            DeadLetter.model_validate_json(v) for _, v in read_topic(settings, topics.dead_letter.name)
        ]
        from_requests = [d for d in letters if d.source_topic == topics.requests.name]
        assert len(from_requests) == len(garbage), [(d.reason, d.error[:80]) for d in from_requests]
        assert {d.reason for d in from_requests} == {"invalid_request"}
        assert all(d.error_class and d.source_partition is not None for d in from_requests)
        assert len({(d.source_partition, d.source_offset) for d in from_requests}) == len(garbage)
        pages = [PageRecord.model_validate_json(v) for _, v in read_topic(settings, topics.raw_pages.name)]
        assert {p.url for p in pages} >= {web.url("/page/1"), web.url("/control-chars")}
        # Every request is done and its output delivered: the group committed to the end.
        assert committed_offsets(settings, group, topics.requests.name) == end_offsets(
            settings, topics.requests.name
        )
