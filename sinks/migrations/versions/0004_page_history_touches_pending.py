"""Each page body stored once: ``page_history`` (superseded versions) + a ``page_versions`` view;
parked touches in ``page_touches_pending``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Until 0003 the page sink wrote every new version twice: into ``pages`` (the current version)
and into ``page_versions``, body included. Now the current version lives only in ``pages``; the
table ``page_versions`` is renamed ``page_history`` and keeps only superseded versions, which the
trigger ``pages_archive_version`` copies there (the old row, ``OLD``) whenever an UPDATE moves
``pages.version`` on. A new page costs one row; a change costs the update plus the archived old
row, as before. ``page_versions`` becomes a view, ``page_history UNION ALL`` the current rows of
``pages``, with the same columns and one row per version, so readers keep their queries. The
archive runs in the updating statement, so it is exact whatever writes ``pages`` (a trigger sees
the row it replaces; a CTE would see its statement's snapshot).

``page_touches_pending``: a touch (unchanged recrawl, ``.pages.touches``) for a URL whose page row
does not exist yet is parked here (latest time per URL) by the touch sink and folded into
``last_seen`` by the page sink when the page row is inserted (see sinks/touches.py for the lock
that keeps the two from missing each other). Not published: Debezium never sees it. The app role
may SELECT, INSERT, UPDATE and DELETE it (LOCK ... SHARE ROW EXCLUSIVE needs UPDATE or DELETE).

Existing data: each page's current version is removed from ``page_history`` (it is in ``pages``);
downgrade copies it back.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sinks.migrate import migration_settings
from sinks.migration_ops import grant

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION_COLUMNS = (
    "url, version, status, title, body, text, body_hash, content_hash, simhash, fetched_at, run_id, stored_at"
)
OLD_VALUES = ", ".join(f"OLD.{c.strip()}" for c in VERSION_COLUMNS.split(","))


def upgrade() -> None:
    op.rename_table("page_versions", "page_history")
    op.execute("ALTER TABLE page_history RENAME CONSTRAINT page_versions_pkey TO page_history_pkey")
    op.execute("ALTER TABLE page_history RENAME CONSTRAINT page_versions_url_fkey TO page_history_url_fkey")
    op.execute("DELETE FROM page_history h USING pages p WHERE h.url = p.url AND h.version >= p.version")
    op.execute(
        f"CREATE VIEW page_versions AS SELECT {VERSION_COLUMNS} FROM page_history "  # noqa: S608
        f"UNION ALL SELECT {VERSION_COLUMNS} FROM pages"
    )
    op.execute(
        "CREATE FUNCTION pages_archive_version() RETURNS trigger LANGUAGE plpgsql AS $$\n"  # noqa: S608
        f"BEGIN\n  INSERT INTO page_history ({VERSION_COLUMNS}) VALUES ({OLD_VALUES});\n"
        "  RETURN NULL;\nEND\n$$"
    )
    op.execute(
        "CREATE TRIGGER pages_archive_version AFTER UPDATE ON pages FOR EACH ROW "
        "WHEN (OLD.version IS DISTINCT FROM NEW.version) EXECUTE FUNCTION pages_archive_version()"
    )
    op.create_table(
        "page_touches_pending",
        sa.Column("url", sa.Text(), primary_key=True, comment="canonical URL without a pages row yet"),
        sa.Column("seen", sa.DateTime(timezone=True), nullable=False, comment="latest touch time"),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    pg = migration_settings().postgres
    grant("SELECT", "page_versions", pg.app_role)
    grant("SELECT, INSERT, UPDATE, DELETE", "page_touches_pending", pg.app_role)


def downgrade() -> None:
    op.drop_table("page_touches_pending")
    op.execute("DROP TRIGGER pages_archive_version ON pages")
    op.execute("DROP FUNCTION pages_archive_version()")
    op.execute("DROP VIEW page_versions")
    op.execute(
        f"INSERT INTO page_history ({VERSION_COLUMNS}) SELECT {VERSION_COLUMNS} FROM pages"  # noqa: S608
    )
    op.execute("ALTER TABLE page_history RENAME CONSTRAINT page_history_url_fkey TO page_versions_url_fkey")
    op.execute("ALTER TABLE page_history RENAME CONSTRAINT page_history_pkey TO page_versions_pkey")
    op.rename_table("page_history", "page_versions")
