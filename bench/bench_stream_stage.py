"""Stream stage throughput on real pages next to faust's own no-op agent, and with 1 M URLs.

Needs the embedded stack (``crawlstream stack up``). Records are real pages with their bodies:
``docs`` (the 530 pages of /usr/share/doc/python3.11/html) or ``demo`` (a generated demo site of
``--demo-pages`` pages), each fetched twice (a crawl, then a recrawl where nothing changed: half
new pages, half touches). Every variant gets its own isolated run (topic prefix, app id, data
dir), the backlog is produced first, and the rate is raw events over the time from the worker's
"ready" (partitions assigned) until every topic it reads is committed to its end:

  stage            ``python -m streams worker``: every agent (change detection and enrichment,
                   dedup hops, verdicts, stats)
  dedup            the same with stats off: the path a page takes to pages.unique
  noop             the floor the issue sets: the stage's faust app with one agent that only
                   iterates the raw events
  noop + parse     a faust agent that decodes each page and enriches it (``enrich_html``): what
                   any stage that reads the text must do, shown for scale
  url dedup        the URL dedup hop alone (``detect_changes``, stats off) on the recrawls, the
    (recrawls)     crawl having been processed first (untimed): every page known, its body
                   unchanged; next to ``noop (recrawls)``, a no-op agent on the same records
  hops / noop      the dedup hops alone (``find_duplicates``) draining first-hop probes of the
                   same pages, next to a no-op agent on the same probes

``--flat`` also runs ``stage`` with 1,000,000 URLs already in its tables (``urls``, and
``dedup_index`` with their content and band entries, written into the worker's RocksDB stores
before it starts) and prints its rate over the empty-table rate (target >= 0.8).
Prints medians of ``--runs`` and writes bench/results/stream_stage.json (bench/results.py).
``--profile FILE`` records the first ``stage`` run with py-spy (speedscope JSON); ``--quick``: one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import Headline, Row, Series, Target, median_row, with_ratios, write_result
from bench.stream_support import (
    Offsets,
    demo_pages,
    docs_pages,
    isolated,
    page_record,
    produce_pages,
    worker,
)
from crawlstream.records import DedupProbe, PageRecord
from crawlstream.settings import Settings
from crawlstream.topics import catalog

BENCH = "stream_stage"
PREFILL_URLS = 1_000_000


def backlog(site: str, demo_pages_count: int) -> list[PageRecord]:
    pages = docs_pages() if site == "docs" else demo_pages(demo_pages_count)
    now = datetime.now(UTC)
    crawl = [page_record(url, body, now) for url, body in pages]
    recrawl = [page_record(url, body, now + timedelta(seconds=1)) for url, body in pages]
    return crawl + recrawl


def first_probes(records: list[PageRecord], partitions: int) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of each new page's first-hop probe, as detect_changes sends it."""
    from streams.dedup import hop_plan
    from streams.enrich import enrich_html
    from streams.fingerprints import band_count, band_keys

    bands = band_count(3)
    out = []
    for offset, record in enumerate(records[: len(records) // 2]):
        found = enrich_html(record.body, record.final_url)
        if not found.content_hash:
            continue
        keys = band_keys(found.simhash, bands)
        probe = DedupProbe(
            url=record.canonical_url,
            partition=zlib.crc32(record.canonical_url.encode()) % partitions,
            offset=offset,
            content_hash=found.content_hash,
            simhash=found.simhash,
        )
        out.append((hop_plan(keys, partitions)[0].partition, keys[0].encode(), probe.to_bytes()))
    return out


def produce_probes(settings: Settings, probes: list[tuple[int, bytes, bytes]]) -> None:
    producer = Producer(settings.kafka.librdkafka(**{"linger.ms": 20, "compression.type": "zstd"}))
    topic = catalog(settings).pages_by_band.name
    for partition, key, value in probes:
        producer.produce(topic, key=key, value=value, partition=partition)
        producer.poll(0)
    assert producer.flush(60) == 0


def drain(
    settings: Settings, env: dict[str, str], main: str, first: int, entry: tuple[str, ...], **worker_kw: Any
) -> tuple[float, int]:
    """(seconds from the worker being ready until it committed everything it reads, records it
    consumed from ``main``): done once ``first`` records of ``main`` are committed and no topic
    the group reads has a lag."""
    profile = worker_kw.pop("profile", None)
    with worker(env, entry=entry, **worker_kw) as running:
        spy = None
        if profile:
            spy_cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(running.proc.pid)]
            spy = subprocess.Popen(
                [*spy_cmd, "-o", profile, "-f", "speedscope", "-r", "100"], stdout=subprocess.DEVNULL
            )
        offsets = Offsets(settings, settings.streams.app_id)
        started = time.perf_counter()
        deadline = time.monotonic() + 900
        try:
            while offsets.committed(main) < first or offsets.lag(offsets.stage_inputs()) > 0:
                if running.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"worker did not drain:\n{running.tail()}")
                time.sleep(0.05)  # poll interval
            return time.perf_counter() - started, offsets.end(main)
        finally:
            offsets.close()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)


