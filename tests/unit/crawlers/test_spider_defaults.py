"""The crawl's defaults live in one place (``crawl.*`` settings): no spider carries its own copy."""

from __future__ import annotations

import inspect

import pytest

from crawlers import registry
from crawlers.spiders.site import SiteSpider
from crawlstream.settings import DEFAULT_MAX_BODY_BYTES, CrawlSettings


@pytest.mark.parametrize("name", registry.spider_names())
def test_no_spider_has_a_body_cap_default_of_its_own(name: str) -> None:
    parameter = inspect.signature(registry.spider_class(name).__init__).parameters.get("max_body_bytes")
    assert parameter is not None, f"{name} takes no max_body_bytes argument"
    assert parameter.default is None, f"{name} defaults max_body_bytes to {parameter.default!r}"


def test_a_spider_built_without_a_cap_takes_the_settings_default() -> None:
    assert CrawlSettings().max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert SiteSpider(start_urls="https://example.com/").max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert SiteSpider(start_urls="https://example.com/", max_body_bytes="4096").max_body_bytes == 4096
