"""Operations the migrations share: quoting, grants to roles that may not exist, the publication.

Used only from ``sinks/migrations/versions`` while alembic runs (as the owner role). Role and
publication names come from settings.postgres (app_role, cdc_user, publication).
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import context, op

from crawlstream.errors import CrawlstreamError

log = logging.getLogger("alembic.runtime.migration")


def quote(identifier: str) -> str:
    return op.get_context().dialect.identifier_preparer.quote_identifier(identifier)


def grant(privileges: str, tables: str, role: str, *, revoke: bool = False) -> None:
    """GRANT (or REVOKE) unless the role does not exist; offline (SQL script) mode cannot look
    roles up, so there the statement is emitted for the DBA to review."""
    if not context.is_offline_mode():
        exists = op.get_bind().execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
        if exists.first() is None:
            log.warning("role %s does not exist; not granting %s on %s", role, privileges, tables)
            return
    if revoke:
        op.execute(f"REVOKE {privileges} ON {tables} FROM {quote(role)}")
    else:
        op.execute(f"GRANT {privileges} ON {tables} TO {quote(role)}")


def database_name() -> str:
    if context.is_offline_mode():
        return "crawlstream"
    return str(op.get_bind().execute(sa.text("SELECT current_database()")).scalar())


def publish(name: str, table: str, *, exists_offline: bool = False) -> None:
    """Create the publication with ``table``, or add ``table`` to an existing one. Offline, emit
    ALTER when an earlier revision created the publication (``exists_offline``), else CREATE."""
    if context.is_offline_mode():
        verb = (
            f"ALTER PUBLICATION {quote(name)} ADD"
            if exists_offline
            else f"CREATE PUBLICATION {quote(name)} FOR"
        )
        op.execute(f"{verb} TABLE {table}")
        return
    bind = op.get_bind()
    found = bind.execute(sa.text("SELECT puballtables FROM pg_publication WHERE pubname = :n"), {"n": name})
    row = found.first()
    if row is None:
        op.execute(f"CREATE PUBLICATION {quote(name)} FOR TABLE {table}")
        return
    has_table = bind.execute(
        sa.text(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = :n "
            "AND schemaname = current_schema() AND tablename = :t"
        ),
        {"n": name, "t": table},
    ).first()
    if row.puballtables or has_table is not None:
        return
    owner = bind.execute(
        sa.text("SELECT pg_get_userbyid(pubowner) = current_user FROM pg_publication WHERE pubname = :n"),
        {"n": name},
    ).scalar()
    if not owner:
        raise CrawlstreamError(
            f"publication {name} exists without table {table} and belongs to another role: "
            f"ask its owner to run ALTER PUBLICATION {quote(name)} ADD TABLE {table}"
        )
    op.execute(f"ALTER PUBLICATION {quote(name)} ADD TABLE {table}")


def unpublish(name: str, table: str) -> None:
    if context.is_offline_mode():
        op.execute(f"ALTER PUBLICATION {quote(name)} DROP TABLE {table}")
        return
    found = op.get_bind().execute(
        sa.text("SELECT 1 FROM pg_publication_tables WHERE pubname = :n AND tablename = :t"),
        {"n": name, "t": table},
    )
    if found.first() is not None:
        op.execute(f"ALTER PUBLICATION {quote(name)} DROP TABLE {table}")
