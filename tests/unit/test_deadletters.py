"""The one dead-letter builder: origin and error class carried, and the size rule (key included)."""

from __future__ import annotations

import pytest

from crawlstream.deadletters import (
    MAX_KEY_BYTES,
    RECORD_OVERHEAD,
    Origin,
    build_dead_letter,
    check_fits,
    dead_letter_for_exception,
    fits,
)
from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter

ONE_MIB = 1024 * 1024


def _produced_size(key: bytes | None, value: bytes) -> int:
    return len(key or b"") + len(value) + RECORD_OVERHEAD


def test_small_letter_keeps_everything_and_its_origin() -> None:
    msg = build_dead_letter(
        stage="sink",
        reason="invalid_json",
        detail="Expecting value",
        key=b"http://example.com/a",
        value=b"{not json",
        max_bytes=ONE_MIB,
        origin=Origin("crawlstream.pages.unique", 2, 41),
        error_class_name="ValueError",
    )
    letter = DeadLetter.model_validate_json(msg.value)
    assert msg.key == b"http://example.com/a"
    assert letter.original_key() == b"http://example.com/a"
    assert letter.original_value() == b"{not json"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "crawlstream.pages.unique",
        2,
        41,
    )
    assert letter.error_class == "ValueError"
    assert letter.truncated is False
    assert letter.original_value_bytes == 9


@pytest.mark.parametrize(
    ("key_size", "value_size"),
    [(0, 3 * ONE_MIB), (3 * ONE_MIB, 10), (2 * ONE_MIB, 2 * ONE_MIB), (ONE_MIB - 100, ONE_MIB - 100)],
)
def test_oversized_payloads_are_cut_to_fit_and_say_so(key_size: int, value_size: int) -> None:
    key = b"k" * key_size if key_size else None
    value = b"v" * value_size
    msg = build_dead_letter(
        stage="streams", reason="too_large", detail="x", key=key, value=value, max_bytes=ONE_MIB
    )
    assert _produced_size(msg.key, msg.value) <= ONE_MIB
    letter = DeadLetter.model_validate_json(msg.value)
    assert letter.truncated is True
    assert "truncated" in letter.error
    assert "to fit the dead-letter topic" in letter.error
    assert letter.original_value_bytes == value_size
    kept = letter.original_value() or b""
    assert value.startswith(kept)
    # It keeps most of what fits, not a token amount.
    assert len(kept) + len(letter.original_key() or b"") > ONE_MIB // 3
    if key is not None:
        assert len(msg.key or b"") <= MAX_KEY_BYTES
        assert letter.original_key_bytes == key_size


def test_long_detail_is_capped() -> None:
    msg = build_dead_letter(
        stage="sink", reason="r", detail="e" * 100_000, key=None, value=None, max_bytes=ONE_MIB
    )
    letter = DeadLetter.model_validate_json(msg.value)
    assert len(letter.error) <= 2000


def test_any_exception_becomes_a_letter_with_its_class() -> None:
    msg = dead_letter_for_exception(
        KeyError("base"), stage="streams", key=b"k", value=b"v", max_bytes=ONE_MIB
    )
    assert msg.letter.reason == "unprocessable"
    assert msg.letter.error_class == "KeyError"
    assert "KeyError" in msg.letter.error
    msg = dead_letter_for_exception(
        RecordError("invalid_json", "bad"), stage="streams", key=None, value=b"v", max_bytes=ONE_MIB
    )
    assert (msg.letter.reason, msg.letter.error) == ("invalid_json", "bad")
    assert msg.letter.error_class == "crawlstream.errors.RecordError"


def test_check_fits_names_the_topic_and_size() -> None:
    assert fits(b"k", b"v" * 1000, ONE_MIB)
    assert not fits(None, b"v" * ONE_MIB, ONE_MIB)
    with pytest.raises(RecordError) as info:
        check_fits(b"k", b"v" * ONE_MIB, ONE_MIB, "crawlstream.pages.unique")
    assert info.value.reason == "too_large"
    assert "crawlstream.pages.unique" in info.value.detail
