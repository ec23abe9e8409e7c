"""The alembic migrations rendered as SQL (offline mode: no database needed)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from alembic import command

from crawlstream.settings import PostgresSettings, Settings
from sinks.migrate import alembic_config


def render(settings: Settings, revision: str) -> str:
    config = alembic_config(settings)
    out = io.StringIO()
    config.output_buffer = out
    if revision == "downgrade":
        command.downgrade(config, "0002:base", sql=True)
    else:
        command.upgrade(config, revision, sql=True)
    return out.getvalue()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        postgres=PostgresSettings(
            app_role="Writer", cdc_user="dbz", publication="pub_pages", events_publication="pub_events"
        ),
    )


def test_upgrade_creates_tables_grants_and_publication_with_names_from_settings(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the config must not depend on the working directory

    sql = render(settings, "head")

    assert "CREATE TABLE pages" in sql
    assert "PRIMARY KEY (url)" in sql
    assert "CREATE TABLE sink_offsets" in sql
    assert "PRIMARY KEY (consumer_group, topic, partition)" in sql
    assert 'GRANT SELECT, INSERT, UPDATE ON pages, sink_offsets TO "Writer"' in sql
    assert 'GRANT SELECT ON pages TO "dbz"' in sql
    assert 'CREATE PUBLICATION "pub_pages" FOR TABLE pages' in sql
    assert "CREATE TABLE page_versions" in sql
    assert "CREATE TABLE outbox" in sql
    assert 'GRANT SELECT, INSERT, DELETE ON outbox TO "Writer"' in sql
    assert 'GRANT SELECT ON outbox TO "dbz"' in sql
    assert 'ALTER PUBLICATION "pub_pages" ADD TABLE outbox' in sql
    assert "INSERT INTO alembic_version" in sql
    # 0004: each body once; superseded versions archived by trigger; parked touches
    assert "ALTER TABLE page_versions RENAME TO page_history" in sql
    assert "CREATE VIEW page_versions AS SELECT" in sql
    assert "WHEN (OLD.version IS DISTINCT FROM NEW.version) EXECUTE FUNCTION pages_archive_version()" in sql
    assert "CREATE TRIGGER pages_archive_version BEFORE UPDATE ON pages" in sql  # 0005
    assert "CREATE TABLE page_touches_pending" in sql
    assert 'GRANT SELECT, INSERT, UPDATE, DELETE ON page_touches_pending TO "Writer"' in sql
    assert 'GRANT SELECT ON page_versions TO "Writer"' in sql
    # 0007: page events are logical decoding messages: no outbox table; the outbox connector's
    # publication holds only the heartbeat table
    upgrade_0007 = sql[sql.index("-- Running upgrade 0006 -> 0007") :]
    assert 'ALTER PUBLICATION "pub_pages" DROP TABLE outbox' in upgrade_0007
    assert "DROP TABLE outbox" in upgrade_0007
    assert 'CREATE PUBLICATION "pub_events" FOR TABLE cdc_heartbeat' in upgrade_0007


def test_downgrade_of_0007_brings_the_outbox_back(settings: Settings) -> None:
    config = alembic_config(settings)
    out = io.StringIO()
    config.output_buffer = out
    command.downgrade(config, "0007:0006", sql=True)
    sql = out.getvalue()

    assert 'DROP PUBLICATION IF EXISTS "pub_events"' in sql
    assert "CREATE TABLE outbox" in sql
    assert 'GRANT SELECT, INSERT, DELETE ON outbox TO "Writer"' in sql
    assert 'ALTER PUBLICATION "pub_pages" ADD TABLE outbox' in sql


def test_downgrade_drops_publication_and_tables(settings: Settings) -> None:
    sql = render(settings, "downgrade")

    assert 'DROP PUBLICATION IF EXISTS "pub_pages"' in sql
    assert 'ALTER PUBLICATION "pub_pages" DROP TABLE outbox' in sql
    assert "DROP TABLE outbox" in sql
    assert "DROP TABLE sink_offsets" in sql
    assert "DROP TABLE pages" in sql
