"""The app and CDC roles cannot create objects, whatever the PostgreSQL version (real stack).

PostgreSQL 15+ no longer lets PUBLIC create in schema ``public``; older versions do. The test
first checks the stack as it is, then gives PUBLIC that old default back (as a superuser, over the
stack's socket), runs the stack's role bootstrap again and checks that it is revoked again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import pytest

from control.stack import postgres as pg_stack
from crawlstream.settings import Settings
from tests.integration.sinks_support import owner, settings, tag

__all__ = ["owner", "settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration


def cdc_dsn(settings: Settings) -> str:
    """The app role's DSN with the CDC role and its password (from the stack's stack.env)."""
    app = urlsplit(settings.postgres.dsn())
    user = settings.postgres.cdc_user
    password = settings.postgres.cdc_password.get_secret_value()
    netloc = f"{user}:{password}@{app.hostname}:{app.port}"
    return urlunsplit((app.scheme, netloc, app.path, app.query, app.fragment))


@pytest.fixture
def superuser(settings: Settings) -> Any:
    """Runs SQL in the crawlstream database as the stack's superuser (psql over its socket)."""
    layout = pg_stack.plan_layout(settings, pg_stack.find_bin_dir(settings))

    def run(sql: str) -> str:
        return pg_stack.psql(layout, sql, db=pg_stack.DB_NAME)

    return run


def bootstrap_again(settings: Settings) -> None:
    """What `crawlstream stack up` runs: the same roles, passwords and revokes."""
    layout = pg_stack.plan_layout(settings, pg_stack.find_bin_dir(settings))
    passwords = pg_stack.load_or_create_secrets(settings.stack.state_dir.resolve())
    pg_stack.psql(layout, pg_stack.bootstrap_sql(settings, passwords), redact=tuple(passwords.values()))


def assert_cannot_create(dsn: str, tag: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        for statement in (
            f"CREATE TABLE public.{tag.replace('-', '_')} (x int)",
            f"CREATE TABLE {tag.replace('-', '_')} (x int)",  # whatever the search_path names
            f"CREATE SCHEMA {tag.replace('-', '_')}",
            f"CREATE VIEW public.{tag.replace('-', '_')} AS SELECT 1",
        ):
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege) as caught:
                cur.execute(statement)
            assert caught.value.pgcode == "42501", statement
            conn.rollback()
    finally:
        conn.close()


def public_may_create(superuser: Any) -> bool:
    out = superuser(
        "SELECT count(*) FROM aclexplode((SELECT nspacl FROM pg_namespace WHERE nspname = 'public')) a "
        "WHERE a.grantee = 0 AND a.privilege_type = 'CREATE';"
    )
    return out.strip() != "0"


def test_app_and_cdc_roles_cannot_create_objects(settings: Settings, owner: Any, tag: str) -> None:
    assert_cannot_create(settings.postgres.dsn(), tag)
    assert_cannot_create(cdc_dsn(settings), tag)
    with owner.cursor() as cur:
        cur.execute(
            "SELECT r, has_schema_privilege(r, n.nspname, 'CREATE'), "
            "has_database_privilege(r, current_database(), 'CREATE') "
            "FROM unnest(%s::text[]) AS r, pg_namespace n WHERE n.nspname = 'public' ORDER BY r",
            ([settings.postgres.app_role, settings.postgres.cdc_user],),
        )
        assert cur.fetchall() == [
            (settings.postgres.app_role, False, False),
            (settings.postgres.cdc_user, False, False),
        ]


def test_the_bootstrap_revokes_create_where_postgres_grants_it_by_default(
    settings: Settings, owner: Any, tag: str, superuser: Any
) -> None:
    # PostgreSQL 14 and older: every role may create in public through PUBLIC.
    superuser("GRANT CREATE ON SCHEMA public TO PUBLIC;")
    try:
        assert public_may_create(superuser)
        with psycopg2.connect(settings.postgres.dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT has_schema_privilege('public', 'CREATE')")
            assert cur.fetchone() == (True,)  # the old default really lets the app role create
        bootstrap_again(settings)
        assert not public_may_create(superuser)
        assert_cannot_create(settings.postgres.dsn(), tag)
        assert_cannot_create(cdc_dsn(settings), tag)
    finally:
        superuser("REVOKE CREATE ON SCHEMA public FROM PUBLIC;")
