"""The crawl stage: a Scrapy project whose spiders produce PageRecords to ``<prefix>.pages.raw``.

Imports the shared core (``crawlstream``) only; never streams or sinks. Entry points:
``python -m crawlers crawl`` (one crawl per process, see :mod:`crawlers.runner`) and
``scrapy crawl site`` from the repo root.
"""
