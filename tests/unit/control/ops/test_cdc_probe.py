"""control/ops/cdc.py as the CDC stage's probe: connector failures and Debezium create events."""

from __future__ import annotations

import json
from typing import Any

from control.ops.cdc import CdcProbe, debezium_creates
from crawlstream.settings import Settings


def _event(op: str, url: str | None, lsn: int | None = None) -> bytes:
    after = None if url is None else {"url": url, "status": 200}
    source: dict[str, Any] = {"table": "pages"} if lsn is None else {"table": "pages", "lsn": lsn}
    return json.dumps({"before": None, "after": after, "op": op, "source": source}).encode()


def test_creates_and_snapshot_reads_count_other_operations_and_tombstones_do_not() -> None:
    values = [
        _event("c", "http://x/a"),
        _event("r", "http://x/b"),
        _event("u", "http://x/a"),
        _event("d", None),
        None,  # the tombstone after a delete
    ]
    assert [url for url, _lsn in debezium_creates(values)] == ["http://x/a", "http://x/b"]


def test_creates_carry_their_lsn_so_a_replay_is_told_from_a_second_insert() -> None:
    garbage = [b"not json", b"[1]", b'{"op": "c", "after": {"no": "url"}}', b'{"op": "c", "after": 3}']
    values = [
        _event("c", "http://x/a", 10),
        None,
        *garbage,
        _event("c", "http://x/a", 10),
        _event("c", "http://x/b", 11),
    ]
    assert debezium_creates(values) == [("http://x/a", 10), ("http://x/a", 10), ("http://x/b", 11)]


def test_connector_failure_names_the_failed_connector_and_the_first_line_of_its_trace() -> None:
    settings = Settings()
    statuses: dict[str, dict[str, Any] | None] = {
        settings.connect.connector_name: {
            "connector": {"state": "RUNNING"},
            "tasks": [{"id": 0, "state": "RUNNING"}],
        },
        settings.connect.outbox_connector_name: None,  # not registered yet: no failure
    }
    probe = CdcProbe(settings, status=lambda _s, name: statuses[name])
    assert probe.connector_failure() is None
    statuses[settings.connect.outbox_connector_name] = {
        "connector": {"state": "RUNNING"},
        "tasks": [
            {
                "id": 0,
                "state": "FAILED",
                "trace": "org.apache.kafka.connect.errors.ConnectException: slot\n\tat x",
            }
        ],
    }
    assert probe.connector_failure() == (
        f"{settings.connect.outbox_connector_name} connector RUNNING, task 0 FAILED: "
        "org.apache.kafka.connect.errors.ConnectException: slot"
    )
