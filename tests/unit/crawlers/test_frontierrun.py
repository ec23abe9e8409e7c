"""The completion rule of a frontier run (crawlers.frontierrun.Completion) and the report."""

from __future__ import annotations

from crawlers.frontierrun import Completion, aggregate, merged
from crawlstream.records import RunProgress

LINKS, LEDGER = "p.links", "p.frontier.ledger"


class Offsets:
    """Committed and end offsets per topic, as a test sets them."""

    def __init__(self) -> None:
        self.committed_of: dict[str, dict[int, int]] = {LINKS: {0: 0, 1: 0}, LEDGER: {0: 0}}
        self.end_of: dict[str, dict[int, int]] = {LINKS: {0: 0, 1: 0}, LEDGER: {0: 0}}

    def committed(self, topic: str) -> dict[int, int]:
        return dict(self.committed_of[topic])

    def end(self, topic: str) -> dict[int, int]:
        return dict(self.end_of[topic])


def progress(version: int, admitted: int, closed: int, **fields: object) -> RunProgress:
    return RunProgress(run_id="r", version=version, admitted=admitted, closed=closed, **fields)  # type: ignore[arg-type]


def test_done_only_once_the_links_and_what_they_produced_are_consumed() -> None:
    kafka = Offsets()
    check = Completion(LINKS, LEDGER, {0: 4}, kafka.committed, kafka.end)  # a seed at links[0]@4
    assert not check.check(progress(3, 2, 1))  # a request still open
    assert not check.check(progress(4, 2, 2, generating=1))  # a partition still generating
    quiet = progress(5, 2, 2, links_through={1: 9})
    assert not check.check(quiet)  # the seed and the outcomes' links are not consumed yet
    kafka.committed_of[LINKS] = {0: 5, 1: 9}
    assert not check.check(quiet)  # links[1]@9 itself is not (committed is the next offset)
    kafka.committed_of[LINKS] = {0: 5, 1: 10}
    kafka.end_of[LEDGER] = {0: 30}  # what those links sent the ledger ends before 30
    assert not check.check(quiet)
    kafka.end_of[LEDGER] = {0: 40}  # more arrives: the target stays what was read first
    kafka.committed_of[LEDGER] = {0: 30}
    assert check.check(quiet)


def test_a_new_version_starts_the_check_again() -> None:
    kafka = Offsets()
    check = Completion(LINKS, LEDGER, {}, kafka.committed, kafka.end)
    kafka.end_of[LEDGER] = {0: 3}
    assert not check.check(progress(1, 0, 0))
    kafka.end_of[LEDGER] = {0: 8}
    kafka.committed_of[LEDGER] = {0: 3}
    assert not check.check(progress(2, 1, 1))  # another version: its target is read anew (8)
    kafka.committed_of[LEDGER] = {0: 8}
    assert check.check(progress(2, 1, 1))
    assert not check.check(progress(3, 1, 1, state="stopped"))


def test_report_sums_the_crawlers() -> None:
    one = {"pages_fetched": 3, "metadata_records": 1, "records_delivered": 4, "canonical_urls": ["a", "b"],
           "refused": {"robots": 1}, "cpu_s": 1.25}  # fmt: skip
    two = {"pages_fetched": 2, "records_delivered": 2, "canonical_urls": ["b", "c"], "refused": {"robots": 2}}
    report = aggregate([one, two])
    assert (report["pages_fetched"], report["records_delivered"], report["distinct_canonical_urls"]) == (
        6,
        6,
        3,
    )
    assert report["refused"] == {"robots": 3}
    assert merged({0: 1, 1: 5}, {0: 3}) == {0: 3, 1: 5}
