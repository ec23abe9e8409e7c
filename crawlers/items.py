"""Ordinary Scrapy items as PageRecords: what :class:`crawlers.pipelines.KafkaPagePipeline` takes
from any Scrapy project.

A project that did not come from crawlstream yields dicts, ``scrapy.Item``s, dataclasses or attrs
objects (anything :class:`itemadapter.ItemAdapter` reads) with a ``url`` and the page as ``body``
(HTML) or ``text``; every other :class:`~crawlstream.records.PageRecord` field it carries
(``status``, ``title``, ``fetched_at``, ``canonical_url``, ...) is used, fields the record does
not know are ignored. Left out: ``canonical_url`` is the URL's canonical form
(:func:`crawlstream.urls.canonical_url`, the record key), ``final_url`` the URL, ``status`` 200,
``fetched_at`` now. An item it cannot use raises RecordError ``unusable_item`` naming what is
wrong; the pipeline dead-letters it (the crawl goes on).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from itemadapter import ItemAdapter
from pydantic import ValidationError

from crawlstream.errors import RecordError
from crawlstream.records import PageRecord
from crawlstream.urls import canonical_url

UNUSABLE = "unusable_item"


def page_record_from_item(item: Any) -> PageRecord:
    """The PageRecord of a Scrapy item (a PageRecord is returned as it is)."""
    if isinstance(item, PageRecord):
        return item
    if not ItemAdapter.is_item(item):
        raise RecordError(UNUSABLE, f"{type(item).__name__} is not a Scrapy item (dict, Item, dataclass...)")
    fields = dict(ItemAdapter(item).items())
    url = fields.get("url")
    if not isinstance(url, str) or not url:
        raise RecordError(UNUSABLE, f"item has no 'url' string (fields: {sorted(fields)[:20]})")
    body = fields.get("body", fields.get("text", ""))
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    known = {name: value for name, value in fields.items() if name in PageRecord.model_fields}
    try:
        canonical = known.get("canonical_url") or canonical_url(url)
        return PageRecord.model_validate(
            {
                "final_url": url,
                "status": 200,
                "fetched_at": datetime.now(UTC),
                **known,
                "canonical_url": canonical,
                "body": body,
            }
        )
    except (ValidationError, ValueError) as exc:
        raise RecordError(UNUSABLE, f"item for {url[:200]!r} is not a page record: {exc}") from exc
