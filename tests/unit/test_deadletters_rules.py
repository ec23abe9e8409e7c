"""Dead-letter rules test_deadletters.py leaves open (found by `make mutate`): a letter fits its
topic at the exact limit and is not cut when it fits, the key keeps half the room it needs, the
note tells the truth about what was cut, a topic too small for any payload still gets a letter
with reason and origin, and the producer-side size check counts the key."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from crawlstream import records
from crawlstream.deadletters import (
    MAX_ERROR_CHARS,
    MAX_KEY_BYTES,
    RECORD_OVERHEAD,
    DeadLetterMessage,
    Origin,
    build_dead_letter,
    capped_key,
    check_fits,
    fits,
)
from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter

ORIGIN = Origin("crawlstream.pages.unique", 3, 77)


class _FixedClock(datetime):
    @classmethod
    def now(cls, tz: object = None) -> _FixedClock:  # type: ignore[override]
        return cls(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every letter's failed_at has the same length, so a size measured once holds for the next build.
    monkeypatch.setattr(records, "datetime", _FixedClock)


def build(key: bytes | None, value: bytes | None, max_bytes: int, detail: str = "boom") -> DeadLetterMessage:
    return build_dead_letter(
        stage="sink",
        reason="too_large",
        detail=detail,
        key=key,
        value=value,
        max_bytes=max_bytes,
        origin=ORIGIN,
        error_class_name="ValueError",
    )


def produced(msg: DeadLetterMessage) -> int:
    return len(msg.key or b"") + len(msg.value) + RECORD_OVERHEAD


def parsed(msg: DeadLetterMessage) -> DeadLetter:
    return DeadLetter.model_validate_json(msg.value)


def kept(b64: str | None) -> bytes:
    return base64.b64decode(b64 or "")


# --- a letter that fits is kept whole, at the exact limit too ------------------------------------


def test_a_letter_that_fits_its_topic_exactly_is_not_truncated() -> None:
    key, value = b"http://example.com/a", b"x" * 5000
    exact = produced(build(key, value, 10 * 1024 * 1024))
    msg = build(key, value, exact)
    letter = parsed(msg)
    assert produced(msg) == exact
    assert not letter.truncated
    assert (kept(letter.key_b64), kept(letter.value_b64)) == (key, value)


def test_a_key_of_exactly_the_key_cap_is_produced_as_is() -> None:
    key = b"k" * MAX_KEY_BYTES
    assert capped_key(key) == key
    longer = capped_key(key + b"k")
    assert longer is not None
    assert len(longer) == MAX_KEY_BYTES
    assert longer != key


def test_the_error_detail_is_capped_at_max_error_chars() -> None:
    whole = "d" * MAX_ERROR_CHARS
    assert parsed(build(b"k", b"v", 1024 * 1024, detail=whole)).error == whole
    cut = parsed(build(b"k", b"v", 1024 * 1024, detail=whole + "d")).error
    assert len(cut) == MAX_ERROR_CHARS
    assert cut.endswith("...")


# --- a truncated letter: what it keeps and what its note says ------------------------------------


def test_a_key_that_needs_it_keeps_half_the_room_when_both_payloads_are_cut() -> None:
    msg = build(b"k" * 200_000, b"v" * 200_000, 64 * 1024)
    letter = parsed(msg)
    key_kept, value_kept = len(kept(letter.key_b64)), len(kept(letter.value_b64))
    assert letter.truncated
    assert produced(msg) <= 64 * 1024
    assert key_kept > 0
    # As much as fits: the JSON, the note and its digit slack leave less than 100 bytes unused.
    assert produced(msg) > 64 * 1024 - 100
    assert abs(key_kept - value_kept) <= 1


def test_only_the_cut_value_is_reported_cut() -> None:
    msg = build(b"http://example.com/a", b"v" * 200_000, 64 * 1024)
    letter = parsed(msg)
    value_kept = len(kept(letter.value_b64))
    assert kept(letter.key_b64) == b"http://example.com/a"
    assert f"value truncated from 200000 to {value_kept} bytes" in letter.error
    assert "key truncated" not in letter.error


def test_only_the_cut_key_is_reported_cut() -> None:
    msg = build(b"k" * 200_000, b"{}", 64 * 1024)
    letter = parsed(msg)
    key_kept = len(kept(letter.key_b64))
    assert kept(letter.value_b64) == b"{}"
    assert f"key truncated from 200000 to {key_kept} bytes" in letter.error
    assert "value truncated" not in letter.error


def test_a_letter_without_a_value_but_with_a_huge_key_still_fits() -> None:
    msg = build(b"k" * 200_000, None, 64 * 1024)
    letter = parsed(msg)
    assert produced(msg) <= 64 * 1024
    assert letter.truncated
    assert letter.value_b64 is None
    assert letter.original_value_bytes is None
    assert letter.original_key_bytes == 200_000


# --- a topic too small for any payload -----------------------------------------------------------


def test_a_topic_too_small_for_any_payload_still_gets_a_letter_with_reason_and_origin() -> None:
    key, value = b"http://example.com/a", b"v" * 5000
    results = {m: build(key, value, m) for m in range(RECORD_OVERHEAD, RECORD_OVERHEAD + 2000)}
    omitted = [m for m, msg in results.items() if parsed(msg).key_b64 is None]
    assert omitted, "no topic size in the range leaves the payload out"
    for m, msg in results.items():
        letter = parsed(msg)
        assert (letter.stage, letter.reason, letter.error_class) == ("sink", "too_large", "ValueError")
        assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
            ORIGIN.topic,
            ORIGIN.partition,
            ORIGIN.offset,
        )
        assert (letter.original_key_bytes, letter.original_value_bytes) == (len(key), len(value))
        assert letter.truncated
        if m in omitted:
            assert letter.value_b64 is None
            assert "payload omitted" in letter.error
    # Some of the smallest topics take the payload-less letter: it fits them.
    assert any(produced(results[m]) <= m for m in omitted)


@pytest.mark.parametrize(
    ("key", "value"),
    [(b"http://example.com/a", b"v" * 5000), (b"k", b"v" * 5000), (b"k" * 5000, b"v")],
)
def test_the_payload_is_left_out_only_when_not_even_its_empty_prefix_fits(key: bytes, value: bytes) -> None:
    # At the smallest topic that takes the letter with (empty) payload fields, that letter fills
    # the topic exactly: one byte less and it would not fit, so nothing was left out needlessly.
    # Every larger topic keeps the payload fields too.
    sizes = range(RECORD_OVERHEAD, RECORD_OVERHEAD + 4000)
    kept_payload = [m for m in sizes if parsed(build(key, value, m)).value_b64 is not None]
    first = kept_payload[0]
    assert produced(build(key, value, first)) == first
    assert kept_payload == list(range(first, sizes.stop))


# --- the producer-side size check ----------------------------------------------------------------


def test_a_record_of_exactly_the_topic_limit_fits() -> None:
    assert fits(b"k" * 10, b"v" * 100, 10 + 100 + RECORD_OVERHEAD)
    assert not fits(b"k" * 10, b"v" * 100, 10 + 100 + RECORD_OVERHEAD - 1)


def test_the_size_check_counts_the_key_and_names_the_size() -> None:
    limit = 100 + RECORD_OVERHEAD
    check_fits(None, b"v" * 100, limit, "acme.pages.raw")
    with pytest.raises(RecordError) as refused:
        check_fits(b"k" * 50, b"v" * 100, limit, "acme.pages.raw")
    assert refused.value.reason == "too_large"
    assert f"record of 150 bytes exceeds acme.pages.raw's limit of {limit} bytes" in refused.value.detail
