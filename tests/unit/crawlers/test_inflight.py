from __future__ import annotations

from crawlers.inflight import InFlightOffsets


def test_commit_position_is_the_lowest_unfinished_offset() -> None:
    offsets = InFlightOffsets()
    for n in (5, 6, 7):
        offsets.consumed("t", 0, n)
    offsets.consumed("t", 1, 0)
    assert offsets.done("t", 0, 6) == 5  # 5 is unfinished: a crash re-delivers 5, 6, 7
    assert offsets.done("t", 0, 5) == 7
    assert offsets.done("t", 0, 7) == 8
    assert offsets.position("t", 1) == 0
    assert offsets.in_flight() == 1
    offsets.revoke("t", 1)
    assert offsets.in_flight() == 0
    assert offsets.done("t", 9, 3) == 0  # unknown partition: nothing committable
