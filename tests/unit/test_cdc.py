"""`crawlstream cdc status` judgements (no services)."""

from __future__ import annotations

from crawlstream.cdc import assess


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
