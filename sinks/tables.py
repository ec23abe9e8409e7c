"""The sink stage's schema as SQLAlchemy 2.0 declarative models.

``pages`` holds the current version of each canonical URL (the Kafka record key) and is what
Debezium publishes raw (``cdc.public.pages``). Rows keyed by URL are keyed by ``url_hash``, the
sha256 of the URL's UTF-8 bytes (:data:`URL_HASH_SQL`, :func:`sinks.rows.url_hash`), not by the
URL itself: a btree entry holds at most about 2,700 bytes and URLs can be much longer (migration
0006); ``url`` keeps the full URL. ``page_history`` the superseded versions (the view
``page_versions`` adds the current ones: one row per content change, each body stored once);
``page_touches_pending`` touches that arrived before their page row;
``domain_stats`` closed aggregation windows; ``crawl_runs`` job runs; ``sink_offsets`` the next
Kafka offset per consumer group and partition; ``cdc_heartbeat`` one row per Debezium slot,
written by the connectors' heartbeat.action.query so idle slots still confirm WAL (migration 0003).
The migrations in ``sinks/migrations`` are frozen copies of these models; an integration test
checks that they still agree. How records become rows is in :mod:`sinks.rows`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Timestamp = DateTime(timezone=True)
URL_HASH_COMMENT = "sha256 of url (UTF-8): the key, as a URL may exceed a btree entry"


def url_hash_sql(url: str) -> str:
    """SQL for the ``url_hash`` of the text expression ``url`` (one definition for every statement;
    ``convert_to`` gives the UTF-8 bytes whatever the client encoding)."""
    return f"sha256(convert_to({url}, 'UTF8'))"


URL_HASH_SQL = url_hash_sql("url")


class Base(DeclarativeBase):
    metadata = MetaData()


def _now() -> Mapped[datetime]:
    return mapped_column(Timestamp, server_default=func.now())


class Page(Base):
    __tablename__ = "pages"
    # Every writer computes url_hash from url with URL_HASH_SQL; the check makes any other value fail.
    __table_args__ = (CheckConstraint(f"url_hash = {URL_HASH_SQL}", name="pages_url_hash_check"),)

    url_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True, comment=URL_HASH_COMMENT)
    url: Mapped[str] = mapped_column(Text, comment="canonical URL (the Kafka record key)")
    final_url: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(SmallInteger)
    content_type: Mapped[str] = mapped_column(Text)
    encoding: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    body_truncated: Mapped[bool]
    body_bytes: Mapped[int] = mapped_column(Integer)
    fetched_at: Mapped[datetime] = mapped_column(Timestamp)
    fetch_latency_s: Mapped[float]
    depth: Mapped[int] = mapped_column(Integer)
    referrer: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = _now()
    stored_at: Mapped[datetime] = _now()
    # Added by migration 0002 (server defaults fill rows written before it).
    kind: Mapped[str] = mapped_column(Text, server_default="html")
    body_hash: Mapped[str] = mapped_column(Text, server_default="", comment="sha256 of body: change test")
    content_hash: Mapped[str] = mapped_column(Text, server_default="", comment="hash of the main text")
    simhash: Mapped[int | None] = mapped_column(BigInteger, comment="unsigned 64-bit stored as signed")
    text: Mapped[str] = mapped_column(Text, server_default="")
    language: Mapped[str | None] = mapped_column(Text)
    word_count: Mapped[int] = mapped_column(Integer, server_default="0")
    canonical_link: Mapped[str | None] = mapped_column(Text)
    duplicate_of: Mapped[str | None] = mapped_column(Text)
    near_duplicate_of: Mapped[str | None] = mapped_column(Text)
    near_distance: Mapped[int | None] = mapped_column(SmallInteger)
    last_seen: Mapped[datetime] = _now()
    last_changed: Mapped[datetime] = _now()
    version: Mapped[int] = mapped_column(Integer, server_default="1")


class PageHistory(Base):
    """Superseded versions of a page, copied from ``pages`` by the trigger ``pages_archive_version``
    when an update moves ``pages.version`` on (migration 0004). The view ``page_versions`` is this
    table UNION ALL the current rows of ``pages``: one row per version, each body stored once."""

    __tablename__ = "page_history"

    url_hash: Mapped[bytes] = mapped_column(
        LargeBinary,
        ForeignKey("pages.url_hash", ondelete="CASCADE"),
        primary_key=True,
        comment=URL_HASH_COMMENT,
    )
    url: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(Text)
    simhash: Mapped[int | None] = mapped_column(BigInteger)
    fetched_at: Mapped[datetime] = mapped_column(Timestamp)
    run_id: Mapped[str] = mapped_column(Text)
    stored_at: Mapped[datetime] = _now()


class PageTouchPending(Base):
    """Touches of URLs that had no ``pages`` row yet: the latest time per URL, parked by the touch
    sink and folded into ``pages.last_seen`` (and deleted) by the page sink (sinks/touches.py)."""

    __tablename__ = "page_touches_pending"

    url_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True, comment=URL_HASH_COMMENT)
    url: Mapped[str] = mapped_column(Text, comment="canonical URL without a pages row yet")
    seen: Mapped[datetime] = mapped_column(Timestamp, comment="latest touch time")
    parked_at: Mapped[datetime] = _now()


class DomainStatsRow(Base):
    __tablename__ = "domain_stats"

    domain: Mapped[str] = mapped_column(Text, primary_key=True)
    window: Mapped[str] = mapped_column(Text, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(Timestamp, primary_key=True)
    window_end: Mapped[datetime] = mapped_column(Timestamp)
    pages: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    status_2xx: Mapped[int] = mapped_column(Integer)
    status_3xx: Mapped[int] = mapped_column(Integer)
    status_4xx: Mapped[int] = mapped_column(Integer)
    status_5xx: Mapped[int] = mapped_column(Integer)
    duplicates: Mapped[int] = mapped_column(Integer)
    near_duplicates: Mapped[int] = mapped_column(Integer)
    new: Mapped[int] = mapped_column(Integer)
    changed: Mapped[int] = mapped_column(Integer)
    unchanged: Mapped[int] = mapped_column(Integer)
    latency_mean_s: Mapped[float]
    latency_p95_s: Mapped[float]
    stored_at: Mapped[datetime] = _now()


class CrawlRun(Base):
    __tablename__ = "crawl_runs"

    run_id: Mapped[str] = mapped_column(Text, primary_key=True)
    job_id: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    pages: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    delivery_failures: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = _now()


class SinkOffset(Base):
    __tablename__ = "sink_offsets"

    consumer_group: Mapped[str] = mapped_column(Text, primary_key=True)
    topic: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = _now()


class CdcHeartbeat(Base):
    """Upserted by each connector's heartbeat.action.query (deploy/connect/*.json); published,
    but in no table.include.list: Debezium filters its changes and still advances the slot."""

    __tablename__ = "cdc_heartbeat"

    slot_name: Mapped[str] = mapped_column(Text, primary_key=True, comment="the connector's replication slot")
    beat_at: Mapped[datetime] = _now()


metadata = Base.metadata
pages = Page.__table__
