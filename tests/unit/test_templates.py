"""The templates of CONTRIBUTING.md generate code that works: a spider, found and run; an agent,
registered on the stage's app and run through the agent boundary (tests/unit/streams/harness.py)."""

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
    title = "".join(part.capitalize() for part in source.split("_"))
    text = text.replace("__Source__", title).replace("__source__", source)
    text = text.replace("__Agent__", title).replace("__agent__", source)
    text = text.replace("__Technology__", title).replace("__technology__", source)
    target.write_text(text)
    return target


def lint(module: Path) -> None:
    """ruff, with the project's rules, has nothing to say about the generated module."""
    ruff = str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "--config", str(ROOT / "pyproject.toml"), str(module)], capture_output=True
    )
    assert result.returncode == 0, result.stdout.decode()


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


def test_the_agent_template_runs_through_the_boundary_keeps_its_table_and_dead_letters(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import importlib.util
    from unittest.mock import MagicMock

    from crawlstream.records import DeadLetter, Enrichment, PageEvent
    from tests.unit.streams.harness import Harness, close_apps, page, put, tracked

    module_path = generate("agent.py", scratch / "host_pages.py", "host_pages")
    lint(module_path)
    spec = importlib.util.spec_from_file_location("scratch_host_pages", module_path)
    assert spec is not None
    assert spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "scratch_host_pages", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.AGENT == "host_pages"
    assert module.counted(None, None) == 1  # the plain decision
    assert module.counted(4, None) == 5

    async def main() -> Harness:
        h = Harness(extra=module.register)
        tracked(h.app)
        h.extra.pages.changelog_topic.send_soon = MagicMock()
        channel = h.app.channel(key_type=bytes, value_type=bytes)
        async with h.extra.agent.test_context(channel=channel) as agent:
            for url in ("https://a.example/1", "https://a.example/2", "https://b.example/1"):
                event = PageEvent(change="new", page=page(url), enrichment=Enrichment())
                await put(agent, event.to_bytes(), url.encode())
            await put(agent, b"{not json", b"https://a.example/3")
        assert (h.extra.pages.get("a.example"), h.extra.pages.get("b.example")) == (2, 1)
        return h

    try:
        h = asyncio.run(main())
    finally:
        close_apps()
    letters = [DeadLetter.model_validate_json(value) for _, value in h.on("dead_letter")]
    assert [(d.stage, d.reason, d.source_offset) for d in letters] == [("streams", "invalid_event", 3)]
    assert h.crashes == []


def load(module_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, module_path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_the_sink_template_honours_the_sink_contract_through_the_sink_worker(
    scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client import CollectorRegistry

    from crawlstream.records import DeadLetter
    from sinks.base import SinkBatch, SinkRecord
    from sinks.families import FAMILIES
    from sinks.metrics import SinkMetrics
    from sinks.worker import SinkWorker
    from tests.unit.sinks.conftest import GROUP, UNIQUE, Rig, page

    module_path = generate("sink.py", scratch / "jsonfile.py", "jsonfile")
    lint(module_path)
    module = load(module_path, "scratch_jsonfile", monkeypatch)
    store = tmp_path / "store"
    store.mkdir()

    def worker_over(rig: Rig, sink: Any) -> SinkWorker:
        return SinkWorker(
            rig.settings,
            FAMILIES["pages"],
            sink,
            rig.consumer,
            rig.producer,
            SinkMetrics(CollectorRegistry()),  # the rig's own worker holds its registry
            clock=rig.clock,
        )

    rig = Rig(batch_size=2)
    urls = [f"https://a.test/{i}" for i in range(3)]
    for url in urls:
        rig.consumer.append(0, page(url).to_bytes(), key=url.encode())
    rig.consumer.append(0, b"{not json", key=b"https://a.test/bad")
    worker_over(rig, module.JsonfileSink(store)).run(max_idle_s=5)

    reopened = module.JsonfileSink(store)  # what a restarted worker finds
    reopened.open()
    assert sorted(reopened.pages) == urls
    assert reopened.stored_offsets(GROUP, UNIQUE) == {0: 4}  # past the record it dead-lettered
    letters = [
        DeadLetter.model_validate_json(v or b"") for t, v, _k in rig.producer.delivered if t == "t.deadletter"
    ]
    assert [(d.reason, d.source_offset) for d in letters] == [("invalid_json", 3)]  # not lost either
    # A replay of stored records (a crash before Kafka's commit) stores nothing twice, and a record
    # whose content changed is stored once.
    again = SinkBatch(GROUP, [SinkRecord(_event(urls[0]), UNIQUE, 0, 0)])
    assert reopened.write(again) == 0
    changed = SinkBatch(GROUP, [SinkRecord(_event(urls[0], title="New"), UNIQUE, 0, 4)], {(UNIQUE, 0): 5})
    assert (
        reopened.write(SinkBatch(GROUP, [SinkRecord(_event(urls[1], title="Old"), UNIQUE, 0, 2)])) == 0
    )  # fenced
    assert reopened.write(changed) == 1
    assert reopened.stored_offsets(GROUP, UNIQUE) == {0: 5}


def _event(url: str, **fields: Any) -> Any:
    from crawlstream.records import PageEvent
    from tests.unit.sinks.conftest import page

    return PageEvent(change="new", page=page(url, **fields))
