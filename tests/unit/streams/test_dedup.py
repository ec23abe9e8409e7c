"""The dedup hops (exact content, SimHash bands) and the verdicts: plain functions and agents."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from crawlstream.records import DeadLetter, DedupProbe, PageEvent
from crawlstream.settings import KafkaSettings, Settings, StreamsSettings
from streams.dedup import BUCKET_LIMIT, band_prefix, closest, content_key, hop_key, hop_plan
from streams.fingerprints import band_keys
from tests.unit.streams.harness import Harness, page, put, run, run_agents

A, B, C = (f"https://example.org/{name}" for name in "abc")
SIMHASH = 0x0123456789ABCDEF
PARTITIONS = 3


def probe(url: str, simhash: int = SIMHASH, content: str = "c1", offset: int = 0) -> DedupProbe:
    return DedupProbe(url=url, partition=2, offset=offset, content_hash=content, simhash=simhash)


def test_hop_plan_visits_each_partition_once_band_0_first() -> None:
    for simhash in (SIMHASH, 0, 2**64 - 1, 0xFEDCBA9876543210):
        keys = band_keys(simhash, 4)
        plan = hop_plan(keys, PARTITIONS)
        assert plan[0].bands[0] == 0
        assert sorted(b for hop in plan for b in hop.bands) == [0, 1, 2, 3]
        assert len({hop.partition for hop in plan}) == len(plan) <= PARTITIONS
        assert [hop.bands[0] for hop in plan] == sorted(hop.bands[0] for hop in plan)
    # Band 0 alone decides the first partition: copies of a content meet there.
    assert hop_plan(band_keys(SIMHASH, 1), 1)[0].partition == 0


def test_closest_picks_the_nearest_other_url_within_distance() -> None:
    bucket = [(A, SIMHASH ^ 0b111), (B, SIMHASH ^ 0b1), (C, SIMHASH ^ 0xFFFF)]
    assert closest(C, SIMHASH, (None, None), bucket, 3) == (B, 1)
    assert closest(B, SIMHASH, (None, None), [(B, SIMHASH)], 3) == (None, None)  # itself (a replay)
    assert closest(C, SIMHASH, (None, None), [(A, SIMHASH ^ 0xF)], 3) == (None, None)  # too far
    assert closest(C, SIMHASH, (A, 1), bucket, 3) == (A, 1)  # an earlier hop found as close


async def hops(h: Harness, agent: Any, start: DedupProbe) -> DedupProbe:
    """Feed a probe through every hop, as Kafka would (each to the partition it was sent to)."""
    key = band_keys(start.simhash, 4)[0].encode()
    partition = hop_plan(band_keys(start.simhash, 4), PARTITIONS)[0].partition
    value = start.to_bytes()
    while True:
        await put(agent, value, key, partition=partition)
        name, key, value = h.sent[-1]
        if name == "verdicts":
            assert h.producer.partitions["verdicts"][-1] == start.partition  # back to its raw partition
            return DedupProbe.model_validate_json(value)
        assert name == "by_band", DeadLetter.model_validate_json(value) if name == "dead_letter" else name
        partition = h.producer.partitions["by_band"][-1]


def test_exact_copies_are_marked_at_the_first_hop_and_skip_the_bands() -> None:
    verdicts: list[DedupProbe] = []

    async def scenario(h: Harness, agent: Any) -> None:
        for url in (A, B, A):
            verdicts.append(await hops(h, agent, probe(url)))

    h = run(lambda h: h.dedup.agent, scenario)
    assert [(v.url, v.duplicate_of) for v in verdicts] == [(A, None), (B, A), (A, None)]  # A's replay
    assert all(v.content_hash is None for v in verdicts)  # only the first hop needs it
    assert h.dedup.index.data[content_key("c1")] == A.encode()
    bands = [key for key in h.dedup.index.data if key.startswith(b"b|")]
    assert sorted(bands) == sorted(
        band_prefix(k) + A.encode() for k in band_keys(SIMHASH, 4)
    )  # B not entered
    # One changelog record per hop of A (the content entry rides on the first); A's replay found
    # its own entries and wrote none; B (a copy) entered nothing.
    plan = hop_plan(band_keys(SIMHASH, 4), PARTITIONS)
    assert [key for _, _, key, _ in h.producer.changelog] == [hop_key(A)] * len(plan)
    assert [part for _, part, _, _ in h.producer.changelog] == [hop.partition for hop in plan]


def test_near_duplicates_are_found_in_a_shared_band_and_marked_with_the_closest() -> None:
    near = SIMHASH ^ (1 << 63) ^ 1  # differs in bands 0 and 3 only: shares bands 1 and 2
    far = SIMHASH ^ 0xF0F0_F0F0_F0F0_F0F0
    verdicts: list[DedupProbe] = []

    async def scenario(h: Harness, agent: Any) -> None:
        for url, simhash, content in ((A, SIMHASH, "ca"), (B, near, "cb"), (C, far, "cc")):
            verdicts.append(await hops(h, agent, probe(url, simhash, content)))

    h = run(lambda h: h.dedup.agent, scenario)
    assert [(v.url, v.near_duplicate_of, v.near_distance) for v in verdicts] == [
        (A, None, None),
        (B, A, 2),
        (C, None, None),
    ]
    shared = band_prefix(band_keys(near, 4)[1])
    assert sorted(k for k in h.dedup.index.data if k.startswith(shared)) == [
        shared + A.encode(),
        shared + B.encode(),
    ]


def test_a_full_band_keeps_its_earliest_pages() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        for n in range(BUCKET_LIMIT + 2):  # far apart in every band but band 0
            await hops(
                h,
                agent,
                probe(f"https://example.org/{n:03d}", SIMHASH ^ (n << 48) << 16 >> 16 | n << 16, f"c{n}"),
            )

    h = run(lambda h: h.dedup.agent, scenario)
    first = band_prefix(band_keys(SIMHASH, 4)[0])
    entered = sorted(k for k in h.dedup.index.data if k.startswith(first))
    assert entered == [first + f"https://example.org/{n:03d}".encode() for n in range(BUCKET_LIMIT)]


def test_probes_that_are_not_ours_are_dead_letters() -> None:
    async def scenario(h: Harness, agent: Any) -> None:
        good = probe(A)
        first = hop_plan(band_keys(SIMHASH, 4), PARTITIONS)[0].partition
        await put(agent, good.to_bytes(), b"0:0000", partition=first)  # not its band
        await put(agent, good.to_bytes(), band_keys(SIMHASH, 4)[0].encode(), partition=(first + 1) % 3)
        no_hash = good.model_copy(update={"content_hash": None}).to_bytes()
        await put(agent, no_hash, band_keys(SIMHASH, 4)[0].encode(), partition=first)
        await put(
            agent,
            good.model_copy(update={"partition": 7}).to_bytes(),
            band_keys(SIMHASH, 4)[0].encode(),
            partition=first,
        )
        await put(agent, b"{", b"0:0", partition=first)

    h = run(lambda h: h.dedup.agent, scenario)
    reasons = [DeadLetter.model_validate_json(v).reason for _, v in h.on("dead_letter")]
    # The second: band 0's key in a partition other than band 0's (another hop's at most).
    assert reasons == ["key_mismatch", "key_mismatch", "invalid_probe", "invalid_probe", "invalid_probe"]
    assert h.on("verdicts") == []
    assert h.on("by_band") == []


@pytest.mark.parametrize("marks", [{}, {"duplicate_of": B}, {"near_duplicate_of": B, "near_distance": 2}])
def test_a_verdict_sends_its_waiting_page_marked_and_releases_its_raw_event(marks: dict[str, Any]) -> None:
    acked: list[int] = []

    async def scenario(h: Harness, agents: list[Any]) -> None:
        changes, verdicts = agents
        await put(changes, page(A, body="<p>some words for a page</p>").to_bytes(), A.encode(), partition=2)
        [(at, held)] = list(h.awaiting.pages.items())
        assert at == (2, 0)
        held.pending.event.ack = lambda: acked.append(held.pending.event.message.offset)  # type: ignore[method-assign]
        assert h.on("unique") == []
        verdict = h.probes()[0].model_copy(update={"content_hash": None, **marks})
        await put(verdicts, verdict.to_bytes(), A.encode(), partition=2)
        assert acked == []  # its sample is not sent yet
        h.stats.buffer.flush()
        assert acked == [0]
        await put(verdicts, verdict.to_bytes(), A.encode(), partition=2)  # a second one: stale

    h = run_agents([lambda h: h.changes.agent, lambda h: h.verdicts.agent], scenario)
    [(key, value)] = h.on("unique")
    event = PageEvent.model_validate_json(value)
    assert (key, event.page.canonical_url, event.change) == (A.encode(), A, "new")
    assert {name: getattr(event, name) for name in marks} == marks
    assert h.awaiting.pages == {}
    [(_, summed)] = h.on("by_domain")
    counts = json.loads(summed)
    assert (counts["pages"], counts["new"]) == (1, 1)
    assert counts.get("duplicates", 0) == int("duplicate_of" in marks)
    assert counts.get("near_duplicates", 0) == int("near_duplicate_of" in marks)


def rocksdb_settings(data_dir: Path) -> Settings:
    return Settings(
        _env_file=None,
        kafka=KafkaSettings(topic_prefix="unit", partitions=PARTITIONS),
        streams=StreamsSettings(app_id="unit-streams", store="rocksdb://", data_dir=data_dir),
    )


def test_a_restored_index_answers_as_the_one_that_wrote_its_changelog(tmp_path: Path) -> None:
    """The lookup entries are not in the changelog: a worker restoring the table derives them
    from the hop records, and must then find what the writer would have found."""
    near = SIMHASH ^ 0b11  # within distance 3 of A
    written: list[tuple[str, int, bytes, bytes | None]] = []

    async def write(h: Harness, agent: Any) -> None:
        await hops(h, agent, probe(A, content="ca"))
        written.extend(h.producer.changelog)

    run(lambda h: h.dedup.agent, write, rocksdb_settings(tmp_path / "writer"))
    assert written
    verdicts: list[DedupProbe] = []

    async def restore_then_probe(h: Harness, agent: Any) -> None:
        events = [
            SimpleNamespace(
                message=SimpleNamespace(tp=TP(topic, part), partition=part, offset=n, key=key, value=value)
            )
            for n, (topic, part, key, value) in enumerate(written)
        ]
        h.dedup.index.apply_changelog_batch(events)
        verdicts.append(await hops(h, agent, probe(B, content="ca")))  # an exact copy of A
        verdicts.append(await hops(h, agent, probe(C, near, content="cc")))  # a near copy of A

    run(lambda h: h.dedup.agent, restore_then_probe, rocksdb_settings(tmp_path / "restorer"))
    assert [(v.url, v.duplicate_of, v.near_duplicate_of, v.near_distance) for v in verdicts] == [
        (B, A, None, None),
        (C, None, A, 2),
    ]
