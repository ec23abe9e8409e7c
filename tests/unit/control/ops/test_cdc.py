"""`crawlstream cdc status` judgements (no services)."""

from __future__ import annotations

from control.ops.cdc import assess


def test_a_running_connector_with_a_small_lag_is_fine() -> None:
    r = assess("c", "connector RUNNING, task 0 RUNNING", True, "s", (True, 100, 50), warn_bytes=1000)
    assert (r.problems, r.warnings, r.retained_bytes, r.lag_bytes) == ([], [], 100, 50)


def test_retained_wal_over_the_threshold_is_a_warning_naming_the_setting() -> None:
    r = assess("c", "RUNNING", True, "s", (True, 5000, 10), warn_bytes=1000)
    assert r.problems == []
    assert r.warnings == ["slot s retains 5000 bytes of WAL (> 1000, connect.slot_lag_warn_bytes)"]


def test_stopped_connector_and_missing_slot_are_problems() -> None:
    r = assess("c", "connector FAILED", False, "s", None, warn_bytes=1000)
    assert r.problems == [
        "connector c is not running (connector FAILED)",
        "replication slot s does not exist",
    ]
    inactive = assess("c", "connector RUNNING", True, "s", (False, 1, 1), warn_bytes=1000)
    assert inactive.warnings == ["slot s has no consumer: WAL accumulates until its connector runs"]


def test_a_stale_or_missing_heartbeat_is_a_warning() -> None:
    fresh = assess("c", "RUNNING", True, "s", (True, 1, 1), 1000, heartbeat_age_s=5.0, heartbeat_warn_s=60.0)
    assert (fresh.warnings, fresh.heartbeat_age_s) == ([], 5.0)
    stale = assess(
        "c", "RUNNING", True, "s", (True, 1, 1), 1000, heartbeat_age_s=300.0, heartbeat_warn_s=60.0
    )
    assert stale.warnings == [
        "slot s: last heartbeat 300 s ago (> 60 s); check the connector's heartbeat.action.query, "
        "or the slot retains WAL while its tables are idle"
    ]
    never = assess("c", "RUNNING", True, "s", (True, 1, 1), 1000, heartbeat_warn_s=60.0)
    assert "last heartbeat never" in never.warnings[0]
    # A stopped connector is already a problem: no second message about its heartbeat.
    stopped = assess("c", "FAILED", False, "s", (True, 1, 1), 1000, heartbeat_warn_s=60.0)
    assert stopped.warnings == []
