"""Dead letters of the stream stage: any agent's undecodable or unprocessable event.

Every agent sends what it cannot handle to ``<prefix>.deadletter`` (key: the original key,
value: DeadLetter JSON with stage ``streams``, the reason, the original bytes and the source
topic/partition/offset) and counts it in ``streams_dead_letters_total{agent, reason}``.
"""

from __future__ import annotations

from typing import Any

from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter
from streams import metrics

STAGE = "streams"
# Room for DeadLetter's JSON fields around the base64 payload.
_DEAD_LETTER_OVERHEAD = 16 * 1024


def dead_letter_for(event: Any, error: RecordError, max_message_bytes: int) -> DeadLetter:
    """A DeadLetter carrying the event's origin; drops the payload if it could not fit the topic."""
    key: bytes | None = event.key
    value: bytes | None = event.value
    size = len(key or b"") + len(value or b"")
    if size * 4 // 3 + _DEAD_LETTER_OVERHEAD > max_message_bytes:
        error = RecordError(error.reason, f"{error.detail} (payload of {size} bytes omitted: too large)")
        key = value = None
    msg = event.message
    return DeadLetter.for_message(
        stage=STAGE,
        error=error,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=key,
        value=value,
    )


async def send_dead_letter(
    topic: Any, agent: str, event: Any, error: RecordError, max_message_bytes: int
) -> None:
    """Publish the dead letter (attached to the event: sent before its offset is committed)."""
    metrics.DEAD_LETTERS.labels(agent, error.reason).inc()
    letter = dead_letter_for(event, error, max_message_bytes)
    await topic.send(key=event.key, value=letter.to_bytes())
