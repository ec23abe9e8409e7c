"""The crawl's guard: every address form and scheme refused before any I/O, counted by reason;
an allowed host on its own port only; lookups fail closed; what the download handler raises on
purpose (a refused connect-time lookup, an oversized body) becomes a counted refusal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from scrapy import Request, Spider
from scrapy.exceptions import CannotResolveHostError, DownloadCancelledError, DownloadTimeoutError
from scrapy.http import HtmlResponse, Response
from scrapy.utils.test import get_crawler

from crawlers import metrics
from crawlers.middlewares import OVERSIZE, AddressGuardMiddleware, RefusalClassifierMiddleware
from crawlers.refusals import STAT_PREFIX, Refused
from crawlers.resolver import GuardRegistry
from crawlers.scope import CrawlScope, compile_patterns
from crawlstream.addresses import AddressPolicy, resolve
from crawlstream.settings import CrawlSettings, Settings


class StubResolver:
    """The resolver interface (host, port) -> addresses; unknown names fail like getaddrinfo."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host in self.table:
            return self.table[host]
        return resolve(host, port) if host[0].isdigit() else _fail(host)


def _fail(host: str) -> list[str]:
    raise OSError(f"Name or service not known: {host}")


class _Spider(Spider):
    name = "guarded"
    allowed_domains: list[str] | None = None


def _guard(
    resolver: StubResolver | None = None,
    *,
    allowed: tuple[str, ...] = (),
    allow_all: bool = False,
    domains: list[str] | None = None,
) -> tuple[AddressGuardMiddleware, Any, GuardRegistry]:
    crawler = get_crawler(_Spider, settings_dict={"CRAWLSTREAM_SETTINGS": Settings()})
    crawler.spider = _Spider()
    crawler.spider.allowed_domains = domains
    registry = GuardRegistry()
    policy = AddressPolicy.allowing(allowed, allow_all=allow_all)
    guard = AddressGuardMiddleware(crawler, policy, resolver or StubResolver({}), registry)
    return guard, crawler.stats, registry


def _check(guard: AddressGuardMiddleware, url: str) -> None:
    asyncio.run(guard.process_request(Request(url)))


