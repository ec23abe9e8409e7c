"""The crawl stage against the hostile web (tests/support/hostile.py), through real Kafka.

- The guard: redirects and links to another port, another loopback host, the metadata address,
  IPv4-mapped IPv6, decimal/octal/hex/short IPv4, 0.0.0.0, file:, ftp:, gopher:, data:,
  javascript: and a DNS name that rebinds from a public address (the check) to loopback (the
  connect) are refused and counted; the server's own log proves nothing reached the decoy.
- Every source (site, sitemap, feed, api) crawls the hostile web with the default bounds and ends:
  traps stay bounded, every record fits its topic, nothing reached a refused address.
- Peak RSS of a crawler fetching 16 hostile responses at once (50 MB bodies, gzip and deflate
  bombs of 1 GiB, slow drips) stays within a bound derived from the caps.

Needs only the stack's Kafka.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crawlstream.records import DeadLetter, PageRecord
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics
from tests.integration.kafka_read import read_topic
from tests.support.hostile import HostileWeb

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
HOSTS = ["127.0.10.1", "127.0.10.2"]  # the crawl may reach the first (its port only), never the second
REBIND = "rebind.hostile.test"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def web() -> Iterator[HostileWeb]:
    with HostileWeb(hosts=HOSTS, max_response_s=30.0) as server:
        yield server


@dataclass
class Run:
    code: int
    report: dict[str, Any]
    pages: list[PageRecord]
    raw: list[tuple[bytes, bytes]]
    dead: list[DeadLetter]
    output: str
    settings: Settings


def _settings(prefix: str) -> Settings:
    os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"] = prefix
    try:
        return load_settings()
    finally:
        del os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"]


def _run(argv: list[str], tmp: Path, report: Path, extra_env: dict[str, str] | None = None) -> Run:
    prefix = f"test-hostile-{uuid.uuid4().hex[:8]}"
    settings = _settings(prefix)
    topics = catalog(settings)
    ensure_topics(settings, [topics.raw_pages, topics.dead_letter, topics.runs, topics.links])
    env = {**os.environ, "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": prefix, **(extra_env or {})}
    env["CRAWLSTREAM_STACK__STATE_DIR"] = os.environ.get(
        "CRAWLSTREAM_STACK__STATE_DIR", str(REPO / ".crawlstream")
    )
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    output = proc.stdout[-3000:] + proc.stderr[-6000:]
    assert report.exists(), output
    raw = read_topic(settings, topics.raw_pages.name)
    dead = [DeadLetter.model_validate_json(v) for _, v in read_topic(settings, topics.dead_letter.name)]
    pages = [PageRecord.model_validate_json(v) for _, v in raw]
    return Run(proc.returncode, json.loads(report.read_text()), pages, raw, dead, output, settings)


def _crawl(tmp: Path, start_urls: list[str], *args: str, env: dict[str, str] | None = None) -> Run:
    report = tmp / f"report-{uuid.uuid4().hex[:6]}.json"
    argv = [sys.executable, "-m", "crawlers", "crawl", "--report", str(report), "--metrics-port", "-1"]
    for url in start_urls:
        argv += ["--start-url", url]
    return _run([*argv, *args], tmp, report, env)


def _job(tmp: Path, web: HostileWeb, source: str, seeds: str, extra: str = "") -> Run:
    jobs = tmp / f"jobs-{source}.toml"
    jobs.write_text(
        f"""
