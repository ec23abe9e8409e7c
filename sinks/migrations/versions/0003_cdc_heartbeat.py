"""The CDC heartbeat table: Debezium's heartbeat.action.query writes it, so idle slots advance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

A replication slot only moves its ``confirmed_flush_lsn`` when its connector commits an offset,
and a Debezium connector only has a new offset after it received a change from the publication.
While ``pages`` and ``outbox`` are idle, other tables (``sink_offsets``, ``domain_stats``, ...)
still write WAL, which both slots then retain without bound. Each connector
(deploy/connect/*.json) therefore runs ``heartbeat.action.query`` every ``heartbeat.interval.ms``:
an upsert of its own row (keyed by slot name) in ``cdc_heartbeat``. The table is in the
publication, so the change reaches both slots; it is not in either ``table.include.list``, so
Debezium filters it (no change topic) but advances its offset, and the next heartbeat record
(``__debezium-heartbeat.<topic.prefix>``) commits that LSN to the slot.

Least privilege: the CDC role may SELECT, INSERT and UPDATE this table and no other table
(INSERT ... ON CONFLICT DO UPDATE needs all three); no DELETE, no TRUNCATE. The app role reads it
(``crawlstream cdc status`` shows the last beat).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sinks.migrate import migration_settings
from sinks.migration_ops import grant, publish, unpublish

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cdc_heartbeat",
        sa.Column("slot_name", sa.Text(), primary_key=True, comment="the connector's replication slot"),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    pg = migration_settings().postgres
    grant("SELECT, INSERT, UPDATE", "cdc_heartbeat", pg.cdc_user)
    grant("SELECT", "cdc_heartbeat", pg.app_role)
    publish(pg.publication, "cdc_heartbeat", exists_offline=True)


def downgrade() -> None:
    unpublish(migration_settings().postgres.publication, "cdc_heartbeat")
    op.drop_table("cdc_heartbeat")
