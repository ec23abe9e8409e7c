"""Sitemap, feed and JSON API sources, each as a crawl job through real Kafka (the running stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crawlstream.records import PageRecord
from crawlstream.settings import Settings, load_settings
from crawlstream.topics import catalog, ensure_topics
from tests.integration.crawl_testsite import HostileSite, start_test_site
from tests.integration.kafka_read import read_topic

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

JOBS = """
[defaults]
allow_private_hosts = ["{base}"]  # that host, on its port only

[jobs.sitemap]
source = "sitemap"
sitemap_urls = ["{base}robots.txt"]      # discovery through robots.txt, then the index
recrawl_interval_s = 2592000             # 30 days: sitemap-a's 2020 lastmod entries are skipped

[jobs.feed]
source = "feed"
feed_urls = ["{base}feed.xml"]

[jobs.api]
source = "api"
api_endpoint = "{base}api"
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HostileSite, Path]]:
    site = start_test_site(crawl_delay=0.05)
    tmp = tmp_path_factory.mktemp("sources")
    (tmp / "jobs.toml").write_text(JOBS.format(base=site.base_url))
    try:
        yield site, tmp
    finally:
        site.stop()


def _run(tmp: Path, job: str) -> tuple[dict[str, object], list[PageRecord]]:
    prefix = f"test-src-{uuid.uuid4().hex[:8]}"
    environ = {**os.environ, "CRAWLSTREAM_KAFKA__TOPIC_PREFIX": prefix}
    os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"] = prefix
    try:
        settings: Settings = load_settings()
    finally:
        del os.environ["CRAWLSTREAM_KAFKA__TOPIC_PREFIX"]
    topics = catalog(settings)
    ensure_topics(settings, [topics.raw_pages, topics.dead_letter, topics.runs])
    report = tmp / f"{job}.json"
    argv = [sys.executable, "-m", "control.cli", "jobs", "run", job, "--jobs", str(tmp / "jobs.toml")]
    argv += ["--no-progress", "--report", str(report)]
    proc = subprocess.run(
        argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    pages = [PageRecord.model_validate_json(v) for _, v in read_topic(settings, topics.raw_pages.name)]
    return json.loads(report.read_text()), pages


def _html_paths(site: HostileSite, pages: list[PageRecord]) -> list[str]:
    return sorted(p.url.removeprefix(site.base_url.rstrip("/")) for p in pages if p.kind == "html")


def test_sitemap_index_from_robots_with_lastmod_filter(env: tuple[HostileSite, Path]) -> None:
    site, tmp = env
    report, pages = _run(tmp, "sitemap")
    assert _html_paths(site, pages) == [f"/page/{n}" for n in range(5, 9)]
    assert report["records_delivered"] == len(pages)
    assert {"/sitemap_index.xml", "/sitemap-a.xml", "/sitemap-b.xml"} <= set(site.paths())


def test_feed_entries(env: tuple[HostileSite, Path]) -> None:
    site, tmp = env
    report, pages = _run(tmp, "feed")
    assert _html_paths(site, pages) == ["/page/1", "/page/2", "/page/3"]
    assert [p.kind for p in pages].count("metadata") == 1  # the feed itself
    assert report["metadata_records"] == 1


def test_paginated_json_api(env: tuple[HostileSite, Path]) -> None:
    site, tmp = env
    _, pages = _run(tmp, "api")
    assert _html_paths(site, pages) == ["/page/1", "/page/2", "/page/3"]
    api_pages = sorted(p.url for p in pages if p.kind == "metadata")
    assert api_pages == [f"{site.base_url}api", f"{site.base_url}api?page=2"]
