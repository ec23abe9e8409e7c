"""Ordinary Scrapy items through KafkaPagePipeline: PageRecords, or dead letters, never a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import scrapy
from scrapy.settings import Settings as ScrapySettings

from crawlers.items import UNUSABLE, page_record_from_item
from crawlers.pipelines import STAT_UNUSABLE
from crawlers.settings import crawlstream_settings, scrapy_overrides
from crawlstream.errors import RecordError
from crawlstream.records import DeadLetter, decode_page
from tests.unit.crawlers.test_pipelines import FakeProducer, _pipeline


class ArticleItem(scrapy.Item):
    url = scrapy.Field()
    body = scrapy.Field()
    title = scrapy.Field()
    author = scrapy.Field()  # a field PageRecord does not know


def test_a_dict_with_url_and_text_is_a_page_record() -> None:
    record = page_record_from_item({"url": "HTTP://Example.COM/a?utm_source=x&b=1", "text": "<p>hi</p>"})
    assert record.canonical_url == "http://example.com/a?b=1"  # the record key, canonical
    assert (record.url, record.final_url) == ("HTTP://Example.COM/a?utm_source=x&b=1",) * 2
    assert (record.status, record.body) == (200, "<p>hi</p>")
    assert (datetime.now(UTC) - record.fetched_at).total_seconds() < 60


def test_a_scrapy_item_keeps_the_fields_a_page_record_knows() -> None:
    item = ArticleItem(url="https://example.org/x", body=b"<h1>caf\xc3\xa9</h1>", title="T", author="A")
    record = page_record_from_item(item)
    assert (record.body, record.title) == ("<h1>café</h1>", "T")


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"body": "<p>no url</p>"}, "no 'url'"),
        ({"url": 42}, "no 'url'"),
        ({"url": "https://example.org/", "status": "teapot"}, "status"),
        ("just a string", "not a Scrapy item"),
    ],
)
def test_an_unusable_item_is_a_record_error_saying_why(item: object, says: str) -> None:
    with pytest.raises(RecordError, match=says) as raised:
        page_record_from_item(item)
    assert raised.value.reason == UNUSABLE


def test_the_pipeline_dead_letters_an_unusable_item_and_goes_on() -> None:
    producer = FakeProducer()
    pipeline, stats = _pipeline(producer)
    bad = {"url": "https://example.org/bad", "status": "teapot"}
    assert pipeline.process_item(bad) is bad
    pipeline.process_item({"url": "https://example.org/good", "body": "<p>ok</p>"})
    (letter_topic, letter_key, letter_value), (page_topic, page_key, page_value) = producer.sent
    letter = DeadLetter.model_validate_json(letter_value)
    assert letter_topic == pipeline.dead_letter_topic
    assert (letter.stage, letter.reason) == ("crawl", UNUSABLE)
    assert letter.error_class == "crawlstream.errors.RecordError"
    assert letter_key == b"https://example.org/bad"
    assert json.loads(letter.original_value()) == bad  # the item itself, nothing lost
    assert stats.get_value(STAT_UNUSABLE) == 1
    assert (page_topic, page_key) == ("t.pages.raw", b"https://example.org/good")
    assert decode_page(page_value).body == "<p>ok</p>"


def test_scrapy_settings_named_like_the_variables_are_overrides() -> None:
    settings = ScrapySettings(
        {
            "CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS": "h1:9092",
            "CRAWLSTREAM_CRAWL__MAX_BODY_BYTES": "4096",
            "CRAWLSTREAM_TOPIC": "mine",  # a Scrapy setting of its own
            "BOT_NAME": "x",
        }
    )
    assert scrapy_overrides(settings) == {
        "kafka": {"bootstrap_servers": "h1:9092"},
        "crawl": {"max_body_bytes": "4096"},
    }


def test_project_settings_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("CRAWLSTREAM_KAFKA__TOPIC_PREFIX", "env-prefix")
    settings = crawlstream_settings(ScrapySettings({"CRAWLSTREAM_KAFKA__BOOTSTRAP_SERVERS": "project:9092"}))
    assert settings.kafka.bootstrap_servers == "project:9092"
    assert settings.kafka.topic_prefix == "env-prefix"  # the rest still comes from the environment
