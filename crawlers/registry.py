"""The crawl stage's spiders, found by Scrapy's SpiderLoader: no list to edit when one is added.

A spider is one module in ``crawlers/spiders/`` (``SPIDER_MODULES`` of :mod:`crawlers.settings`)
with a unique ``name``; ``scrapy list``, ``scrapy crawl NAME``, the runner and a job's ``source``
all find it through :func:`spider_class`. A spider the runner or a job runs must record its pages
the crawl stage's way (:class:`crawlers.spiders.common.RecordingMixin`: job settings, counting,
body caps, dead letters): :func:`spider_class` refuses one that does not, naming it.
"""

from __future__ import annotations

from typing import Any

from scrapy import Spider
from scrapy.settings import Settings as ScrapySettings
from scrapy.spiderloader import SpiderLoader

from crawlers import settings as project_settings
from crawlers.spiders.common import RecordingMixin
from crawlstream.errors import ConfigError

# Sources that are modes of the runner, not spiders (a frontier job runs the "requests" spider).
RUNNER_MODES = frozenset({"frontier"})


def spider_loader(spider_modules: list[str] | None = None) -> Any:
    """Scrapy's loader over the project's ``SPIDER_MODULES`` (or the modules given)."""
    settings = ScrapySettings()
    settings.set("SPIDER_MODULES", spider_modules or project_settings.SPIDER_MODULES)
    return SpiderLoader.from_settings(settings)


def spider_names(spider_modules: list[str] | None = None) -> list[str]:
    """The names of every spider the loader finds, sorted."""
    return sorted(spider_loader(spider_modules).list())


def spider_class(name: str, spider_modules: list[str] | None = None) -> type[Spider]:
    """The spider called ``name``; ConfigError naming the known ones if there is none, or if it
    does not record pages the crawl stage's way."""
    loader = spider_loader(spider_modules)
    try:
        cls: type[Spider] = loader.load(name)
    except KeyError:
        known = ", ".join(sorted(loader.list())) or "none"
        raise ConfigError(f"no spider named {name!r} (known: {known})") from None
    if not issubclass(cls, RecordingMixin):
        raise ConfigError(
            f"spider {name!r} ({cls.__module__}.{cls.__qualname__}) does not use "
            "crawlers.spiders.common.RecordingMixin, which records its pages for the crawl stage"
        )
    return cls
