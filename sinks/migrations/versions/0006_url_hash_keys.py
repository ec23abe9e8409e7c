"""Rows keyed by URL are keyed by ``url_hash`` (sha256 of the URL), so any URL can be stored.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

A btree index entry holds at most about 2,700 bytes. With ``url`` as primary key, a page whose
canonical URL is longer (a redirect to a 3,000-character URL was enough) failed with SQLSTATE
54000 (program_limit_exceeded) and could never be stored. ``pages``, ``page_history`` and
``page_touches_pending`` get ``url_hash bytea`` = ``sha256(convert_to(url, 'UTF8'))`` (32 bytes),
which becomes their key (``pages_pkey``, ``(url_hash, version)`` for the history, whose foreign key
follows); ``url`` stays the full URL, unindexed. Writers compute the hash in their statements
(sinks/tables.py ``url_hash_sql``); ``pages_url_hash_check`` refuses any other value, so the
upsert's ``ON CONFLICT (url_hash)`` means "same URL". The archive trigger copies ``url_hash`` too,
and the view ``page_versions`` gains it as its last column (grants kept).

Existing rows get their hash through a stored generated column whose expression is then dropped:
``ADD COLUMN ... GENERATED`` rewrites the table, which logical decoding does not publish, whereas
an UPDATE of every row would send a change event per page to ``cdc.public.pages``. A generated
column needs an immutable expression and ``convert_to`` is only stable (it is immutable within one
database, whose encoding never changes), so a scratch immutable function wraps it for the
duration of the migration. The rewrite holds ACCESS EXCLUSIVE locks: sink workers wait meanwhile.

Debezium: the key of ``cdc.public.pages`` is the primary key, now ``{"url_hash": "<hex>"}``
(deploy/connect/pages-cdc.json sets ``binary.handling.mode=hex``: the hex sha256 of the URL); the
value still carries ``url``. Keeping ``url`` as the key (``message.key.columns``) would give deletes
a null key, as REPLICA IDENTITY DEFAULT logs only the primary key of a deleted row. The outbox
(EventRouter key = ``aggregateid`` = URL, no index on it) is unchanged.

Downgrade restores the URL keys; it stops with a clear error, changing nothing, if a stored URL is
too long to be a btree key again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from crawlstream.errors import CrawlstreamError
from sinks.migrate import migration_settings
from sinks.migration_ops import grant

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("pages", "page_history", "page_touches_pending")
HASH = "sha256(convert_to(url, 'UTF8'))"
SCRATCH_FUNCTION = "crawlstream_url_hash_0006"
COMMENT = "sha256 of url (UTF-8): the key, as a URL may exceed a btree entry"
VERSION_COLUMNS = (
    "url, version, status, title, body, text, body_hash, content_hash, simhash, fetched_at, run_id, stored_at"
)


def _archive_function(columns: str) -> str:
    old_values = ", ".join(f"OLD.{c.strip()}" for c in columns.split(","))
    return (
        "CREATE OR REPLACE FUNCTION pages_archive_version() RETURNS trigger LANGUAGE plpgsql AS $$\n"  # noqa: S608
        f"BEGIN\n  INSERT INTO page_history ({columns}) VALUES ({old_values});\n"
        "  RETURN NEW;\nEND\n$$"
    )


def upgrade() -> None:
    op.execute(
        f"CREATE FUNCTION {SCRATCH_FUNCTION}(text) RETURNS bytea LANGUAGE sql IMMUTABLE STRICT "
        "AS $$ SELECT sha256(convert_to($1, 'UTF8')) $$"
    )
    for table in TABLES:
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN url_hash bytea "
            f"GENERATED ALWAYS AS ({SCRATCH_FUNCTION}(url)) STORED"
        )
        op.execute(f"ALTER TABLE {table} ALTER COLUMN url_hash DROP EXPRESSION")
        op.alter_column(table, "url_hash", nullable=False, comment=COMMENT)
    op.execute(f"DROP FUNCTION {SCRATCH_FUNCTION}(text)")

    op.drop_constraint("page_history_url_fkey", "page_history", type_="foreignkey")
    op.drop_constraint("page_history_pkey", "page_history", type_="primary")
    op.drop_constraint("pages_pkey", "pages", type_="primary")
    op.drop_constraint("page_touches_pending_pkey", "page_touches_pending", type_="primary")
    op.create_primary_key("pages_pkey", "pages", ["url_hash"])
    op.create_check_constraint("pages_url_hash_check", "pages", f"url_hash = {HASH}")
    op.create_primary_key("page_history_pkey", "page_history", ["url_hash", "version"])
    op.create_foreign_key(
        "page_history_url_hash_fkey", "page_history", "pages", ["url_hash"], ["url_hash"], ondelete="CASCADE"
    )
    op.create_primary_key("page_touches_pending_pkey", "page_touches_pending", ["url_hash"])

    op.execute(_archive_function(f"{VERSION_COLUMNS}, url_hash"))
    op.execute(
        f"CREATE OR REPLACE VIEW page_versions AS SELECT {VERSION_COLUMNS}, url_hash FROM page_history "  # noqa: S608
        f"UNION ALL SELECT {VERSION_COLUMNS}, url_hash FROM pages"
    )


def downgrade() -> None:
    # A view cannot lose a column in place: drop it, recreate it as 0004 made it, grant again.
    op.execute("DROP VIEW page_versions")
    op.execute(
        f"CREATE VIEW page_versions AS SELECT {VERSION_COLUMNS} FROM page_history "  # noqa: S608
        f"UNION ALL SELECT {VERSION_COLUMNS} FROM pages"
    )
    grant("SELECT", "page_versions", migration_settings().postgres.app_role)
    op.execute(_archive_function(VERSION_COLUMNS))

    op.drop_constraint("page_history_url_hash_fkey", "page_history", type_="foreignkey")
    op.drop_constraint("page_history_pkey", "page_history", type_="primary")
    op.drop_constraint("pages_url_hash_check", "pages", type_="check")
    op.drop_constraint("pages_pkey", "pages", type_="primary")
    op.drop_constraint("page_touches_pending_pkey", "page_touches_pending", type_="primary")
    try:
        op.create_primary_key("pages_pkey", "pages", ["url"])
        op.create_primary_key("page_history_pkey", "page_history", ["url", "version"])
        op.create_primary_key("page_touches_pending_pkey", "page_touches_pending", ["url"])
    except sa.exc.OperationalError as exc:
        if context.is_offline_mode() or getattr(exc.orig, "pgcode", None) != "54000":
            raise
        found = getattr(exc.orig, "pgerror", None) or str(exc)
        raise CrawlstreamError(
            f"cannot downgrade below 0006: a stored URL is too long to be a btree key again ({found}); "
            "nothing was changed. Delete the pages (and parked touches) with such URLs first, e.g. "
            "those whose octet_length(url) exceeds 2000"
        ) from exc
    op.create_foreign_key(
        "page_history_url_fkey", "page_history", "pages", ["url"], ["url"], ondelete="CASCADE"
    )
    for table in TABLES:
        op.drop_column(table, "url_hash")
