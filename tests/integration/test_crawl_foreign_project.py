"""KafkaPagePipeline in a Scrapy project that is not crawlstream's, against the real Kafka.

The project is what ``scrapy startproject`` makes (scrapy.cfg, a settings module, a spiders
package), written to a scratch directory outside the repository. Its settings.py names the
pipeline in ``ITEM_PIPELINES`` and gives crawlstream's settings as Scrapy settings (no
``CRAWLSTREAM_*`` variable in the environment, no .env in reach). ``scrapy crawl`` there yields a
dict, a ``scrapy.Item`` and an item with no URL: the first two land on ``<prefix>.pages.raw``
as PageRecords, the third on ``<prefix>.deadletter`` with reason ``unusable_item``, and the
crawl finishes normally.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from crawlstream.records import DeadLetter, decode_page
from crawlstream.settings import load_settings
from crawlstream.topics import catalog, ensure_topics
from tests.integration.kafka_read import read_topic

pytestmark = pytest.mark.integration

SETTINGS = """
BOT_NAME = "foreign"
SPIDER_MODULES = ["foreign.spiders"]
NEWSPIDER_MODULE = "foreign.spiders"
ROBOTSTXT_OBEY = True
ITEM_PIPELINES = {{"crawlers.pipelines.KafkaPagePipeline": 300}}
CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS = "{bootstrap}"
CRAWLSTREAM_KAFKA__TOPIC_PREFIX = "{prefix}"
"""

SPIDER = """
import scrapy


class Article(scrapy.Item):
    url = scrapy.Field()
    body = scrapy.Field()
    title = scrapy.Field()


class ItemsSpider(scrapy.Spider):
    name = "items"

    async def start(self):
        yield {"url": "https://foreign.example/a", "text": "<p>a dict</p>"}
        yield Article(url="https://foreign.example/b", body="<p>an Item</p>", title="B")
        yield {"headline": "no url at all"}
"""


def test_a_foreign_scrapy_project_uses_the_pipeline_through_its_settings(tmp_path: Path) -> None:
    settings = load_settings()
    prefix = f"it-foreign-{uuid.uuid4().hex[:8]}"
    ours = load_settings(kafka={"topic_prefix": prefix})
    ensure_topics(ours)
    project = tmp_path / "foreign"
    (project / "foreign" / "spiders").mkdir(parents=True)
    (project / "scrapy.cfg").write_text("[settings]\ndefault = foreign.settings\n")
    (project / "foreign" / "__init__.py").write_text("")
    (project / "foreign" / "spiders" / "__init__.py").write_text("")
    (project / "foreign" / "settings.py").write_text(
        SETTINGS.format(bootstrap=settings.kafka.bootstrap_servers, prefix=prefix)
    )
    (project / "foreign" / "spiders" / "items.py").write_text(textwrap.dedent(SPIDER))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLSTREAM_")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "scrapy"), "crawl", "items"],
        cwd=project,
        env=env,
        capture_output=True,
        timeout=300,
    )
    log = out.stderr.decode(errors="replace")
    assert out.returncode == 0, log[-3000:]
    assert "'finish_reason': 'finished'" in log
    topics = catalog(ours)
    pages = {key: decode_page(value) for key, value in read_topic(ours, topics.raw_pages.name)}
    assert sorted(pages) == [b"https://foreign.example/a", b"https://foreign.example/b"]
    assert pages[b"https://foreign.example/a"].body == "<p>a dict</p>"
    assert pages[b"https://foreign.example/b"].title == "B"
    letters = [DeadLetter.model_validate_json(v) for _, v in read_topic(ours, topics.dead_letter.name)]
    assert [(letter.stage, letter.reason) for letter in letters] == [("crawl", "unusable_item")]
    assert b"no url at all" in (letters[0].original_value() or b"")
