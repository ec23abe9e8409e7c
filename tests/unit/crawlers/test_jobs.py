from __future__ import annotations

from pathlib import Path

import pytest

from crawlers.jobrun import crawl_spec, run_event
from crawlers.jobs import get_job, load_jobs, parse_jobs
from crawlers.runner import CrawlReport
from crawlstream.errors import ConfigError
from crawlstream.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def test_example_jobs_file_is_valid() -> None:
    jobs = load_jobs(REPO / "deploy" / "jobs.toml")
    docs = get_job(jobs, "python-docs")
    assert docs.schedule == "0 3 * * *"
    assert docs.concurrency_per_domain == 4  # from [defaults]
    assert docs.seed_urls() == ["https://docs.python.org/3/library/"]


def test_errors_name_the_job_and_the_field() -> None:
    data = {
        "jobs": {
            "a": {"start_urls": ["ftp://x/"], "schedule": "61 * * * *"},
            "b": {"source": "feed", "start_urls": ["http://x/"]},
            "c": {"start_urls": ["http://x/"], "allow": ["("], "concurrency_per_domain": 0, "typo": 1},
        }
    }
    with pytest.raises(ConfigError) as err:
        parse_jobs(data, "jobs.toml")
    text = str(err.value)
    assert "job 'a': field 'start_urls'" in text
    assert "field 'schedule'" in text
    assert "job 'b'" in text
    assert "needs feed_urls" in text
    for field in ("allow", "concurrency_per_domain", "typo"):
        assert f"field '{field}'" in text
    with pytest.raises(ConfigError, match="unknown top-level"):
        parse_jobs({"job": {}})
    with pytest.raises(ConfigError, match="no job named 'x'"):
        get_job({}, "x")


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_jobs(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[jobs.a\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_jobs(bad)


def test_job_becomes_scrapy_settings() -> None:
    job = parse_jobs(
        {
            "jobs": {
                "j": {
                    "start_urls": ["http://a/"],
                    "download_delay_s": 1.5,
                    "concurrency_per_domain": 2,
                    "autothrottle": True,
                    "user_agent": "ua",
                    "output_topic": "out",
                    "max_response_bytes": 2048,
                    "max_redirects": 3,
                    "allow": ["/docs/"],
                    "max_body_bytes": 4096,
                }
            }
        }
    )["j"]
    spec = crawl_spec(Settings(), job, "r1")
    s = spec.scrapy_settings
    assert (s["DOWNLOAD_DELAY"], s["RANDOMIZE_DOWNLOAD_DELAY"], s["CONCURRENT_REQUESTS_PER_DOMAIN"]) == (
        1.5,
        False,
        2,
    )
    assert s["AUTOTHROTTLE_ENABLED"] is True
    assert (s["USER_AGENT"], s["CRAWLSTREAM_TOPIC"], s["DOWNLOAD_MAXSIZE"]) == ("ua", "out", 2048)
    assert (s["REDIRECT_MAX_TIMES"], s["CRAWLSTREAM_MAX_BODY_BYTES"]) == (3, 4096)
    assert s["CRAWLSTREAM_RECORD_NON_HTML"] is True
    assert (spec.job_id, spec.run_id, spec.allow) == ("j", "r1", ["/docs/"])


def test_run_events() -> None:
    from datetime import UTC, datetime

    started = datetime(2026, 1, 1, tzinfo=UTC)
    first = run_event("j", "r", started, None)
    assert (first.event, first.outcome) == ("started", "running")
    report = CrawlReport(5, 9, 1, 6, 1, 2, 0, 0, 5, [], 1.0, "finished", metadata_records=1, dead_letters=3)
    last = run_event("j", "r", started, report)
    assert (last.event, last.outcome, last.pages, last.errors, last.delivery_failures) == (
        "finished",
        "failed",
        6,
        5,
        1,
    )


def test_a_job_without_limits_is_bounded_by_the_crawl_settings() -> None:
    job = parse_jobs({"jobs": {"j": {"start_urls": ["http://a/"]}}})["j"]
    spec = crawl_spec(Settings(), job, "r")
    # None: the spider takes crawl.max_pages / crawl.max_depth (finite); 0 would mean "no limit".
    assert (spec.max_pages, spec.max_depth) == (None, None)
    for name in ("DOWNLOAD_MAXSIZE", "CRAWLSTREAM_MAX_PAGES_PER_HOST", "CRAWLSTREAM_MAX_LINKS_PER_PAGE"):
        assert name not in spec.scrapy_settings  # crawl.* applies (crawlers.settings.crawl_overrides)
    assert (spec.allow_private_addresses, spec.allow_private_hosts) == (False, [])


def test_job_limits_and_private_access_become_settings() -> None:
    job = parse_jobs(
        {
            "jobs": {
                "j": {
                    "source": "api",
                    "api_endpoint": "http://127.0.0.1:8080/api",
                    "max_pages": 0,
                    "max_depth": 0,
                    "max_pages_per_host": 10,
                    "max_links_per_page": 20,
                    "max_url_length": 300,
                    "max_api_pages": 7,
                    "allow_private_hosts": ["127.0.0.1:8080", "intranet.local", "[::1]:9000"],
                    "allow_private_addresses": True,
                }
            }
        }
    )["j"]
    spec = crawl_spec(Settings(), job, "r")
    assert (spec.max_pages, spec.max_depth) == (0, 0)  # explicitly unlimited
    s = spec.scrapy_settings
    assert (s["CRAWLSTREAM_MAX_PAGES_PER_HOST"], s["CRAWLSTREAM_MAX_LINKS_PER_PAGE"]) == (10, 20)
    assert s["CRAWLSTREAM_MAX_URL_LENGTH"] == 300
    assert spec.spider_kwargs["max_api_pages"] == 7
    assert spec.allow_private_hosts == ["127.0.0.1:8080", "intranet.local", "[::1]:9000"]
    assert spec.allow_private_addresses is True


@pytest.mark.parametrize("entry", ["127.0.0.1:99999", "host:port", "http://", "a/b", "ftp://x/"])
def test_bad_allow_private_hosts_entries_are_refused_at_load(entry: str) -> None:
    with pytest.raises(ConfigError, match="allow_private_hosts"):
        parse_jobs({"jobs": {"j": {"start_urls": ["http://a/"], "allow_private_hosts": [entry]}}})
