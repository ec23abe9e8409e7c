"""The one dead-letter builder of every stage, with one size rule.

Whatever a stage cannot handle (a record it cannot decode, a record whose processing raised, a
store's refusal, a delivery Kafka refused) becomes a :class:`~crawlstream.records.DeadLetter` on
``<prefix>.deadletter`` through :func:`build_dead_letter`: the reason, the error class, the
origin (topic, partition, offset) and as much of the original key and value as fits.

The size rule: the produced message (its key plus the letter's JSON) never exceeds the dead-letter
topic's ``max.message.bytes`` less :data:`RECORD_OVERHEAD`. A letter that would not fit keeps a
prefix of the original value (then of the key), sets ``truncated`` and records the original sizes,
and its ``error`` says so; the produced key itself is capped at :data:`MAX_KEY_BYTES` (a key is an
identifier, not a payload). The source offset still points at the original while its topic
retains it. A letter therefore can never be refused for its size, whatever it was built from.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter

# Room a record needs in a batch besides key and value (record header, varints, headers).
RECORD_OVERHEAD = 1024
MAX_KEY_BYTES = 1024
MAX_ERROR_CHARS = 2000
_TRUNCATED_KEY_MARK = b"...(truncated)"
_NOTE_DIGITS_SLACK = 32  # the note names kept sizes: up to this many more digits than with 0


@dataclass(frozen=True)
class Origin:
    """Where a record came from: its topic, partition and offset (None outside a consumer)."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class DeadLetterMessage:
    """What to produce: the (capped) key and the letter; ``value`` is the letter's JSON bytes."""

    key: bytes | None
    letter: DeadLetter
    value: bytes


def error_class(exc: BaseException) -> str:
    """``module.QualifiedName`` of an exception, e.g. ``ValueError``, ``psycopg2.errors.DataError``."""
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def reason_and_detail(exc: BaseException) -> tuple[str, str]:
    """A RecordError's own reason; any other exception is ``unprocessable`` with its message."""
    if isinstance(exc, RecordError):
        return exc.reason, exc.detail
    return "unprocessable", f"{type(exc).__name__}: {exc}"


def capped_key(key: bytes | None) -> bytes | None:
    """The key a dead letter is produced with: the original, or its first bytes and a mark."""
    if key is None or len(key) <= MAX_KEY_BYTES:
        return key
    return key[: MAX_KEY_BYTES - len(_TRUNCATED_KEY_MARK)] + _TRUNCATED_KEY_MARK


def build_dead_letter(
    *,
    stage: str,
    reason: str,
    detail: str,
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
    origin: Origin | None = None,
    error_class_name: str | None = None,
) -> DeadLetterMessage:
    """The dead letter of one record, fitted to a topic that takes messages of ``max_bytes``."""
    origin = origin or Origin()
    detail = detail if len(detail) <= MAX_ERROR_CHARS else detail[: MAX_ERROR_CHARS - 3] + "..."
    produced_key = capped_key(key)
    limit = max_bytes - RECORD_OVERHEAD - len(produced_key or b"")

    def letter(kept_key: bytes | None, kept_value: bytes | None, note: str = "") -> DeadLetter:
        truncated = bool(note)
        return DeadLetter(
            stage=stage,
            reason=reason,
            error=detail + note,
            error_class=error_class_name,
            source_topic=origin.topic,
            source_partition=origin.partition,
            source_offset=origin.offset,
            key_b64=_b64(kept_key),
            value_b64=_b64(kept_value),
            truncated=truncated,
            original_key_bytes=None if key is None else len(key),
            original_value_bytes=None if value is None else len(value),
        )

    full = letter(key, value)
    encoded = full.to_bytes()
    if len(encoded) <= limit:
        return DeadLetterMessage(produced_key, full, encoded)
    # Too big: keep what fits of the payloads. The JSON around them has a known size (the letter
    # without them, its note at the longest), and base64 turns 3 bytes into 4. The key keeps at
    # least half the room when it needs it (it names the record), the value gets the rest.
    key_len, value_len = len(key or b""), len(value or b"")
    bare = letter(b"", b"", note=_note(key, value, 0, 0)).to_bytes()
    room = max(0, (limit - len(bare) - _NOTE_DIGITS_SLACK) * 3 // 4 - 6)
    keep_key = min(key_len, max(room - value_len, room // 2))
    keep_value = min(value_len, room - keep_key)
    kept_key = None if key is None else key[:keep_key]
    kept_value = None if value is None else value[:keep_value]
    small = letter(kept_key, kept_value, note=_note(key, value, keep_key, keep_value))
    encoded = small.to_bytes()
    if len(encoded) > limit:  # only when detail and origin alone exceed the limit (max_bytes absurdly low)
        small = letter(None, None, note=" (payload omitted: too large for the dead-letter topic)")
        encoded = small.to_bytes()
    return DeadLetterMessage(produced_key, small, encoded)


def dead_letter_for_exception(
    exc: BaseException,
    *,
    stage: str,
    key: bytes | None,
    value: bytes | None,
    max_bytes: int,
    origin: Origin | None = None,
) -> DeadLetterMessage:
    """:func:`build_dead_letter` for an exception a record caused (RecordError or any other)."""
    reason, detail = reason_and_detail(exc)
    return build_dead_letter(
        stage=stage,
        reason=reason,
        detail=detail,
        key=key,
        value=value,
        max_bytes=max_bytes,
        origin=origin,
        error_class_name=error_class(exc),
    )


def _note(key: bytes | None, value: bytes | None, kept_key: int, kept_value: int) -> str:
    parts = []
    if value is not None and kept_value < len(value):
        parts.append(f"value truncated from {len(value)} to {kept_value} bytes")
    if key is not None and kept_key < len(key):
        parts.append(f"key truncated from {len(key)} to {kept_key} bytes")
    return f" ({'; '.join(parts)} to fit the dead-letter topic)" if parts else " (truncated)"


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def fits(key: bytes | None, value: bytes | None, max_bytes: int) -> bool:
    """Whether a record of ``key`` and ``value`` fits a topic taking messages of ``max_bytes``."""
    return len(key or b"") + len(value or b"") + RECORD_OVERHEAD <= max_bytes


def check_fits(key: bytes | None, value: bytes | None, max_bytes: int, topic: str) -> None:
    """Raise RecordError ``too_large`` when the record would be refused by ``topic``'s limit."""
    if not fits(key, value, max_bytes):
        size = len(key or b"") + len(value or b"")
        raise RecordError("too_large", f"record of {size} bytes exceeds {topic}'s limit of {max_bytes} bytes")
