"""The templates of CONTRIBUTING.md generate code that works: a spider, found and run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import HtmlResponse
from scrapy.utils.test import get_reactor_settings

from crawlers import registry
from crawlstream.records import PageRecord
from crawlstream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "docs" / "templates"


def generate(template: str, target: Path, source: str) -> Path:
    text = (TEMPLATES / template).read_text()
    text = text.replace("__Source__", source.capitalize()).replace("__source__", source)
    target.write_text(text)
    return target


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "scratch_spiders"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_the_spider_template_is_found_lints_clean_and_records_a_page(scratch: Path) -> None:
    module = generate("spider.py", scratch / "wiki.py", "wiki")
    lint = subprocess.run(
        [
            str(Path(sys.executable).parent / "ruff"),
            "check",
            "--config",
            str(ROOT / "pyproject.toml"),
            str(module),
        ],
        capture_output=True,
    )
    assert lint.returncode == 0, lint.stdout.decode()
    cls: Any = registry.spider_class("wiki", ["scratch_spiders"])  # found by Scrapy's loader
    crawler = Crawler(
        cls, {"CRAWLSTREAM_SETTINGS": Settings(), "TELNETCONSOLE_ENABLED": False, **get_reactor_settings()}
    )
    spider = cls.from_crawler(crawler, start_urls="https://wiki.example/start")
    crawler.spider = spider
    crawler._apply_settings()
    assert crawler.stats is not None
    crawler.stats.open_spider()
    url = "https://wiki.example/start"
    response = HtmlResponse(
        url,
        body=b"<html><title>Start</title><p>hi</p></html>",
        headers={"Content-Type": "text/html; charset=utf-8"},
        request=Request(url),
    )
    (record,) = list(spider.parse(response))
    assert isinstance(record, PageRecord)
    assert (record.canonical_url, record.title, record.status) == (url, "Start", 200)
