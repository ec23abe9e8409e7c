"""Spiders are found by Scrapy's SpiderLoader: a new module is a new spider and a new job source."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crawlers import registry
from crawlers import settings as project_settings
from crawlers.jobs import parse_jobs
from crawlers.spiders.feed import FeedSpider
from crawlstream.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ["api", "distributed", "feed", "site", "sitemap"]


@pytest.fixture
def extra_spiders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package with a spider a newcomer added, and one that forgot the recording mixin."""
    package = tmp_path / "extra_spiders"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wiki.py").write_text(
        textwrap.dedent(
            """
            from scrapy import Spider
            from crawlers.spiders.common import RecordingMixin

            class WikiSpider(RecordingMixin, Spider):
                name = "wiki"
            """
        )
    )
    (package / "bare.py").write_text(
        "from scrapy import Spider\n\nclass BareSpider(Spider):\n    name = 'bare'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "extra_spiders"


def test_the_shipped_spiders_are_found() -> None:
    assert registry.spider_names() == SHIPPED
    assert registry.spider_class("feed") is FeedSpider


def test_scrapy_list_from_the_repository_lists_them() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "scrapy"), "list"],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.decode().split() == SHIPPED


def test_a_new_spider_module_is_found_without_editing_anything(extra_spiders: str) -> None:
    cls = registry.spider_class("wiki", [extra_spiders])
    assert (cls.__name__, cls.name) == ("WikiSpider", "wiki")


def test_unknown_names_and_spiders_without_the_mixin_are_refused(extra_spiders: str) -> None:
    with pytest.raises(ConfigError, match=r"no spider named 'nope' \(known: bare, wiki\)"):
        registry.spider_class("nope", [extra_spiders])
    with pytest.raises(ConfigError, match=r"'bare'.*does not use crawlers\.spiders\.common\.RecordingMixin"):
        registry.spider_class("bare", [extra_spiders])


def test_a_job_source_is_any_loaded_spider(extra_spiders: str, monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"jobs": {"w": {"source": "wiki", "start_urls": ["https://example.org/"]}}}
    known = "api, feed, frontier, site, sitemap"
    with pytest.raises(ConfigError, match=rf"unknown source 'wiki'; known: {known}"):
        parse_jobs(job)
    monkeypatch.setattr(project_settings, "SPIDER_MODULES", [*project_settings.SPIDER_MODULES, extra_spiders])
    spec = parse_jobs(job)["w"]
    assert (spec.source, spec.seed_urls()) == ("wiki", ["https://example.org/"])
    with pytest.raises(ConfigError, match="needs start_urls"):
        parse_jobs({"jobs": {"w": {"source": "wiki"}}})


def test_the_distributed_spider_is_not_a_job_source() -> None:
    with pytest.raises(ConfigError, match="unknown source 'distributed'"):
        parse_jobs({"jobs": {"d": {"source": "distributed", "start_urls": ["https://example.org/"]}}})
