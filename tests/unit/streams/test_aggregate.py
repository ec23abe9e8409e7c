"""Per-domain aggregation: samples from events and touches, accumulation, latency quantiles."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import reduce
from typing import Any

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import Enrichment, PageEvent, PageRecord, PageTouch
from streams import aggregate

AT = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)


def event(url: str, status: int = 200, latency: float = 0.1, **fields: object) -> PageEvent:
    page = PageRecord(
        url=url,
        canonical_url=url,
        final_url=url,
        status=status,
        fetched_at=AT,
        body_bytes=1000,
        fetch_latency_s=latency,
        run_id="run-1",
    )
    return PageEvent(page=page, enrichment=Enrichment(), **{"change": "new", **fields})


def test_event_sample_counts_its_page_status_class_change_and_marks() -> None:
    sample = aggregate.sample_of_event(
        event("https://a.example/x", status=404, duplicate_of="https://a.example/y")
    )
    assert sample == {
        "d": "a.example",
        "r": "run-1",
        "t": AT.timestamp(),
        "pages": 1,
        "bytes": 1000,
        "status_4xx": 1,
        "duplicates": 1,
        "new": 1,
        "lat": 0.1,
    }
    json.dumps(sample)  # travels as JSON


def test_touch_sample_is_an_unchanged_page() -> None:
    touch = PageTouch(
        canonical_url="https://b.example/", fetched_at=AT, status=200, body_bytes=7, fetch_latency_s=0.5
    )
    sample = aggregate.sample_of_touch(touch)
    assert (sample["d"], sample["unchanged"], sample["status_2xx"], sample["bytes"], sample["lat"]) == (
        "b.example",
        1,
        1,
        7,
        0.5,
    )
    assert "new" not in sample
    assert "changed" not in sample


@pytest.mark.parametrize(("status", "name"), [(200, "status_2xx"), (301, "status_3xx"), (503, "status_5xx")])
def test_status_class(status: int, name: str) -> None:
    assert aggregate.status_class(status) == name


def test_accumulation_sums_counters_and_reports_mean_and_p95_latency() -> None:
    latencies = [0.01 * i for i in range(1, 101)]  # 0.01 .. 1.00 s
    samples = [
        aggregate.sample_of_event(event(f"https://a.example/{i}", latency=s)) for i, s in enumerate(latencies)
    ]
    samples.append(aggregate.sample_of_event(event("https://a.example/c", change="changed", latency=0.5)))
    acc: dict[str, Any] = reduce(aggregate.add, samples, {})
    figures = aggregate.summary(acc)
    assert figures["pages"] == 101
    assert figures["new"] == 100
    assert figures["changed"] == 1
    assert figures["bytes"] == 101_000
    assert figures["status_2xx"] == 101
    assert figures["latency_mean_s"] == pytest.approx((sum(latencies) + 0.5) / 101)
    # The true p95 is 0.95 s; buckets are 2**(1/8) apart (about 9 %).
    assert figures["latency_p95_s"] == pytest.approx(0.95, rel=0.1)


def test_add_does_not_modify_the_accumulator_and_survives_a_json_round_trip() -> None:
    first = aggregate.add({}, aggregate.sample_of_event(event("https://a.example/1")))
    restored = json.loads(json.dumps(first))  # what a table changelog gives back
    second = aggregate.add(restored, aggregate.sample_of_event(event("https://a.example/2")))
    assert first["pages"] == 1
    assert second["pages"] == 2
    assert sum(second["lat_hist"].values()) == 2


def test_empty_accumulator_has_zero_figures() -> None:
    assert aggregate.summary({}) == {name: 0 for name in aggregate.COUNTERS} | {
        "latency_mean_s": 0.0,
        "latency_p95_s": 0.0,
    }


def test_domain_stats_rounds_faust_window_end() -> None:
    acc = aggregate.add({}, aggregate.sample_of_event(event("https://a.example/1")))
    start = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).timestamp()
    stats = aggregate.domain_stats("a.example", "tumbling_1m", start, start + 60 - 0.1, acc)
    assert stats.window_end == datetime(2026, 11, 25, 10, 1, tzinfo=UTC)
    assert (stats.pages, stats.new) == (1, 1)
    assert stats.latency_mean_s == pytest.approx(0.1)


def test_samples_are_checked_where_they_are_made() -> None:
    with pytest.raises(RecordError, match="lat"):
        aggregate.sample_of_event(event("https://a.example/x", latency=float("inf")))
    huge = event("https://a.example/x").model_copy(
        update={"page": event("https://a.example/x").page.model_copy(update={"body_bytes": 2**60})}
    )
    with pytest.raises(RecordError, match="bytes"):
        aggregate.sample_of_event(huge)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "null_value"),
        (b"{", "invalid_json"),
        (b"[" * 10_000 + b"]" * 10_000, "invalid_json"),
        (b'"text"', "invalid_sample"),
        (b'{"d": "a.example", "r": "", "t": 1.5, "pages": 1, "x": 1}', "invalid_sample"),
        (b'{"d": "a.example", "r": "", "t": 0, "pages": 1}', "invalid_sample"),
        (b'{"d": "a.example", "r": "", "t": 1.5, "pages": 1.5}', "invalid_sample"),
        (b'{"d": "a.example", "r": "", "t": 1.5, "pages": 1, "lat": -1}', "invalid_sample"),
        (b'{"d": "a.example", "r": "", "t": 1.5, "lat": NaN}', "invalid_sample"),
        (b'{"d": "a.example", "t": 1.5}', "invalid_sample"),
    ],
)
def test_parse_sample_refuses_what_is_not_a_sample(raw: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        aggregate.parse_sample(raw)
    assert info.value.reason == reason


def test_parse_sample_reads_back_what_the_sampler_makes() -> None:
    made = aggregate.sample_of_event(event("https://a.example/x", latency=0.25))
    assert aggregate.parse_sample(json.dumps(made).encode()) == made
