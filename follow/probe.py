"""The follow stage's probe: the page events on ``outbox.event.page``, as its consumer reads them.

The events are Debezium's (the outbox EventRouter of the connector the control plane registers),
but their contract with a consumer is this stage's: the key is the page's URL, header
``eventType`` its type (``created``, ``changed``, ``gone``), header ``id`` the outbox event's id,
which stays the same when Connect re-publishes an event after a restart. :mod:`follow.follow`
reads the same headers (:data:`EVENT_TYPE_HEADER`, :data:`EVENT_ID_HEADER`) to forward an event
with its delivery id; a pipeline run (:mod:`control.run.pipeline`) asks :func:`page_event_ids`
which rows got their page event, and how many distinct ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EVENT_TYPE_HEADER = "eventType"
EVENT_ID_HEADER = "id"

# (key, value, headers) of one record; headers as (name, value) pairs, as confluent-kafka gives them.
Record = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]


def page_event_ids(records: Iterable[Record], event_type: str = "created") -> list[tuple[str, str]]:
    """(URL, outbox event id) of each page event of ``event_type``, in order, replays included.

    Tombstones and keyless records are no page event of a row; an event without an ``id``
    header has the id ``""``."""
    found = []
    for key, value, headers in records:
        if value is None or key is None:
            continue
        named = dict(headers)
        if (named.get(EVENT_TYPE_HEADER) or b"").decode("utf-8", "replace") != event_type:
            continue
        event_id = (named.get(EVENT_ID_HEADER) or b"").decode("utf-8", "replace")
        found.append((key.decode("utf-8", "replace"), event_id))
    return found