# Each URL with the reason it is refused for; numeric forms (decimal, octal, hex, short) are
# names to Twisted and go through the resolver (getaddrinfo reads them as 127.0.0.1).
REFUSED = [
    ("http://127.0.0.1:8000/", "loopback"),
    ("http://127.10.20.30/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "ipv4_embedded_loopback"),
    ("http://[::ffff:7f00:1]/", "ipv4_embedded_loopback"),
    ("http://[::127.0.0.1]/", "ipv4_embedded_loopback"),
    ("http://[2002:7f00:1::]/", "ipv4_embedded_loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "ipv4_embedded_link_local"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "ipv4_embedded_loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link_local"),
    ("http://[fe80::1]/", "link_local"),
    ("http://100.64.0.1/", "shared"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://192.0.0.8/", "special"),
    ("file:///etc/passwd", "scheme"),
    ("ftp://127.0.0.1/x", "scheme"),
    ("gopher://127.0.0.1:70/_x", "scheme"),
    ("data:text/html,<h1>x</h1>", "scheme"),
    ("http:///nohost", "no_host"),
    ("http://example.com/" + "x" * 3000, "url_too_long"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_every_form_is_refused_with_its_reason_and_counted(url: str, reason: str) -> None:
    guard, stats, _ = _guard()
    before = metrics.REFUSED.labels(reason)._value.get()
    with pytest.raises(Refused) as info:
        _check(guard, url)
    assert info.value.reason == reason
    assert stats.get_value(STAT_PREFIX + reason) == 1
    assert metrics.REFUSED.labels(reason)._value.get() == before + 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        # Scrapy cannot even build a Request for these; links and CrawlRequests carry them.
        ("javascript:alert(1)", "scheme"),
        ("mailto:someone@example.org", "scheme"),
        ("http://example.com:99999/", "invalid_url"),
        ("http://[::1/", "invalid_url"),
        ("http://example.com/" + "x" * 2030, "url_too_long"),
        ("http://example.com/private/x", "filtered"),
        ("http://other.example/x", "offsite"),
    ],
)
def test_the_scope_refuses_links_scrapy_cannot_request(url: str, reason: str) -> None:
    scope = CrawlScope(allowed_domains=["example.com"], deny=compile_patterns(["/private/"]))
    assert scope.refusal(url, link=True) == reason
    assert scope.refusal("http://www.example.com/ok", link=True) is None


def test_allowed_host_is_allowed_on_its_own_port_only() -> None:
    guard, _stats, _ = _guard(allowed=("127.0.10.1:8080",))
    _check(guard, "http://127.0.10.1:8080/page")
    with pytest.raises(Refused, match="loopback"):
        _check(guard, "http://127.0.10.1:8081/page")  # same host, another port
    with pytest.raises(Refused, match="loopback"):
        _check(guard, "http://127.0.10.2:8080/page")  # another host, same port


def test_a_name_resolving_to_any_private_address_is_refused_and_resolved_once() -> None:
    resolver = StubResolver({"intranet.example": ["93.184.215.14", "10.0.0.5"]})
    guard, stats, _ = _guard(resolver)
    for url in ("http://intranet.example/robots.txt", "http://INTRANET.example/page"):
        with pytest.raises(Refused, match="private"):
            _check(guard, url)
    assert resolver.calls == [("intranet.example", 80)]
    assert stats.get_value(STAT_PREFIX + "private") == 2


def test_public_name_passes() -> None:
    guard, stats, _ = _guard(StubResolver({"example.com": ["93.184.215.14"]}))
    _check(guard, "https://example.com/")
    assert not [k for k in stats.get_stats() if k.startswith(STAT_PREFIX)]


def test_lookup_failure_fails_closed_as_a_dns_error_and_is_not_cached() -> None:
    resolver = StubResolver({})
    guard, _, _ = _guard(resolver)
    for _ in range(2):
        with pytest.raises(CannotResolveHostError):
            _check(guard, "http://no-such-host.invalid/")
    assert len(resolver.calls) == 2  # a retry looks up again


def test_allow_all_turns_the_address_check_off_but_not_the_scheme_check() -> None:
    resolver = StubResolver({})
    guard, _, _ = _guard(resolver, allow_all=True)
    _check(guard, "http://10.0.0.1/")
    assert resolver.calls == []
    with pytest.raises(Refused, match="scheme"):
        _check(guard, "file:///etc/passwd")


def test_offsite_redirect_hops_are_refused() -> None:
    guard, stats, _ = _guard(StubResolver({"docs.example.org": ["93.184.215.14"]}), domains=["example.org"])
    _check(guard, "http://docs.example.org/a")
    with pytest.raises(Refused, match="offsite"):
        _check(guard, "http://example.net/a")
    assert stats.get_value(STAT_PREFIX + "offsite") == 1


def test_from_crawler_reads_the_allow_list_and_registers_the_policy_until_close() -> None:
    from crawlers.resolver import REGISTRY

    crawler = get_crawler(
        _Spider,
        settings_dict={
            "CRAWLSTREAM_SETTINGS": Settings(crawl=CrawlSettings(allow_private_addresses=False)),
            "CRAWLSTREAM_ALLOW_PRIVATE_HOSTS": "a.local:8080,http://b.local:9000/x",
        },
    )
    guard = AddressGuardMiddleware.from_crawler(crawler)
    assert guard.policy.allowed == {("a.local", 8080), ("b.local", 9000)}
    assert not guard.policy.allow_all
    assert REGISTRY.policy().exempts("a.local", 8080)
    assert not REGISTRY.policy().exempts("a.local", 8081)
    guard.spider_closed()
    assert not REGISTRY.policy().exempts("a.local", 8080)


def test_allow_private_addresses_setting_turns_the_check_off() -> None:
    crawler = get_crawler(
        _Spider,
        settings_dict={"CRAWLSTREAM_SETTINGS": Settings(crawl=CrawlSettings(allow_private_addresses=True))},
    )
    guard = AddressGuardMiddleware.from_crawler(crawler)
    assert guard.policy.allow_all
    guard.spider_closed()


# What the download handler raises on purpose.
def _classifier(maxsize: int = 1000) -> tuple[RefusalClassifierMiddleware, Any, GuardRegistry]:
    crawler = get_crawler(_Spider, settings_dict={"DOWNLOAD_MAXSIZE": maxsize})
    registry = GuardRegistry()
    return RefusalClassifierMiddleware(crawler, registry), crawler.stats, registry


def test_a_lookup_the_resolver_refused_becomes_a_counted_refusal_not_a_retry() -> None:
    mw, stats, registry = _classifier()
    registry.refused("rebind.example", 8080, "loopback")
    with pytest.raises(Refused, match="loopback"):
        mw.process_exception(Request("http://rebind.example:8080/x"), CannotResolveHostError("no results"))
    assert stats.get_value(STAT_PREFIX + "loopback") == 1
    # Another port of that host, or a real DNS failure, stays a DNS failure (retried).
    assert mw.process_exception(Request("http://rebind.example/x"), CannotResolveHostError("x")) is None


def test_an_oversized_download_becomes_response_too_large() -> None:
    mw, stats, _ = _classifier(maxsize=1000)
    streamed = Request("http://example.com/huge")
    mw.bytes_received(b"x" * 600, streamed)
    mw.bytes_received(b"x" * 600, streamed)
    assert streamed.meta[OVERSIZE] == 1200
    with pytest.raises(Refused, match="response_too_large"):
        mw.process_exception(streamed, DownloadCancelledError())
    announced = Request("http://example.com/huge2")
    mw.headers_received(None, 5000, announced)  # type: ignore[arg-type]
    with pytest.raises(Refused):
        mw.process_exception(announced, DownloadCancelledError("expected size"))
    assert stats.get_value(STAT_PREFIX + "response_too_large") == 2
    unknown = Request("http://example.com/chunked")
    mw.headers_received(None, "twisted.web.iweb.UNKNOWN_LENGTH", unknown)  # type: ignore[arg-type]
    assert OVERSIZE not in unknown.meta
    # A cancellation for another reason, and a timeout, are left alone.
    assert mw.process_exception(unknown, DownloadCancelledError()) is None
    assert mw.process_exception(unknown, DownloadTimeoutError()) is None


def test_redirects_to_other_schemes_are_counted() -> None:
    mw, stats, _ = _classifier()
    request = Request("http://example.com/r")
    for location in (b"file:///etc/passwd", b"javascript:alert(1)", b"/fine", b"https://example.org/"):
        response = Response(request.url, status=302, headers={"Location": location}, request=request)
        assert mw.process_response(request, response) is response
    ok = HtmlResponse(request.url, status=200, body=b"<html></html>", request=request)
    mw.process_response(request, ok)
    assert stats.get_value(STAT_PREFIX + "scheme") == 2


def test_the_scope_judges_a_host_once_but_every_url_and_link_on_its_own() -> None:
    scope = CrawlScope(allowed_domains=["example.com"], deny=compile_patterns(["/private/"]))
    assert scope.check("http://Example.COM/a", link=True) == (None, "example.com")
    # Same scheme and netloc, so the host's verdict is remembered: the URL's own rules still apply.
    assert scope.check("http://Example.COM/private/b", link=True) == ("filtered", "example.com")
    assert scope.check("http://Example.COM/private/b", link=False) == (None, "example.com")
    assert scope.check("http://Example.COM/" + "x" * 3000, link=True) == ("url_too_long", "")
    for _ in range(2):  # a refused netloc stays refused when asked again
        assert scope.check("http://example.com:99999/", link=True) == ("invalid_url", "")
        assert scope.check("http://other.example/x", link=True) == ("offsite", "other.example")
        assert scope.check("ftp://example.com/x", link=True) == ("scheme", "")


def test_the_scope_forgets_hosts_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crawlers.scope.MAX_REMEMBERED_HOSTS", 3)
    scope = CrawlScope()
    for n in range(10):
        assert scope.check(f"http://host{n}.example/", link=True) == (None, f"host{n}.example")
        assert len(scope._hosts) <= 3
