from __future__ import annotations

import json

import pytest

from crawlers.__main__ import _parser
from crawlers.metrics import fetch_errors, status_class
from crawlers.runner import CrawlReport, CrawlSpec, scrapy_settings_for
from crawlstream.settings import Settings


def test_cli_arguments_build_a_spec() -> None:
    args = _parser().parse_args(
        ["crawl", "--start-url", "http://a/", "--start-url", "http://b/", "--max-pages", "5",
         "--allow-private-host", "a", "--set", 'ITEM_PIPELINES={"x.Y": 1}', "--set", "LOG_LEVEL=DEBUG",
         "--report", "r.json"]
    )  # fmt: skip
    assert args.start_urls == ["http://a/", "http://b/"]
    assert args.max_pages == 5
    assert args.max_depth is None
    assert dict(args.scrapy_settings) == {"ITEM_PIPELINES": {"x.Y": 1}, "LOG_LEVEL": "DEBUG"}
    with pytest.raises(SystemExit):
        _parser().parse_args(["crawl", "--start-url", "http://a/", "--report", "r", "--set", "novalue"])


def test_scrapy_settings_layering() -> None:
    settings = Settings()
    spec = CrawlSpec(start_urls=["http://a/"], max_depth=2, scrapy_settings={"ITEM_PIPELINES": {}})
    scrapy_settings = scrapy_settings_for(settings, spec)
    assert scrapy_settings["CRAWLSTREAM_SETTINGS"] is settings
    assert scrapy_settings.getint("DEPTH_LIMIT") == 2
    assert scrapy_settings.getbool("ROBOTSTXT_OBEY")  # from crawlers.settings
    assert scrapy_settings["CRAWLSTREAM_METRICS_PORT"] is None  # no /metrics unless asked
    assert dict(scrapy_settings.getdict("ITEM_PIPELINES")) == {}
    assert len(CrawlSpec(start_urls=[]).run_id) == 32


def test_report_is_json_serialisable() -> None:
    report = CrawlReport(1, 2, 0, 1, 0, 0, 0, 0, 1, ["http://a/"], 0.5, "finished")
    assert json.loads(json.dumps(report.to_json_dict()))["canonical_urls"] == ["http://a/"]


def test_metric_helpers() -> None:
    assert [status_class(s) for s in (200, 301, 404, 503, 42)] == ["2xx", "3xx", "4xx", "5xx", "other"]
    stats = {
        "downloader/exception_count": 9,
        "downloader/exception_type_count/scrapy.exceptions.IgnoreRequest": 3,
        "downloader/exception_type_count/crawlers.refusals.Refused": 4,  # refused on purpose
    }
    assert fetch_errors(stats) == 2


def test_refusals_are_summed_by_reason_scrapy_filters_included() -> None:
    from crawlers.refusals import address_refusals, refusal_counts

    stats = {
        "crawlstream/refused/loopback": 2,
        "crawlstream/refused/ipv4_embedded_private": 1,
        "crawlstream/refused/scheme": 4,
        "crawlstream/refused/depth": 1,
        "depth/request_ignored_count": 5,
        "downloader/exception_count": 3,
    }
    counts = refusal_counts(stats)
    assert counts == {"depth": 6, "ipv4_embedded_private": 1, "loopback": 2, "scheme": 4}
    assert address_refusals(counts) == 3
