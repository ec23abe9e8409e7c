from __future__ import annotations

import asyncio
import logging

import pytest
from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.test import get_crawler

from crawlers import metrics
from crawlers.middlewares import STAT_REFUSED, PrivateAddressGuardMiddleware, is_forbidden_address
from crawlstream.settings import CrawlSettings, Settings


class StubResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(f"cannot resolve {host}")
        return self.table[host]


def _guard(
    resolver: StubResolver, *, allow_all: bool = False, hosts: tuple[str, ...] = ()
) -> tuple[PrivateAddressGuardMiddleware, dict[str, int]]:
    stats = get_crawler().stats
    guard = PrivateAddressGuardMiddleware(
        allow_all=allow_all, allowed_hosts=hosts, stats=stats, resolver=resolver
    )
    return guard, stats.get_stats()


def _check(guard: PrivateAddressGuardMiddleware, url: str) -> None:
    asyncio.run(guard.process_request(Request(url)))


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.4", "169.254.169.254", "::1", "fe80::1%eth0",
     "224.0.0.1", "0.0.0.0", "240.0.0.1", "::ffff:127.0.0.1", "fc00::1"],
)  # fmt: skip
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "1.1.1.1"])
def test_public_addresses_pass(address: str) -> None:
    assert not is_forbidden_address(address)


def test_private_host_refused_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    resolver = StubResolver({"intranet.example": ["93.184.215.14", "10.0.0.5"]})
    guard, stats = _guard(resolver)
    before = metrics.PRIVATE_REFUSED._value.get()

    with caplog.at_level(logging.WARNING), pytest.raises(IgnoreRequest, match=r"10\.0\.0\.5"):
        _check(guard, "http://intranet.example/robots.txt")
    with pytest.raises(IgnoreRequest):
        _check(guard, "http://INTRANET.example:8080/page")

    assert stats[STAT_REFUSED] == 2
    assert metrics.PRIVATE_REFUSED._value.get() == before + 2
    assert resolver.calls == ["intranet.example"]  # resolved once per host
    assert "intranet.example" in caplog.text


def test_public_host_passes() -> None:
    guard, stats = _guard(StubResolver({"example.com": ["93.184.215.14"]}))
    _check(guard, "https://example.com/")
    assert STAT_REFUSED not in stats


def test_literal_loopback_refused_unless_allow_listed() -> None:
    resolver = StubResolver({"127.0.0.1": ["127.0.0.1"], "localhost": ["127.0.0.1", "::1"]})
    guard, _ = _guard(resolver, hosts=("127.0.0.1",))
    _check(guard, "http://127.0.0.1:8000/index.html")
    with pytest.raises(IgnoreRequest):
        _check(guard, "http://localhost:8000/index.html")  # a redirect hop to another name is checked again


def test_allow_all_setting_disables_the_guard() -> None:
    resolver = StubResolver({})
    guard, _ = _guard(resolver, allow_all=True)
    _check(guard, "http://10.0.0.1/")
    assert resolver.calls == []


def test_unresolvable_host_is_left_to_the_downloader() -> None:
    guard, stats = _guard(StubResolver({}))
    _check(guard, "http://no-such-host.invalid/")
    assert STAT_REFUSED not in stats


def test_from_crawler_reads_settings() -> None:
    crawler = get_crawler(
        settings_dict={
            "CRAWLSTREAM_SETTINGS": Settings(crawl=CrawlSettings(allow_private_addresses=True)),
            "CRAWLSTREAM_ALLOW_PRIVATE_HOSTS": "a.local,B.local",
        }
    )
    guard = PrivateAddressGuardMiddleware.from_crawler(crawler)
    assert guard.allow_all
    assert guard.allowed_hosts == {"a.local", "b.local"}
