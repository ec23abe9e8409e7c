"""The connect-time guard: Twisted's HostnameEndpoint, resolving through GuardedHostnameResolver,
never connects to a refused address, whatever form it takes and whenever the answer changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from crawlers.resolver import GuardedHostnameResolver, GuardRegistry
from crawlstream.addresses import AddressPolicy


class _SyncPool:
    """A thread pool that runs the work at once (the unit test has no threads)."""

    def callInThreadWithCallback(self, on_result: Callable[..., None], f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class _Reactor(MemoryReactorClock):
    def getThreadPool(self) -> _SyncPool:
        return _SyncPool()

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class _Rebinding:
    """A DNS that answers ``first`` once, then ``then`` (the rebinding attack)."""

    def __init__(self, first: list[str], then: list[str]) -> None:
        self.answers = [first, then]
        self.calls = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return self.answers[min(self.calls - 1, 1)]


def _installed(
    resolver: Callable[[str, int], list[str]], policy: AddressPolicy | None = None
) -> tuple[_Reactor, GuardRegistry]:
    reactor = _Reactor()
    registry = GuardRegistry()
    if policy is not None:
        registry.register(1, policy)
    GuardedHostnameResolver(reactor, resolver, timeout_s=5.0, registry=registry).install_on_reactor()
    return reactor, registry


def _connect(reactor: _Reactor, host: str, port: int) -> list[Any]:
    outcome: list[Any] = []
    endpoint = HostnameEndpoint(reactor, host, port)
    endpoint.connect(Factory.forProtocol(Protocol)).addBoth(outcome.append)
    reactor.advance(1)  # HostnameEndpoint starts its connection attempts on the clock
    return outcome


FORMS = [
    ("127.0.0.1", "loopback"),
    ("127.0.10.2", "loopback"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "ipv4_embedded_loopback"),
    ("::ffff:169.254.169.254", "ipv4_embedded_link_local"),
    ("::127.0.0.1", "ipv4_embedded_loopback"),
    ("2002:7f00:1::1", "ipv4_embedded_loopback"),
    ("2002:a9fe:a9fe::1", "ipv4_embedded_link_local"),
    ("64:ff9b::7f00:1", "ipv4_embedded_loopback"),
    ("::ffff:0:a00:1", "ipv4_embedded_private"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "ipv4_embedded_loopback"),
    ("169.254.169.254", "link_local"),
    ("fe80::1", "link_local"),
    ("100.64.1.1", "shared"),
    ("10.1.2.3", "private"),
    ("192.168.0.1", "private"),
    ("fd00::1", "private"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.251", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
]


@pytest.mark.parametrize(("address", "reason"), FORMS)
def test_no_connection_is_attempted_to_a_refused_address(address: str, reason: str) -> None:
    reactor, registry = _installed(lambda host, port: [address])
    outcome = _connect(reactor, "victim.example", 8080)
    assert reactor.tcpClients == []  # nothing dialled
    assert isinstance(outcome[0], Failure)
    assert outcome[0].check(DNSLookupError)
    assert registry.refusal("victim.example", 8080) == reason


def test_a_public_address_is_connected_to() -> None:
    public = ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]
    reactor, registry = _installed(lambda host, port: public)
    _connect(reactor, "example.com", 443)  # an in-memory reactor: dialling is only recorded
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [(a, 443) for a in public]
    assert registry.refusal("example.com", 443) is None


def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    reactor, registry = _installed(lambda host, port: ["93.184.215.14", "10.0.0.5"])
    _connect(reactor, "mixed.example", 80)
    assert reactor.tcpClients == []
    assert registry.refusal("mixed.example", 80) == "private"


def test_dns_rebinding_is_caught_at_connect_time() -> None:
    # The early check (the downloader middleware) got the public answer; the connect gets loopback.
    dns = _Rebinding(first=["93.184.215.14"], then=["127.0.0.1"])
    assert dns("rebind.example", 80) == ["93.184.215.14"]  # the check's lookup
    reactor, registry = _installed(dns)
    _connect(reactor, "rebind.example", 80)
    assert reactor.tcpClients == []
    assert registry.refusal("rebind.example", 80) == "loopback"


def test_an_allowed_host_is_reached_on_its_own_port_only() -> None:
    policy = AddressPolicy.allowing(["127.0.10.1:8080"])
    reactor, registry = _installed(lambda host, port: ["127.0.10.1"], policy)
    _connect(reactor, "127.0.10.1", 8080)
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("127.0.10.1", 8080)]
    _connect(reactor, "127.0.10.1", 5432)
    assert len(reactor.tcpClients) == 1  # the other port was refused
    assert registry.refusal("127.0.10.1", 5432) == "loopback"


def test_a_failed_lookup_connects_nowhere() -> None:
    def broken(host: str, port: int) -> list[str]:
        raise OSError("Temporary failure in name resolution")

    reactor, _ = _installed(broken)
    outcome = _connect(reactor, "flaky.example", 80)
    assert reactor.tcpClients == []
    assert isinstance(outcome[0], Failure)
    assert outcome[0].check(DNSLookupError)


def test_a_lookup_that_never_answers_times_out_closed() -> None:
    reactor = _Reactor()
    pending: list[Any] = []

    class _Hanging(_SyncPool):
        def callInThreadWithCallback(
            self, on_result: Callable[..., None], f: Any, *a: Any, **kw: Any
        ) -> None:
            pending.append(on_result)  # never answers

    reactor.getThreadPool = lambda: _Hanging()  # type: ignore[method-assign]
    GuardedHostnameResolver(
        reactor, lambda h, p: [], timeout_s=5.0, registry=GuardRegistry()
    ).install_on_reactor()
    outcome: list[Any] = []
    HostnameEndpoint(reactor, "slow-dns.example", 80).connect(Factory.forProtocol(Protocol)).addBoth(
        outcome.append
    )
    assert outcome == []
    reactor.advance(6)
    assert reactor.tcpClients == []
    assert isinstance(outcome[0], Failure)
    assert outcome[0].check(DNSLookupError)


def test_checked_addresses_are_twisted_addresses_on_the_requested_port() -> None:
    resolver = GuardedHostnameResolver(_Reactor(), lambda h, p: [], timeout_s=1.0, registry=GuardRegistry())
    out = resolver.checked("example.com", 8443, ["93.184.215.14", "2606:4700::1111"])
    assert out == [IPv4Address("TCP", "93.184.215.14", 8443), IPv6Address("TCP", "2606:4700::1111", 8443)]
