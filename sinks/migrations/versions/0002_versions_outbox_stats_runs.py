"""Versioned pages, outbox, domain stats, crawl runs; grants; outbox in the publication.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

``pages`` gains the enrichment columns, the change test (``body_hash``), ``last_seen``,
``last_changed`` and ``version``; existing rows get their body hash and a version-1 row in
``page_versions``. The app role may create temporary tables (the page sink's COPY staging table)
and DELETE from ``outbox`` only. The CDC role reads ``outbox``, which joins the publication so the
outbox connector (deploy/connect/outbox-cdc.json) can stream it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from sinks.migrate import migration_settings
from sinks.migration_ops import database_name, grant, publish, quote, unpublish

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
NOW = sa.func.now()
NEW_PAGE_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("kind", sa.Text(), nullable=False, server_default="html"),
    sa.Column(
        "body_hash", sa.Text(), nullable=False, server_default="", comment="sha256 of body: change test"
    ),
    sa.Column("content_hash", sa.Text(), nullable=False, server_default="", comment="hash of the main text"),
    sa.Column("simhash", sa.BigInteger(), nullable=True, comment="unsigned 64-bit stored as signed"),
    sa.Column("text", sa.Text(), nullable=False, server_default=""),
    sa.Column("language", sa.Text(), nullable=True),
    sa.Column("word_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("canonical_link", sa.Text(), nullable=True),
    sa.Column("duplicate_of", sa.Text(), nullable=True),
    sa.Column("near_duplicate_of", sa.Text(), nullable=True),
    sa.Column("near_distance", sa.SmallInteger(), nullable=True),
    sa.Column("last_seen", TS, nullable=False, server_default=NOW),
    sa.Column("last_changed", TS, nullable=False, server_default=NOW),
    sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
]


def _counts(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(name, sa.Integer(), nullable=False) for name in names]


def upgrade() -> None:
    for column in NEW_PAGE_COLUMNS:
        op.add_column("pages", column)
    op.execute(
        "UPDATE pages SET body_hash = encode(sha256(convert_to(body, 'UTF8')), 'hex'), "
        "last_seen = fetched_at, last_changed = fetched_at"
    )
    op.create_table(
        "page_versions",
        sa.Column("url", sa.Text(), sa.ForeignKey("pages.url", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        *(sa.Column(name, sa.Text(), nullable=False) for name in ("title", "body", "text")),
        *(sa.Column(name, sa.Text(), nullable=False) for name in ("body_hash", "content_hash")),
        sa.Column("simhash", sa.BigInteger(), nullable=True),
        sa.Column("fetched_at", TS, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("stored_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("url", "version"),
    )
    op.execute(
        "INSERT INTO page_versions (url, version, status, title, body, text, body_hash, content_hash, "
        "simhash, fetched_at, run_id) SELECT url, 1, status, title, body, text, body_hash, content_hash, "
        "simhash, fetched_at, run_id FROM pages"
    )
    op.create_table(
        "outbox",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        *(sa.Column(name, sa.Text(), nullable=False) for name in ("aggregatetype", "aggregateid", "type")),
        sa.Column("payload", JSONB(), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    op.create_table(
        "domain_stats",
        *(sa.Column(name, sa.Text(), nullable=False) for name in ("domain", "window")),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        *_counts("pages"),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        *_counts("status_2xx", "status_3xx", "status_4xx", "status_5xx", "duplicates", "near_duplicates"),
        *_counts("new", "changed", "unchanged"),
        *(sa.Column(name, sa.Float(), nullable=False) for name in ("latency_mean_s", "latency_p95_s")),
        sa.Column("stored_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("domain", "window", "window_start"),
    )
    op.create_table(
        "crawl_runs",
        sa.Column("run_id", sa.Text(), primary_key=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        *_counts("pages", "errors", "delivery_failures"),
        *(sa.Column(name, sa.Text(), nullable=False) for name in ("outcome", "detail")),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )
    pg = migration_settings().postgres
    grant("SELECT, INSERT, UPDATE", "domain_stats, crawl_runs", pg.app_role)
    grant("SELECT, INSERT", "page_versions", pg.app_role)
    grant("SELECT, INSERT, DELETE", "outbox", pg.app_role)
    grant("TEMPORARY", f"DATABASE {quote(database_name())}", pg.app_role)
    grant("SELECT", "outbox", pg.cdc_user)
    publish(pg.publication, "outbox", exists_offline=True)


def downgrade() -> None:
    pg = migration_settings().postgres
    unpublish(pg.publication, "outbox")
    grant("TEMPORARY", f"DATABASE {quote(database_name())}", pg.app_role, revoke=True)
    for table in ("crawl_runs", "domain_stats", "outbox", "page_versions"):
        op.drop_table(table)
    for column in reversed(NEW_PAGE_COLUMNS):
        op.drop_column("pages", column.name)
