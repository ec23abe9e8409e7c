"""The distributed spider in a frontier run: fair dispatch, run filter, outcomes, 304, backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from scrapy.http import HtmlResponse, Response

from crawlers.hoststate import backoff_s
from crawlers.pipelines import _PIPELINES
from crawlstream.records import CrawlRequest, FetchOutcome, HostState, LinkRecord, PageRecord, Scope
from tests.unit.crawlers.test_distributed_spider import _Message, _setup

RUN = "run-7"
SCOPE = Scope(follow="same-host", max_depth=3)


def request(url: str, depth: int = 0, run: str = RUN, **fields: Any) -> bytes:
    host = url.split("/")[2]
    return CrawlRequest(
        url=url, canonical_url=url, host=host, depth=depth, job_id="j", run_id=run, scope=SCOPE, **fields
    ).to_bytes()


class FakeHostStates:
    def __init__(self, cooling: set[str]) -> None:
        self.cooling = cooling
        self.states: dict[str, HostState] = {}

    def ready_at(self, host: str) -> float:
        return datetime.now(UTC).timestamp() + 60 if host in self.cooling else 0.0

    def get(self, host: str) -> HostState | None:
        return None

    def poll(self) -> None:
        pass

    def succeeded(self, host: str) -> None:
        pass

    def failed(self, host: str) -> None:
        pass


def frontier_spider(messages: list[_Message], **attrs: Any) -> Any:
    spider, consumer, engine, producer = _setup(messages)
    spider.allowed_domains = None
    spider.frontier_run = RUN
    spider._link_scope = None
    for name, value in attrs.items():
        setattr(spider, name, value)
    return spider, consumer, engine, producer


def test_hosts_take_turns_a_cooling_host_waits_alone_and_each_host_keeps_its_limit() -> None:
    big = [_Message(n, request(f"http://big.test/{n}", depth=n % 3)) for n in range(30)]
    small = [_Message(30 + n, request(f"http://s{n}.test/")) for n in range(5)]
    cooling = [_Message(40, request("http://cool.test/"))]
    spider, _consumer, engine, _producer = frontier_spider(
        [*big, *small, *cooling], max_in_flight=12, per_host=3, host_states=FakeHostStates({"cool.test"})
    )
    spider.poll()
    hosts = [r.url.split("/")[2] for r in engine.crawled]
    assert len(engine.crawled) == 8  # 3 of the big host (its limit) and one of each small host
    assert hosts.count("big.test") == 3
    assert sorted(h for h in hosts if h.startswith("s")) == [f"s{n}.test" for n in range(5)]
    assert "cool.test" not in hosts  # waits for its cooldown, without holding anyone
    # Breadth-first within the host: its depth-0 requests first.
    assert [r.meta["depth"] for r in engine.crawled if "big.test" in r.url] == [0, 0, 0]


def test_other_runs_are_skipped_and_a_frontier_request_ends_with_its_outcome_after_its_records() -> None:
    spider, consumer, engine, producer = frontier_spider(
        [
            _Message(0, request("http://a.test/", run="other")),
            _Message(
                1, request("http://a.test/p", etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
            ),
        ]
    )
    spider.poll()
    [sent] = engine.crawled
    assert sent.headers[b"If-None-Match"] == b'"v1"'
    assert sent.meta["handle_httpstatus_list"] == [304]
    body = b'<html><body><a href="/q">q</a><a href="/q">again</a><a href="http://b.test/">b</a></body></html>'
    response = HtmlResponse(
        sent.url, body=body, headers={"Content-Type": "text/html", "ETag": '"v2"'}, request=sent
    )
    pipeline = _PIPELINES[spider.crawler]
    items = []
    for item in spider.parse(response):
        pipeline.process_item(item)
        items.append(item)
        spider.item_settled(item, response=response)
    assert [type(i) for i in items] == [PageRecord, LinkRecord]  # /q once; b.test is another host
    assert items[1].scope == SCOPE
    producer.deliver()
    spider.poll()
    outcomes = [FetchOutcome.model_validate_json(v) for _t, _k, v in producer.sent if b'"outcome"' in v[:40]]
    assert len(outcomes) == 1
    outcome = outcomes[0]
    assert (outcome.outcome, outcome.status, outcome.etag, outcome.links) == ("fetched", 200, '"v2"', 1)
    assert outcome.refused == {"offsite_host": 1}
    assert outcome.links_through == {0: 1}  # the link's delivery (the fake: page @0, link @1)
    assert consumer.stored == [1]  # the other run's request: skipped at once; not ours yet
    producer.deliver()
    spider.poll()
    assert consumer.stored == [1, 2]  # past the outcome's delivery


def test_a_304_is_a_metadata_record_and_a_not_modified_outcome() -> None:
    spider, _consumer, engine, producer = frontier_spider(
        [_Message(0, request("http://a.test/p", etag='"v1"'))]
    )
    spider.poll()
    [sent] = engine.crawled
    response = Response(sent.url, status=304, headers={"ETag": '"v1"'}, request=sent)
    pipeline = _PIPELINES[spider.crawler]
    for item in spider.parse(response):
        pipeline.process_item(item)
        spider.item_settled(item, response=response)
    producer.deliver()
    spider.poll()
    records = [PageRecord.model_validate_json(v) for t, _k, v in producer.sent if t.endswith("pages.raw")]
    assert [(r.status, r.kind, r.body) for r in records] == [(304, "metadata", "")]
    [outcome] = [FetchOutcome.model_validate_json(v) for _t, _k, v in producer.sent if b'"outcome"' in v[:40]]
    assert (outcome.outcome, outcome.etag) == ("not_modified", '"v1"')


def test_backoff_doubles_after_several_failures_up_to_a_cap() -> None:
    assert backoff_s(2, 3, 5.0, 300.0) == 0.0
    assert [backoff_s(n, 3, 5.0, 300.0) for n in (3, 4, 5)] == [5.0, 10.0, 20.0]
    assert backoff_s(20, 3, 5.0, 300.0) == 300.0
    assert timedelta(seconds=backoff_s(4, 3, 5.0, 300.0)) == timedelta(seconds=10)


def test_a_standing_pool_leaves_frontier_runs_requests_to_their_own_crawlers() -> None:
    """A crawler of no frontier run (the Kubernetes pool) fetches requests of no run and skips a
    frontier run's (they carry its scope), so a run's page is not fetched by the pool as well."""
    plain = CrawlRequest(url="http://p.test/", canonical_url="http://p.test/", host="p.test").to_bytes()
    spider, consumer, engine, _producer = frontier_spider(
        [_Message(0, request("http://a.test/")), _Message(1, plain)], frontier_run=""
    )
    spider.poll()
    assert [r.url for r in engine.crawled] == ["http://p.test/"]
    assert spider.crawler.stats.get_value("crawlstream/requests_of_other_runs") == 1
    assert consumer.stored == [1]  # the run's request is done with at once (skipped, committed)
