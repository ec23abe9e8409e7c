"""streams/probe.py: the stream group's committed offsets and lag, read through fake offset readers."""

from __future__ import annotations

import json

from crawlstream.offsets import Offsets
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams.probe import StreamsProbe, unique_change

SETTINGS = Settings(kafka=KafkaSettings(topic_prefix="t"), streams=StreamsSettings(app_id="app"))
END = {"t.pages.raw": {0: 10, 1: 4}, "t.streams.pages-by-band": {0: 7}, "t.streams.dedup-verdicts": {0: 3}}


def probe_with(committed: dict[str, Offsets], asked: list[tuple[str, str]]) -> StreamsProbe:
    def read_committed(_settings: Settings, group: str, topic: str) -> Offsets:
        asked.append((group, topic))
        return committed.get(topic, {})

    return StreamsProbe(SETTINGS, end_offsets=lambda _s, topic: END[topic], committed_offsets=read_committed)


def test_the_lag_adds_up_the_raw_topic_and_both_dedup_hops_of_the_apps_group() -> None:
    asked: list[tuple[str, str]] = []
    committed = {
        "t.pages.raw": {0: 10, 1: 1},
        "t.streams.pages-by-band": {0: 5},
        "t.streams.dedup-verdicts": {},
    }
    probe = probe_with(committed, asked)
    # raw 3 behind on partition 1, by-band 2 behind, verdicts never committed: 3 behind.
    assert probe.lag() == 3 + 2 + 3
    assert {group for group, _topic in asked} == {"app"}
    assert [topic for _group, topic in asked] == list(END)


def test_a_group_that_caught_up_everywhere_has_no_lag_and_commits_past_the_end_count_none() -> None:
    committed = {
        "t.pages.raw": {0: 10, 1: 4},
        "t.streams.pages-by-band": {0: 9},
        "t.streams.dedup-verdicts": {0: 3},
    }
    probe = probe_with(committed, [])
    assert probe.lag() == 0
    assert probe.committed() == {0: 10, 1: 4}  # the raw topic by default


def test_unique_change_reads_the_kind_of_a_unique_record_and_never_raises() -> None:
    assert unique_change(json.dumps({"change": "new"}).encode()) == "new"
    assert unique_change(json.dumps({"change": "changed"}).encode()) == "changed"
    assert unique_change(b"{}") == "new"  # a bare page record is stored as a new page
    assert unique_change(None) == "new"
    assert unique_change(b"\xff not json") == "?"
    assert unique_change(b"[1, 2]") == "?"  # JSON, but no object
    assert unique_change(json.dumps({"change": "other"}).encode()) == "other"
