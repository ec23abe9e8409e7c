"""The dedup stage's plain decisions, without Kafka or faust."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import PageRecord
from streams.dedup import (
    Decision,
    Outcome,
    dead_letter_for,
    decode_keyed_page,
    dedup_decision,
    event_lag_seconds,
)

FETCHED = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def page(url: str = "https://example.org/a", fetched_at: datetime = FETCHED) -> PageRecord:
    return PageRecord(url=url, canonical_url=url, final_url=url, status=200, fetched_at=fetched_at)


def test_first_sighting_is_unique_and_remembers_fetch_time() -> None:
    assert dedup_decision(None, page()) == Decision(Outcome.UNIQUE, "2026-11-25T10:00:00+00:00")


def test_seen_url_is_duplicate_and_keeps_first_fetch_time() -> None:
    later = page(fetched_at=FETCHED + timedelta(hours=1))
    assert dedup_decision("2026-11-25T10:00:00+00:00", later) == Decision(
        Outcome.DUPLICATE, "2026-11-25T10:00:00+00:00"
    )


def test_decode_keyed_page_accepts_key_equal_to_canonical_url() -> None:
    record = page()
    assert decode_keyed_page(b"https://example.org/a", record.to_bytes()) == record


@pytest.mark.parametrize("key", [b"https://example.org/b", None])
def test_decode_keyed_page_rejects_other_or_missing_key(key: bytes | None) -> None:
    with pytest.raises(RecordError) as info:
        decode_keyed_page(key, page().to_bytes())
    assert info.value.reason == "key_mismatch"
    assert "https://example.org/a" in info.value.detail


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"{not json", "invalid_json"), (b'{"url": "x"}', "invalid_record"), (None, "null_value")],
)
def test_decode_keyed_page_reports_decode_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_keyed_page(b"k", value)
    assert info.value.reason == reason


def test_event_lag_is_seconds_since_fetch_and_never_negative() -> None:
    assert event_lag_seconds(page(), FETCHED + timedelta(seconds=2.5)) == 2.5
    assert event_lag_seconds(page(), FETCHED - timedelta(seconds=1)) == 0.0


def _event(key: bytes | None, value: bytes | None) -> SimpleNamespace:
    message = SimpleNamespace(topic="t.pages.raw", partition=2, offset=41)
    return SimpleNamespace(key=key, value=value, message=message)


def test_dead_letter_carries_origin_and_payload() -> None:
    letter = dead_letter_for(_event(b"k", b"{bad"), RecordError("invalid_json", "boom"), 1024 * 1024)
    assert (letter.stage, letter.reason, letter.error) == ("streams", "invalid_json", "boom")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("t.pages.raw", 2, 41)
    assert letter.original_value() == b"{bad"
    assert letter.key_b64 == "aw=="


def test_dead_letter_drops_payload_that_cannot_fit_the_topic() -> None:
    limit = 1024 * 1024
    letter = dead_letter_for(_event(b"k", b"x" * limit), RecordError("invalid_json", "boom"), limit)
    assert letter.original_value() is None
    assert letter.key_b64 is None
    assert "omitted" in letter.error
    assert len(letter.to_bytes()) < limit
