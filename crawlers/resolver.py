"""The address guard at connect time: a Twisted name resolver that hands out checked addresses only.

Scrapy's HTTP/1.1 download handler connects through Twisted's ``HostnameEndpoint``, which asks
the reactor's ``IHostnameResolver`` for the addresses of the URL's host (IP literals and odd forms
such as ``2130706433`` or ``0177.0.0.1`` included: it has no shortcut for them) and connects to
exactly those. :class:`GuardedHostnameResolver`, installed as Scrapy's ``TWISTED_DNS_RESOLVER``,
resolves with the blocking resolver named by ``CRAWLSTREAM_RESOLVER`` (default
:func:`crawlstream.addresses.resolve`, i.e. ``getaddrinfo``) in the reactor's thread pool, checks
every address against the crawl's :class:`~crawlstream.addresses.AddressPolicy`, and hands Twisted
no address at all when one is refused. A connection therefore only ever goes to an address that
was checked in the same lookup: a DNS answer that changes between an earlier check and the connect
(DNS rebinding) is caught. A lookup that fails or times out (``DNS_TIMEOUT``) yields no address
either (fail closed). The reactor's simple resolver (``reactor.resolve``, used to reach a proxy)
is this one too, with port 0: a proxy must have a public address.

The resolver is the process's (one reactor per process) and is built from the process settings,
so the crawls running in the process register their policies in :data:`REGISTRY`
(:class:`crawlers.middlewares.AddressGuardMiddleware` does); the resolver applies their union. It
remembers each refusal by (host, port) so that :class:`crawlers.middlewares.RefusalClassifierMiddleware`
turns the lookup error Twisted then raises into a counted :class:`~crawlers.refusals.Refused`
instead of a retried DNS failure. No topic is read or written here.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from scrapy.utils.misc import load_object
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer  # type: ignore[import-untyped]

from crawlstream.addresses import AddressPolicy, AddressRefused, parse_address

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]
DEFAULT_RESOLVER = "crawlstream.addresses.resolve"
MAX_REMEMBERED = 4096


class GuardRegistry:
    """The address policies of the crawls in this process and the refusals the resolver made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[int, AddressPolicy] = {}
        self._refusals: OrderedDict[tuple[str, int], str] = OrderedDict()

    def register(self, key: int, policy: AddressPolicy) -> None:
        with self._lock:
            self._policies[key] = policy

    def unregister(self, key: int) -> None:
        with self._lock:
            self._policies.pop(key, None)

    def policy(self) -> AddressPolicy:
        """The union of the registered policies (nothing registered: only public addresses)."""
        with self._lock:
            policies = list(self._policies.values())
        combined = AddressPolicy()
        for policy in policies:
            combined = combined.union(policy)
        return combined

    def refused(self, host: str, port: int, reason: str) -> None:
        with self._lock:
            self._refusals[(host.lower(), port)] = reason
            self._refusals.move_to_end((host.lower(), port))
            while len(self._refusals) > MAX_REMEMBERED:
                self._refusals.popitem(last=False)

    def allowed(self, host: str, port: int) -> None:
        with self._lock:
            self._refusals.pop((host.lower(), port), None)

    def refusal(self, host: str, port: int) -> str | None:
        """Why the last lookup of (host, port) was refused, if it was."""
        with self._lock:
            return self._refusals.get((host.strip("[]").lower(), port))


REGISTRY = GuardRegistry()


def load_resolver(settings: Any) -> Resolver:
    """The blocking resolver ``CRAWLSTREAM_RESOLVER`` names (tests inject fakes this way)."""
    resolver: Resolver = load_object(settings.get("CRAWLSTREAM_RESOLVER") or DEFAULT_RESOLVER)
    return resolver


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:  # Twisted never cancels a HostnameEndpoint lookup
        pass


@implementer(IHostnameResolver)
class GuardedHostnameResolver:
    def __init__(
        self, reactor: Any, resolver: Resolver, timeout_s: float, registry: GuardRegistry = REGISTRY
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.timeout_s = timeout_s
        self.registry = registry

    @classmethod
    def from_crawler(cls, crawler: Any, reactor: Any) -> GuardedHostnameResolver:
        # Scrapy passes the CrawlerProcess here: only its (process) settings exist.
        return cls(reactor, load_resolver(crawler.settings), crawler.settings.getfloat("DNS_TIMEOUT", 60.0))

    def install_on_reactor(self) -> None:
        self.reactor.installNameResolver(self)

    def resolveHostName(
        self,
        resolutionReceiver: Any,  # an IResolutionReceiver provider
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[Any]] | None = None,
        transportSemantics: str = "TCP",
    ) -> Any:  # an IHostResolution provider
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        lookup = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self.resolver, hostName, portNumber
        )
        lookup.addTimeout(self.timeout_s, self.reactor)

        def deliver(addresses: list[str]) -> None:
            try:
                for address in self.checked(hostName, portNumber, addresses):
                    if addressTypes is None or type(address) in addressTypes:
                        resolutionReceiver.addressResolved(address)
            finally:
                resolutionReceiver.resolutionComplete()

        def failed(failure: Any) -> None:
            log.debug("lookup of %s failed: %s", hostName, failure.getErrorMessage())
            resolutionReceiver.resolutionComplete()  # no address: the connection fails (closed)

        lookup.addCallbacks(deliver, failed)
        return resolution

    def checked(self, host: str, port: int, addresses: list[str]) -> list[IPv4Address | IPv6Address]:
        """Twisted addresses for ``addresses`` if the policy allows every one of them, else none."""
        policy = self.registry.policy()
        try:
            for address in addresses:
                policy.check_address(host, port, address)
        except AddressRefused as exc:
            self.registry.refused(host, port, exc.reason)
            log.warning("refused to connect to %s: %s", host, exc.detail)
            return []
        self.registry.allowed(host, port)
        out: list[IPv4Address | IPv6Address] = []
        for address in addresses:
            ip = parse_address(address)
            if ip.version == 4:
                out.append(IPv4Address("TCP", str(ip), port))
            else:
                out.append(IPv6Address("TCP", str(ip), port))
        return out
