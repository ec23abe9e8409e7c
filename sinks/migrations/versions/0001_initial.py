"""Initial schema: pages, sink_offsets, grants to the app and CDC roles, the pages publication.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Role and publication names come from settings.postgres (app_role, cdc_user, publication).
Grants are skipped for roles that do not exist: production DBAs may manage roles elsewhere.
The publication is created here because Debezium runs with publication.autocreate.mode=disabled,
so its role needs neither table ownership nor CREATE on the database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from crawlstream.errors import CrawlstreamError
from sinks.migrate import migration_settings

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "pages",
        sa.Column("url", sa.Text(), primary_key=True, comment="canonical URL (the Kafka record key)"),
        sa.Column("final_url", sa.Text(), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("encoding", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("body_truncated", sa.Boolean(), nullable=False),
        sa.Column("body_bytes", sa.Integer(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fetch_latency_s", sa.Float(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "sink_offsets",
        sa.Column("consumer_group", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("next_offset", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("consumer_group", "topic", "partition"),
    )
    pg = migration_settings().postgres
    _grant("SELECT, INSERT, UPDATE", "pages, sink_offsets", pg.app_role)
    _grant("SELECT", "pages", pg.cdc_user)
    # Already true for public (PUBLIC has USAGE); needed when search_path names another schema.
    schema = _quote(op.get_context().dialect.default_schema_name or "public")
    _grant("USAGE", f"SCHEMA {schema}", pg.app_role)
    _grant("USAGE", f"SCHEMA {schema}", pg.cdc_user)
    _ensure_publication(pg.publication)


def downgrade() -> None:
    op.execute(f"DROP PUBLICATION IF EXISTS {_quote(migration_settings().postgres.publication)}")
    op.drop_table("sink_offsets")
    op.drop_table("pages")


def _quote(identifier: str) -> str:
    return op.get_context().dialect.identifier_preparer.quote_identifier(identifier)


def _grant(privileges: str, tables: str, role: str) -> None:
    # Offline (SQL script) mode cannot look roles up: emit the grant for the DBA to review.
    if not context.is_offline_mode():
        exists = op.get_bind().execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
        if exists.first() is None:
            log.warning("role %s does not exist; not granting %s on %s", role, privileges, tables)
            return
    op.execute(f"GRANT {privileges} ON {tables} TO {_quote(role)}")


def _ensure_publication(name: str) -> None:
    """Create the publication, or add pages to an existing one (e.g. made by a DBA beforehand)."""
    if context.is_offline_mode():
        op.execute(f"CREATE PUBLICATION {_quote(name)} FOR TABLE pages")
        return
    bind = op.get_bind()
    found = bind.execute(sa.text("SELECT puballtables FROM pg_publication WHERE pubname = :n"), {"n": name})
    row = found.first()
    if row is None:
        op.execute(f"CREATE PUBLICATION {_quote(name)} FOR TABLE pages")
        return
    has_pages = bind.execute(
        sa.text(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = :n "
            "AND schemaname = current_schema() AND tablename = 'pages'"
        ),
        {"n": name},
    ).first()
    if not row.puballtables and has_pages is None:
        owner = bind.execute(
            sa.text("SELECT pg_get_userbyid(pubowner) = current_user FROM pg_publication WHERE pubname = :n"),
            {"n": name},
        ).scalar()
        if not owner:
            raise CrawlstreamError(
                f"publication {name} exists without table pages and belongs to another role: "
                f"ask its owner to run ALTER PUBLICATION {_quote(name)} ADD TABLE pages"
            )
        op.execute(f"ALTER PUBLICATION {_quote(name)} ADD TABLE pages")
