"""PostgreSQL restarts during a run: the sink worker retries with backoff and resumes, exactly.

Uses a private PostgreSQL cluster (own temp state dir and free port, started with the stack's own
helpers and migrated like the stack's) so the shared stack's database is never restarted; Kafka
is the shared broker with this test's topic prefix. Half the stream is stored, Postgres stops,
the other half is produced while the worker retries, Postgres starts again, and every record ends
up stored exactly once.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from pydantic import SecretStr
from rich.console import Console

from control.stack import postgres, supervisor
from control.stack.processes import ProcessManager, wait_until
from crawlstream.settings import Settings
from crawlstream.topics import catalog, ensure_topics
from sinks.migrate import upgrade
from sinks.pages import PostgresPageSink
from tests.integration.sinks_support import (
    assert_stream_stored_exactly,
    end_offsets,
    page_stream,
    produce,
    settings,
    start_worker,
    tag,
    wait_for,
)

__all__ = ["settings", "tag"]  # fixtures

pytestmark = pytest.mark.integration

N_URLS, N_CHANGED, N_REPLAYED = 600, 150, 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    def __init__(self, settings: Settings, state: Path) -> None:
        stack = settings.stack.model_copy(update={"state_dir": state, "postgres_port": free_port()})
        base = settings.model_copy(update={"stack": stack})
        self.layout = postgres.plan_layout(base, postgres.find_bin_dir(base))
        self.log = state / "logs" / "postgres.log"
        pm = ProcessManager(state)
        passwords = supervisor._start_postgres(base, self.layout, pm, Console(quiet=True), 120)
        pg = settings.postgres.model_copy(
            update={
                "url": SecretStr(postgres.url(base, settings.postgres.app_role, passwords["app"])),
                "owner_url": SecretStr(postgres.url(base, postgres.OWNER_ROLE, passwords["owner"])),
            }
        )
        self.settings = base.model_copy(update={"postgres": pg})
        upgrade(self.settings)

    def stop(self) -> None:
        postgres.run_logged(postgres.stop_command(self.layout), self.log, "pg_ctl stop", timeout_s=60)
        # pg_ctl -W returns at once: a start before the postmaster is gone finds its lock file.
        wait_for(lambda: postgres.postmaster_pid(self.layout) is None, 60, "postgres to stop", every_s=0.1)

    def start(self) -> None:
        postgres.run_logged(postgres.start_command(self.layout), self.log, "pg_ctl start", timeout_s=60)
        wait_until(lambda: postgres.health(self.layout), service="postgres", log_path=self.log, timeout_s=60)


@pytest.fixture
def private_pg(settings: Settings, tmp_path: Path) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(settings, tmp_path / "state")
    yield pg
    if postgres.postmaster_pid(pg.layout) is not None:
        pg.stop()


def test_sink_waits_for_a_restarted_postgres_and_resumes_exactly(
    private_pg: PrivatePostgres, tag: str, tmp_path: Path
) -> None:
    settings = private_pg.settings
    unique = catalog(settings).unique_pages
    ensure_topics(settings, [unique, catalog(settings).dead_letter])
    stream = page_stream(tag, N_URLS, N_CHANGED, N_REPLAYED)
    half = len(stream) // 2
    dsn_env = {
        "CRAWLSTREAM_POSTGRES__URL": settings.postgres.dsn(),
        "CRAWLSTREAM_POSTGRES__OWNER_URL": settings.postgres.dsn(owner=True),
        "CRAWLSTREAM_SINK__RETRY_BACKOFF_MAX_S": "1",
    }
    log_path = tmp_path / "worker.log"
    sink = PostgresPageSink.from_settings(settings)
    worker = start_worker(settings, log_path, **dsn_env)
    try:
        produce(settings, unique.name, stream[:half])
        first_end = end_offsets(settings, unique.name, unique.partitions)
        wait_for(lambda: sink.stored_offsets(settings.sink.group_id, unique.name) == first_end, 60, "half")
        sink.close()

        private_pg.stop()
        produce(settings, unique.name, stream[half:])
        wait_for(lambda: "cannot write a batch" in log_path.read_text(), 60, "the worker to retry")
        private_pg.start()

        end = end_offsets(settings, unique.name, unique.partitions)
        wait_for(
            lambda: sink.stored_offsets(settings.sink.group_id, unique.name) == end, 90, "all", every_s=0.2
        )
        owner = psycopg2.connect(settings.postgres.dsn(owner=True))
        owner.autocommit = True
        try:
            assert_stream_stored_exactly(owner, tag, N_URLS, N_CHANGED)
        finally:
            owner.close()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log_path.read_text()[-3000:]
    finally:
        sink.close()
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