ENTRIES = {
    "streams": ("-m", "streams"),
    "noop": ("-m", "bench.bench_stream_stage", "--worker", "noop", "raw"),
    "parse": ("-m", "bench.bench_stream_stage", "--worker", "parse", "raw"),
}
# variant: (worker, stats on, the records it is timed on: all, or the recrawls after the crawl)
VARIANTS: dict[str, tuple[str, bool, str]] = {
    "stage": ("streams", True, "all"),
    "dedup": ("streams", False, "all"),
    "noop": ("noop", False, "all"),
    "noop + parse": ("parse", False, "all"),
    "url dedup (recrawls)": ("streams", False, "recrawls"),
    "noop (recrawls)": ("noop", False, "recrawls"),
}


def measure(
    variant: str,
    records: list[PageRecord],
    probes: list[tuple[int, bytes, bytes]],
    prefilled: Path | None = None,
    profile: str | None = None,
) -> float:
    """Events per second of ``variant`` (raw events, or probes consumed for the hops)."""
    if variant in ("hops", "hops noop"):
        with isolated(variant.replace(" ", "")) as (settings, env):
            produce_probes(settings, probes)
            kind = "hops" if variant == "hops" else "noop"
            entry = ("-m", "bench.bench_stream_stage", "--worker", kind, "by_band")
            seconds, consumed = drain(settings, env, catalog(settings).pages_by_band.name, len(probes), entry)
            return consumed / seconds
    kind, stats, timed_on = VARIANTS[variant]
    extra = {} if stats else {"CRAWLSTREAM_STREAMS__STATS_ENABLED": "false"}
    tag = "".join(c for c in variant if c.isalnum())[:12]
    crawl, recrawl = records[: len(records) // 2], records[len(records) // 2 :]
    with isolated(tag, **extra) as (settings, env), tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        raw = catalog(settings).raw_pages.name
        data_dir = Path(tmp) / "streams"
        if prefilled is not None:
            shutil.copytree(prefilled / "streams", data_dir, symlinks=True)
            retarget(data_dir, settings.streams.app_id)
        else:  # faust's own no-op app creates only the last level of its data dir
            data_dir.mkdir()
        if timed_on == "recrawls" and kind == "streams":
            # The crawl first, untimed: the tables then know every page, as on a recrawl.
            produce_pages(settings, crawl)
            drain(settings, env, raw, len(crawl), ENTRIES[kind], data_dir=data_dir)
            produce_pages(settings, recrawl)
            seconds, _ = drain(settings, env, raw, len(records), ENTRIES[kind], data_dir=data_dir)
            return len(recrawl) / seconds
        timed = recrawl if timed_on == "recrawls" else records
        produce_pages(settings, timed)
        seconds, _ = drain(settings, env, raw, len(timed), ENTRIES[kind], data_dir=data_dir, profile=profile)
        return len(timed) / seconds


# ------------------------------------------------------------------------------------ prefill

PREFILL_APP = "bench-prefill"


def prefill(root: Path, urls: int) -> Path:
    """RocksDB stores of the ``urls`` and ``dedup_index`` tables holding ``urls`` URLs, as a
    worker with app id ``PREFILL_APP`` keeps them (written directly, with faust's own options)."""
    import os

    from faust.stores.rocksdb import RocksDBOptions

    from crawlstream.settings import load_settings
    from streams.app import create_app
    from streams.dedup import band_prefix, hop_key, hop_plan, hop_value
    from streams.fingerprints import band_count, band_keys

    saved = dict(os.environ)
    os.environ["CRAWLSTREAM_STREAMS__APP_ID"] = PREFILL_APP
    os.environ["CRAWLSTREAM_STREAMS__DATA_DIR"] = str(root / "streams")
    try:
        settings = load_settings()
        app = create_app(settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    partitions, bands = settings.kafka.partitions, band_count(settings.streams.near_duplicate_distance)
    registry: Any = app.tables
    tables: dict[str, Any] = {name: registry[name].data for name in ("urls", "dedup_index")}
    dbs = {
        (name, p): RocksDBOptions().open(store.partition_path(p))
        for name, store in tables.items()
        for p in range(partitions)
    }
    import rocksdict

    seen = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).isoformat()
    batches = {key: rocksdict.WriteBatch(raw_mode=True) for key in dbs}
    for i in range(urls):
        url = f"https://site{i % 5000}.example/section/{i // 5000}/page-{i}.html"
        raw_url = url.encode()
        entry = {"h": f"{i * 2654435761 % 2**128:032x}", "f": seen, "l": seen, "i": 86400.0, "o": i, "c": "n"}
        batches[("urls", zlib.crc32(raw_url) % partitions)].put(
            json.dumps(url).encode(), json.dumps(entry, separators=(",", ":")).encode()
        )
        simhash = (i * 0x9E3779B97F4A7C15) % 2**64
        content = f"{(i * 0x2545F4914F6CDD1D) % 2**128:032x}"
        keys = band_keys(simhash, bands)
        for n, hop in enumerate(hop_plan(keys, partitions)):
            batch = batches[("dedup_index", hop.partition)]
            batch.put(hop_key(url), hop_value(simhash, bands, list(hop.bands), content if n == 0 else None))
            for band in hop.bands:
                batch.put(band_prefix(keys[band]) + raw_url, f"{simhash:016x}".encode())
            if n == 0:
                batch.put(b"c|" + content.encode(), raw_url)
        if i % 100_000 == 99_999:
            for key, batch in batches.items():
                dbs[key].write(batch)
                batches[key] = rocksdict.WriteBatch(raw_mode=True)
    for key, batch in batches.items():
        dbs[key].write(batch)
    for db in dbs.values():
        db.flush()
        db.compact_range(None, None)
        db.close()
    return root


def retarget(data_dir: Path, app_id: str) -> None:
    """Rename a prefilled data dir's app folder to the run's app id (faust's datadir is
    ``<data_dir>/<app_id>``)."""
    (data_dir / PREFILL_APP).rename(data_dir / app_id)


# ----------------------------------------------------------------------------- floor workers


def floor_worker(kind: str, topic_name: str) -> None:
    """The stage's faust app with one agent: ``noop`` (only iterates), ``parse`` (decodes each
    page and enriches it), ``hops`` (the dedup hops' own agent, nothing else)."""
    from crawlstream.records import decode_page
    from crawlstream.settings import load_settings
    from streams import dedup
    from streams.app import new_app
    from streams.enrich import enrich_html
    from streams.topology import declare_topics

    settings = load_settings()
    app = new_app(settings)
    topics = declare_topics(app, settings)
    topic = topics.raw if topic_name == "raw" else topics.by_band
    if kind == "hops":
        dedup.register(app, settings, topics)
    else:  # noop, parse

        async def floor(stream: Any) -> None:
            async for event in stream.events():
                if kind == "parse":
                    record = decode_page(event.value)
                    enrich_html(record.body, record.final_url)

        app.agent(topic, name=f"floor_{kind.replace(' ', '_')}")(floor)
    sys.argv = [sys.argv[0], "worker", "-l", "info"]
    app.main()


# ------------------------------------------------------------------------------------- main


@contextmanager
def prefilled_stores(urls: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-prefill-") as tmp:
        started = time.monotonic()
        prefill(Path(tmp), urls)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        print(
            f"prefilled {urls:,} URLs in {time.monotonic() - started:.0f}s ({size / 1e6:.0f} MB)",
            file=sys.stderr,
        )
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", choices=["docs", "demo"], default="docs")
    parser.add_argument("--demo-pages", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flat", action="store_true", help="also run with 1 M URLs in the tables")
    parser.add_argument("--flat-urls", type=int, default=PREFILL_URLS)
    parser.add_argument(
        "--variants",
        default="stage,dedup,noop,noop + parse,url dedup (recrawls),noop (recrawls),hops,hops noop",
    )
    parser.add_argument("--profile", help="py-spy the first stage run into this file (speedscope)")
    parser.add_argument("--quick", action="store_true", help="one run")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    records = backlog(args.site, args.demo_pages)
    probes = first_probes(records, 3) if any(v.startswith("hops") for v in variants) else []
    rates: dict[str, list[float]] = {v: [] for v in variants}
    if args.flat:
        rates["stage, 1M URLs"] = []
    profile = args.profile
    with prefilled_stores(args.flat_urls) if args.flat else _nothing() as prefilled:
        for n in range(args.runs):
            for variant in variants:
                rates[variant].append(
                    measure(variant, records, probes, profile=profile if variant == "stage" else None)
                )
                if variant == "stage":
                    profile = None
                print(f"run {n + 1}: {variant} {rates[variant][-1]:,.0f}/s", file=sys.stderr)
            if prefilled is not None:
                rates["stage, 1M URLs"].append(measure("stage", records, probes, prefilled=prefilled))
                print(f"run {n + 1}: stage, 1M URLs {rates['stage, 1M URLs'][-1]:,.0f}/s", file=sys.stderr)
    medians = {name: statistics.median(r) for name, r in rates.items() if r}
    floors: dict[str, tuple[str, str]] = {
        "stage": ("noop", ">= 0.6x"),
        "dedup": ("noop", ">= 0.6x"),
        "noop + parse": ("noop", ""),
        "url dedup (recrawls)": ("noop (recrawls)", ">= 0.6x"),
        "noop (recrawls)": ("", "floor"),
        "hops": ("hops noop", ">= 0.6x"),
        "hops noop": ("", "floor"),
        "noop": ("", "floor"),
        "stage, 1M URLs": ("stage", ">= 0.8x"),
    }
    events = {
        name: len(probes) if name.startswith("hops") else len(records) // (2 if "recrawls" in name else 1)
        for name in medians
    }
    table = Table(
        title=f"stream stage on {args.site} pages ({len(records):,} events, half recrawls), "
        f"one worker, median of {args.runs}"
    )
    for column in ("variant", "events/s", "floor / peer", "ratio", "target", "runs"):
        table.add_column(column, justify="left" if column in ("variant", "floor / peer", "runs") else "right")
    for name, median in medians.items():
        floor, target = floors.get(name, ("", ""))
        ratio = f"{median / medians[floor]:.2f}" if floor in medians else ""
        if name in ("stage", "dedup") and "noop + parse" in medians:
            ratio += f" ({median / medians['noop + parse']:.2f} of noop + parse)"
        table.add_row(
            name, f"{median:,.0f}", floor, ratio, target, " ".join(f"{r:,.0f}" for r in rates[name])
        )
    Console(width=160).print(table)
    # Each comparison group against its floor, measured in the same run.
    groups = {
        "every page (crawl + recrawl)": ("noop", ["stage", "dedup", "noop + parse", "noop"]),
        "recrawls": ("noop (recrawls)", ["url dedup (recrawls)", "noop (recrawls)"]),
        "dedup hops (probes)": ("hops noop", ["hops", "hops noop"]),
        "1M URLs in the tables": ("stage", ["stage, 1M URLs", "stage"]),
    }
    roles = {"noop": "floor", "noop (recrawls)": "floor", "hops noop": "floor", "noop + parse": "baseline"}
    rows: list[Row] = []
    for group, (reference, names) in groups.items():
        if reference not in rates or not rates[reference]:
            continue
        present = [n for n in names if rates.get(n)]
        rows += with_ratios(
            [
                median_row(
                    name,
                    rates[name],
                    "events/s",
                    "baseline" if group.startswith("1M") and name == "stage" else roles.get(name, "ours"),
                    group,
                )
                for name in present
            ],
            reference,
        )
    targets: list[Target] = []
    headline: list[Headline] = []
    for name, floor, target in (
        ("stage", "noop", 0.6),
        ("dedup", "noop", 0.6),
        ("url dedup (recrawls)", "noop (recrawls)", 0.6),
        ("hops", "hops noop", 0.6),
        ("stage, 1M URLs", "stage", 0.8),
    ):
        if name in medians and floor in medians:
            ratio = medians[name] / medians[floor]
            targets.append(Target(f"{name} over {floor} (issue 13)", ratio, ">=", target, "x"))
    for stage, name, floor in (
        ("stream stage (real pages)", "stage", "noop"),
        ("dedup hops (probes)", "hops", "hops noop"),
    ):
        if name in medians and floor in medians:
            headline.append(
                Headline(stage, medians[name], medians[floor], "events/s", name, f"faust {floor}", target=0.6)
            )
    series: list[Series] = []
    if "stage, 1M URLs" in medians and "stage" in medians:
        headline.append(
            Headline(
                f"stream stage with {args.flat_urls:,} URLs in its tables",
                medians["stage, 1M URLs"],
                medians["stage"],
                "events/s",
                "stage, 1M URLs",
                "stage, empty tables",
                target=0.8,
            )
        )
        series.append(
            Series(
                "stream stage: events/s relative to empty tables",
                "cost",
                [0.0, float(args.flat_urls)],
                [1.0, medians["stage, 1M URLs"] / medians["stage"]],
                "rows already in the table (pages, URLs)",
                "throughput / small tables",
            )
        )
    write_result(
        BENCH + ("" if args.site == "docs" else f"-{args.site}"),
        f"Stream stage on {args.site} pages with bodies, one worker, next to faust's no-op agent",
        rows,
        targets=targets,
        headline=headline,
        series=series,
        params={"site": args.site, "runs": args.runs, "events": events, "flat_urls": args.flat_urls},
        notes=[
            "Half the events are recrawls of unchanged pages; rates are raw events over the time "
            "from the worker's ready until every topic it reads is committed to its end."
        ],
    )
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        floor_worker(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(main())
