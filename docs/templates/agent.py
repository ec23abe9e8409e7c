"""__agent__: <what it decides>, one agent of the stream stage (a template: CONTRIBUTING.md).

Copy to ``streams/<agent>.py``, replace ``__agent__`` / ``__Agent__`` and the decision, and call
``register`` from :func:`streams.app.create_app`.
Reads  ``<prefix>.pages.unique`` (key: canonical URL, value: PageEvent JSON).
Writes ``<prefix>.deadletter`` (an event it cannot handle, through the boundary of
       :mod:`streams.agent`); to send records, add ``effects.send(<topic name>, key, value)``
       with a topic of the catalog (:mod:`crawlstream.topics`, one entry per topic).
Table  ``__agent___pages``: host -> pages seen (a changelog-backed faust table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crawlstream.records import PageEvent, decode_record
from crawlstream.settings import Settings
from crawlstream.urls import host_of
from streams import outputs as streams_outputs
from streams.agent import Boundary
from streams.topology import StageTopics

AGENT = "__agent__"


def counted(seen: int | None, event: PageEvent) -> int:
    """The decision, a plain function unit-tested without Kafka: pages seen of the event's host."""
    return (seen or 0) + 1


@dataclass(frozen=True)
class __Agent__Agent:
    agent: Any
    pages: Any


def register(app: Any, settings: Settings, topics: StageTopics) -> __Agent__Agent:
    outputs = streams_outputs.of(app)
    pages = streams_outputs.delivered_table(
        app,
        outputs,
        f"{AGENT}_pages",
        partitions=topics.unique.partitions,
        key_type=str,
        value_type=int,
        help="host -> pages seen",
    )

    def handle(event: Any) -> streams_outputs.Effects:
        # Anything raised here (RecordError or not) becomes a dead letter with the event's origin.
        page = decode_record(PageEvent, event.value, reason="invalid_event")
        host = host_of(page.page.canonical_url)
        return streams_outputs.Effects().write(pages, host, counted(pages.get(host), page))

    boundary = Boundary(app, settings, AGENT)
    return __Agent__Agent(app.agent(topics.unique, name=AGENT)(boundary.agent(handle)), pages)
