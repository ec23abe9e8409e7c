"""The topic families the sink stage stores, one worker type each: what it reads and where to.

| family  | topic (catalog)           | record      | sink                       | consumer group        |
|---------|---------------------------|-------------|----------------------------|-----------------------|
| pages   | ``<prefix>.pages.unique`` | PageEvent   | PostgresPageSink           | sink.group_id         |
| touches | ``<prefix>.pages.touches``| PageTouch   | PostgresTouchSink          | sink.group_id-touches |
| stats   | ``<prefix>.stats``        | DomainStats | PostgresDomainStatsSink    | sink.group_id-stats   |
| runs    | ``<prefix>.runs``         | RunEvent    | PostgresRunSink            | sink.group_id-runs    |

Adding a family: a sink module (see :mod:`sinks.upserts` for the short form), a decoder in
:mod:`sinks.rows`, one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from crawlstream.settings import Settings
from crawlstream.topics import TopicCatalog, TopicSpec, catalog
from sinks.base import Sink
from sinks.pages import PostgresPageSink
from sinks.rows import decode_page_event, decode_run, decode_stats, decode_touch
from sinks.touches import PostgresTouchSink
from sinks.upserts import PostgresDomainStatsSink, PostgresRunSink

R = TypeVar("R")


@dataclass(frozen=True)
class Family(Generic[R]):
    name: str
    spec: Callable[[TopicCatalog], TopicSpec]
    decode: Callable[[bytes | None], R]
    make_sink: Callable[[Settings], Sink[R]]

    def topic(self, settings: Settings) -> str:
        return self.spec(catalog(settings)).name

    def group(self, settings: Settings) -> str:
        base = settings.sink.group_id
        return base if self.name == "pages" else f"{base}-{self.name}"


FAMILIES: dict[str, Family[Any]] = {
    "pages": Family("pages", lambda c: c.unique_pages, decode_page_event, PostgresPageSink.from_settings),
    "touches": Family("touches", lambda c: c.page_touches, decode_touch, PostgresTouchSink.from_settings),
    "stats": Family("stats", lambda c: c.stats, decode_stats, PostgresDomainStatsSink.from_settings),
    "runs": Family("runs", lambda c: c.runs, decode_run, PostgresRunSink.from_settings),
}
