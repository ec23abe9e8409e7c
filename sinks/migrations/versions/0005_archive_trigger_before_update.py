"""The page archive trigger runs BEFORE UPDATE (it ran AFTER UPDATE in 0004).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

``pages_archive_version`` copies the row an update replaces (``OLD``) to ``page_history`` when
the update moves ``version`` on. As an AFTER trigger each such update also queued an after-trigger
event until the end of the statement; BEFORE runs it inline. Measured with all-changed batches of
bench/bench_sink.py's rows: AFTER about 0.86x of the previous sink (each body written twice),
BEFORE on par with it (medians of 5 rounds, noisy).
Same rows either way: if the update then fails, the statement and its archive row roll back
together. The function returns ``NEW`` (a BEFORE trigger returning NULL would skip the update).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION_COLUMNS = (
    "url, version, status, title, body, text, body_hash, content_hash, simhash, fetched_at, run_id, stored_at"
)
OLD_VALUES = ", ".join(f"OLD.{c.strip()}" for c in VERSION_COLUMNS.split(","))


def _function(returns: str) -> str:
    return (
        "CREATE OR REPLACE FUNCTION pages_archive_version() RETURNS trigger LANGUAGE plpgsql AS $$\n"  # noqa: S608
        f"BEGIN\n  INSERT INTO page_history ({VERSION_COLUMNS}) VALUES ({OLD_VALUES});\n"
        f"  RETURN {returns};\nEND\n$$"
    )


def _trigger(when: str) -> str:
    return (
        f"CREATE TRIGGER pages_archive_version {when} UPDATE ON pages FOR EACH ROW "
        "WHEN (OLD.version IS DISTINCT FROM NEW.version) EXECUTE FUNCTION pages_archive_version()"
    )


def upgrade() -> None:
    op.execute("DROP TRIGGER pages_archive_version ON pages")
    op.execute(_function("NEW"))
    op.execute(_trigger("BEFORE"))


def downgrade() -> None:
    op.execute("DROP TRIGGER pages_archive_version ON pages")
    op.execute(_function("NULL"))
    op.execute(_trigger("AFTER"))
