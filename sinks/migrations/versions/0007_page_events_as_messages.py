"""Page events are logical decoding messages: the ``outbox`` table goes; the outbox connector
gets its own publication.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

The page sink used to insert one ``outbox`` row per page event and delete it again in the same
transaction (Debezium's EventRouter read the insert from the WAL). It now emits each event with
``pg_logical_emit_message(true, <postgres.event_message_prefix>, <event JSON>)`` inside the same
transaction (sinks/pages.py): a transactional message is decoded only if the transaction commits,
in commit order, and costs one small WAL record instead of an insert, a delete and the dead
tuples vacuum must reclaim (bench/bench_sink.py). The table is always empty at rest, so dropping
it loses nothing.

Debezium's PostgreSQL connector receives messages whatever the publication (pgoutput's
``messages`` option). The outbox connector (deploy/connect/outbox-cdc.json) therefore needs no
table of ours: it reads ``<postgres.events_publication>``, created here with ``cdc_heartbeat``
only, so that its heartbeat.action.query still moves its slot while no page changes (migration
0003), and so that its walsender no longer ships every ``pages`` row to a connector that drops
them. ``DecodeLogicalDecodingMessageContent`` turns each message into a create event that the
EventRouter routes as it routed the outbox rows.

Order when upgrading a running system: migrate, PUT both connector configs, then restart the page
sinks. Downgrade recreates the empty ``outbox`` table (as 0002 left it) and drops the publication.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from sinks.migrate import migration_settings
from sinks.migration_ops import grant, publish, quote, unpublish

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pg = migration_settings().postgres
    unpublish(pg.publication, "outbox")
    op.drop_table("outbox")
    publish(pg.events_publication, "cdc_heartbeat")


def downgrade() -> None:
    pg = migration_settings().postgres
    op.execute(f"DROP PUBLICATION IF EXISTS {quote(pg.events_publication)}")
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "outbox",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        *(sa.Column(name, sa.Text(), nullable=False) for name in ("aggregatetype", "aggregateid", "type")),
        sa.Column("payload", JSONB(), nullable=False),
        sa.Column("created_at", ts, nullable=False, server_default=sa.func.now()),
    )
    grant("SELECT, INSERT, DELETE", "outbox", pg.app_role)
    grant("SELECT", "outbox", pg.cdc_user)
    publish(pg.publication, "outbox", exists_offline=True)