[jobs.hostile]
source = "{source}"
{seeds}
allow_private_hosts = ["{web.netloc()}"]
download_timeout_s = 5
retry_times = 1
{extra}
"""
    )
    report = tmp / f"report-{source}.json"
    argv = [sys.executable, "-m", "control.cli", "jobs", "run", "hostile", "--jobs", str(jobs)]
    return _run([*argv, "--no-progress", "--report", str(report)], tmp, report)


def _assert_nothing_reached_a_refused_address(web: HostileWeb) -> None:
    assert web.requests_to(web.decoy) == [], web.requests_to(web.decoy)
    assert web.requests_to((HOSTS[1], web.port)) == []  # another host, the same port: not allowed
    assert web.errors == []  # the server itself never failed


def _assert_every_record_fits(run: Run) -> None:
    limit = catalog(run.settings).raw_pages.max_message_bytes
    assert all(len(k) + len(v) + 1024 <= limit for k, v in run.raw)


def test_no_request_reaches_a_refused_address(web: HostileWeb, tmp_path: Path) -> None:
    targets = web.redirect_targets()
    starts = [web.url(f"/redirect/{name}") for name in targets]
    starts += [web.url("/links/private"), web.url("/links/schemes")]
    starts.append(f"http://{REBIND}:{web.decoy[1]}/stolen")  # public for the check, loopback to connect
    # Offsite filtering would hide the address guard: every odd host is "on site" here.
    domains = [HOSTS[0], HOSTS[1], "127.0.0.1", "localhost", "2130706433", "0177.0.0.1", "0x7f.0.0.1"]
    domains += ["127.1", "169.254.169.254", "0.0.0.0", "::ffff:127.0.0.1", "::ffff:7f00:1", REBIND]
    args = ["--allow-private-host", web.netloc(), "--max-depth", "1"]
    for domain in domains:
        args += ["--allowed-domain", domain]
    args += ["--set", "CRAWLSTREAM_RESOLVER=tests.support.hostile.rebinding_resolver"]
    dns = {REBIND: [["93.184.215.14"], ["127.0.0.1"]]}
    web_hits_before = len(web.requests_to((HOSTS[0], web.port), "/redirect/"))

    run = _crawl(tmp_path, starts, *args, env={"HOSTILE_DNS": json.dumps(dns)})

    assert run.code == 0, run.output
    assert run.report["finish_reason"] == "finished"
    _assert_nothing_reached_a_refused_address(web)
    # The allowed host was crawled: every redirect was asked for once.
    assert len(web.requests_to((HOSTS[0], web.port), "/redirect/")) - web_hits_before == len(targets)
    refused = run.report["refused"]
    for reason in (
        "loopback",
        "ipv4_embedded_loopback",
        "link_local",
        "unspecified",
        "scheme",
        "url_too_long",
    ):
        assert refused.get(reason, 0) >= 1, (reason, refused)
    # file, ftp, gopher, data, javascript as redirects; the same plus mailto as links.
    assert refused["scheme"] >= 5 + 6
    # The rebinding name was refused at connect time (the early check saw a public address).
    assert f"refused to connect to {REBIND}" in run.output
    assert run.report["private_refused"] >= 10
    assert run.pages
    assert all(p.url.startswith(web.url("/")) for p in run.pages)


@pytest.mark.parametrize(
    ("source", "seeds", "extra"),
    [
        ("site", 'start_urls = ["{web}/"]', ""),
        ("sitemap", 'sitemap_urls = ["{web}/robots.txt"]', ""),
        ("feed", 'feed_urls = ["{web}/feed.xml", "{web}/xml/feed-laughs.xml", "{web}/xml/feed-xxe.xml"]', ""),
        ("api", 'api_endpoint = "{web}/api/endless?page=0"', "max_api_pages = 40"),
    ],
)
def test_every_source_crawls_the_hostile_web_and_stays_bounded(
    web: HostileWeb, tmp_path: Path, source: str, seeds: str, extra: str
) -> None:
    before = len(web.log)
    run = _job(tmp_path, web, source, seeds.format(web=web.url("").rstrip("/")), extra)
    hits = web.log[before:]
    print(
        source,
        {
            k: run.report[k]
            for k in (
                "pages_fetched",
                "responses_total",
                "dead_letters",
                "refused",
                "peak_rss_bytes",
                "duration_s",
                "finish_reason",
            )
        },
        len(hits),
    )

    assert run.code in (0, 3), run.output  # 3: some fetches failed (slow drips) and were dead-lettered
    assert run.report["finish_reason"] == "finished", run.report
    assert run.report["delivery_failures"] == 0
    _assert_nothing_reached_a_refused_address(web)
    _assert_every_record_fits(run)
    refused = run.report["refused"]
    paths = [h.path for h in hits]
    calendar = [p for p in paths if p.startswith("/trap/calendar/")]
    assert len(calendar) <= 2 * 17  # the infinite calendar ends at the depth limit (16)
    assert len([p for p in paths if p.startswith("/trap/chain/")]) <= 2 * 11  # max_redirects 10
    assert run.report["peak_rss_bytes"] < 1024 * MiB
    if source == "site":
        for reason in (
            "scheme",
            "url_too_long",
            "links_per_page",
            "response_too_large",
            "decompressed_too_large",
        ):
            assert refused.get(reason, 0) >= 1, (reason, refused)
        controls = [p for p in run.pages if p.url.endswith("/control-chars")]
        assert controls, sorted(p.url for p in run.pages)[:50]
        assert controls[0].body_truncated  # 1 MB of control characters, re-cut to fit or capped
        assert controls[0].body_bytes >= 1024 * 1024
        assert len([p for p in paths if p.startswith("/page/")]) <= 1000 + 51  # the 100k links: capped
        recorded = {p.url.removeprefix(web.url("").rstrip("/")) for p in run.pages}
        encodings = {
            f"/encoding/{k}" for k in ("invalid-utf8", "unknown-charset", "utf16-as-utf8", "bom-mismatch")
        }
        assert encodings <= recorded  # bad encodings are decoded with replacements, never a crash
        assert "/rate-limited" in recorded  # after its Retry-After
        slow = [d for d in run.dead if (d.original_value() or b"").endswith(b"/slow")]
        assert [d.reason for d in slow] == ["fetch_download_timeout_error"]  # the drip hit the total timeout
        drips = [h.time for h in hits if h.path == "/slow"]
        assert len(drips) == 2  # the first attempt and one retry, each ended by DOWNLOAD_TIMEOUT
    if source == "sitemap":
        for reason in ("decompressed_too_large", "url_too_long", "scheme"):
            assert refused.get(reason, 0) >= 1, (reason, refused)
    if source == "feed":
        assert refused.get("scheme", 0) >= 2  # file: and javascript: entries
        assert refused.get("offsite", 0) >= 1  # the entry on 127.0.0.1:<decoy>
        assert not [p for p in paths if "leak=" in p and "root" in p]  # no /etc/passwd in any URL
    if source == "api":
        api_pages = [p for p in paths if p.startswith("/api/endless")]
        assert len(api_pages) == 40
        assert refused.get("api_pages") == 1


def test_peak_rss_stays_bounded_under_16_concurrent_hostile_fetches(web: HostileWeb, tmp_path: Path) -> None:
    max_response = 4 * MiB  # crawl.max_response_bytes, the default
    common = ["--allow-private-host", web.netloc(), "--max-depth", "1"]
    common += ["--set", "CONCURRENT_REQUESTS=16", "--set", "CONCURRENT_REQUESTS_PER_DOMAIN=16"]
    common += ["--set", "DOWNLOAD_TIMEOUT=5", "--set", "RETRY_TIMES=0", "--set", "ROBOTSTXT_OBEY=False"]
    baseline = _crawl(tmp_path, [web.url("/page/50")], *common)
    assert baseline.code == 0, baseline.output

    kinds = ["/huge"] * 4 + ["/huge/stream"] * 4 + ["/bomb/gzip"] * 4 + ["/bomb/deflate"] * 2 + ["/slow"] * 2
    starts = [web.url(f"{path}?n={n}") for n, path in enumerate(kinds)]
    before = len(web.log)
    hostile = _crawl(tmp_path, starts, *common)

    assert hostile.code == 0, hostile.output
    assert len([h for h in web.log[before:] if "?n=" in h.path]) == 16  # all 16 were fetched
    refused = hostile.report["refused"]
    assert refused.get("response_too_large", 0) == 8
    assert refused.get("decompressed_too_large", 0) == 6
    # Per fetch at most: the body buffer, its copy, and the decompressed body with its copy.
    bound = baseline.report["peak_rss_bytes"] + 16 * 4 * max_response
    peak = hostile.report["peak_rss_bytes"]
    print(
        f"peak RSS: baseline {baseline.report['peak_rss_bytes'] / MiB:.0f} MiB, hostile {peak / MiB:.0f} MiB"
    )
    assert peak <= bound, f"peak RSS {peak / MiB:.0f} MiB > bound {bound / MiB:.0f} MiB"
