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

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sinks.migrate import migration_settings
from sinks.migration_ops import grant as _grant
from sinks.migration_ops import publish
from sinks.migration_ops import quote as _quote

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


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
    publish(pg.publication, "pages")


def downgrade() -> None:
    op.execute(f"DROP PUBLICATION IF EXISTS {_quote(migration_settings().postgres.publication)}")
    op.drop_table("sink_offsets")
    op.drop_table("pages")
