"""Page and dead-letter records: round trips and the reasons malformed input gets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, PageRecord, PageTouch, decode_json, decode_page, decode_record


def _page(**overrides: object) -> PageRecord:
    fields: dict[str, object] = {
        "url": "http://example.com/a?utm_source=x",
        "canonical_url": "http://example.com/a",
        "final_url": "http://example.com/a",
        "status": 200,
        "content_type": "text/html",
        "encoding": "utf-8",
        "title": "A — é",
        "body": "<html><title>A — é</title></html>",
        "body_bytes": 40,
        "fetched_at": datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        "fetch_latency_s": 0.012,
        "depth": 2,
        "referrer": "http://example.com/",
        "job_id": "demo",
        "run_id": "r1",
    }
    fields.update(overrides)
    return PageRecord.model_validate(fields)


def test_page_record_round_trips_through_bytes() -> None:
    page = _page()
    raw = page.to_bytes()
    assert isinstance(raw, bytes)
    decoded = decode_page(raw)
    assert decoded == page
    assert decoded.schema_version == 1
    assert decoded.fetched_at.tzinfo is not None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "null_value"),
        (b"not json", "invalid_json"),
        (b'{"url": "x"}', "invalid_record"),
        (_page().to_bytes().replace(b'"status":200', b'"status":999'), "invalid_record"),
        (_page().to_bytes().replace(b'"schema_version":1', b'"schema_version":2'), "invalid_record"),
        (_page().to_bytes()[:-1] + b',"surprise":1}', "invalid_record"),
    ],
)
def test_malformed_records_raise_with_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_page(raw)
    assert info.value.reason == reason
    assert info.value.detail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "null_value"),  # a tombstone is named as such, whatever the stage expected
        (b"{not json", "invalid_touch"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_touch"),  # capped nesting, not a RecursionError
        (_page().to_bytes(), "invalid_touch"),  # another record
    ],
)
def test_a_stage_names_the_one_reason_for_anything_that_is_not_its_record(
    raw: bytes | None, reason: str
) -> None:
    with pytest.raises(RecordError) as info:
        decode_record(PageTouch, raw, reason="invalid_touch")
    assert info.value.reason == reason
    assert info.value.detail


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(None, "null_value"), (b"{nope", "invalid_json"), (b"[" * 100_000 + b"]" * 100_000, "invalid_json")],
)
def test_json_that_no_model_describes_is_decoded_or_refused_with_a_reason(
    raw: bytes | None, reason: str
) -> None:
    assert decode_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    with pytest.raises(RecordError) as info:
        decode_json(raw)
    assert info.value.reason == reason


def test_dead_letter_keeps_origin_and_original_bytes() -> None:
    error = RecordError("invalid_json", "Expecting value")
    letter = DeadLetter.for_message(
        stage="streams", error=error, topic="t", partition=2, offset=41, key=b"k", value=b"\xff\x00raw"
    )
    again = DeadLetter.model_validate_json(letter.to_bytes())
    assert (again.source_topic, again.source_partition, again.source_offset) == ("t", 2, 41)
    assert again.reason == "invalid_json"
    assert again.original_value() == b"\xff\x00raw"
