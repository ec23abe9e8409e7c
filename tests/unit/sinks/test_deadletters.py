"""Dead letters built by the sink stage (no services)."""

from __future__ import annotations

from crawlstream.errors import RecordError
from sinks.deadletters import dead_letter


def test_dead_letter_keeps_origin_and_original_bytes() -> None:
    letter = dead_letter(
        RecordError("invalid_json", "bad"),
        topic="t",
        partition=2,
        offset=9,
        key=b"k",
        value=b"{x",
        max_bytes=1024 * 1024,
    )

    assert (letter.stage, letter.reason, letter.error) == ("sink", "invalid_json", "bad")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("t", 2, 9)
    assert letter.original_value() == b"{x"
    assert len(letter.to_bytes()) < 1024 * 1024


def test_a_value_too_large_for_a_dead_letter_is_omitted_but_its_origin_kept() -> None:
    value = b"x" * 1024 * 1024

    letter = dead_letter(
        RecordError("invalid_json", "bad"),
        topic="t",
        partition=0,
        offset=5,
        key=b"k",
        value=value,
        max_bytes=1024 * 1024,
    )

    assert letter.value_b64 is None
    assert "1048576 bytes omitted" in letter.error
    assert letter.source_offset == 5
    assert len(letter.to_bytes()) < 1024 * 1024
