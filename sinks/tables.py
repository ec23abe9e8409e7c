"""Table definitions of the sink stage (SQLAlchemy 2.0 Core) and how a PageRecord becomes a row.

``pages`` is keyed by the canonical URL (the Kafka record key) and is what Debezium publishes;
``sink_offsets`` holds, per consumer group and partition, the next Kafka offset to read. The
migrations in ``sinks/migrations`` are frozen copies of this schema; an integration test
checks that they still agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
)

from crawlstream.records import PageRecord

metadata = MetaData()

pages = Table(
    "pages",
    metadata,
    Column("url", Text, primary_key=True, comment="canonical URL (the Kafka record key)"),
    Column("final_url", Text, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("encoding", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("body_truncated", Boolean, nullable=False),
    Column("body_bytes", Integer, nullable=False),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    Column("fetch_latency_s", Float, nullable=False),
    Column("depth", Integer, nullable=False),
    Column("referrer", Text, nullable=True),
    Column("job_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

sink_offsets = Table(
    "sink_offsets",
    metadata,
    Column("consumer_group", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("consumer_group", "topic", "partition"),
)

# Columns the sink writes; first_seen/stored_at come from the server's clock.
PAGE_COLUMNS: tuple[str, ...] = tuple(c.name for c in pages.columns if c.server_default is None)


def page_row(page: PageRecord) -> tuple[Any, ...]:
    """The values of one ``pages`` row, in :data:`PAGE_COLUMNS` order."""
    values: dict[str, Any] = {
        "url": page.canonical_url,
        "final_url": page.final_url,
        "status": page.status,
        "content_type": page.content_type,
        "encoding": page.encoding,
        "title": page.title,
        "body": page.body,
        "body_truncated": page.body_truncated,
        "body_bytes": page.body_bytes,
        "fetched_at": page.fetched_at,
        "fetch_latency_s": page.fetch_latency_s,
        "depth": page.depth,
        "referrer": page.referrer,
        "job_id": page.job_id,
        "run_id": page.run_id,
    }
    return tuple(values[name] for name in PAGE_COLUMNS)
