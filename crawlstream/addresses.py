"""Which network addresses crawlstream may reach: the policy behind every outbound connection.

Crawlers (robots.txt, pages, sitemaps, feeds, API pages, every redirect hop) and webhooks reach
only globally routable addresses (:func:`forbidden_reason` is None), unless a job or setting
allows a host explicitly, and then on its own port only (:class:`AddressPolicy`). An IPv6 address
that embeds an IPv4 address (mapped, compatible, 6to4, Teredo, NAT64) is judged by the IPv4 address
it reaches as well. Resolution failures refuse (fail closed).

Pure functions: :mod:`crawlers.middlewares` applies them to the address Twisted connects to, and
:mod:`follow.webhooks` to the address a webhook is delivered to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.ip_network("::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT, RFC 2765
# Not for crawling though ``is_global`` may say so: IETF protocol assignments, the 6to4 relay anycast.
_SPECIAL = (ipaddress.ip_network("192.0.0.0/24"), ipaddress.ip_network("192.88.99.0/24"))


class AddressRefused(Exception):
    """A target the policy refuses; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_address(address: str) -> IPAddress:
    """An IP address from text, IPv6 zone ids dropped (``fe80::1%eth0``)."""
    return ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries or reaches, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client behind the relay
    if any(ip in net for net in _NAT64) or ip in _TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _COMPATIBLE and int(ip) > 1:  # deprecated ::a.b.c.d (:: and ::1 are judged as IPv6)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


# Most specific first: 169.254.0.0/16 and 0.0.0.0/8 are also "private" to ipaddress. IPv6
# site-local fec0::/10 (deprecated by RFC 3879, still routed inside some networks) is "global" to
# Python 3.11's ipaddress, so it is named here.
_KINDS = ("loopback", "link_local", "site_local", "multicast", "unspecified", "reserved", "private")
# Every value forbidden_reason can return: a bounded set, fit for a metric label.
ADDRESS_REASONS = frozenset(
    {"invalid", "shared", "special", "not_global", *_KINDS}
    | {f"ipv4_embedded_{k}" for k in (*_KINDS, "shared", "special", "not_global")}
)


def _kind(ip: IPAddress) -> str:
    for name in _KINDS:
        if getattr(ip, f"is_{name}", False):  # IPv4 addresses have no is_site_local
            return name
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared"
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _SPECIAL):
        return "special"
    return "not_global"


def _public(ip: IPAddress) -> bool:
    if ip.is_multicast or not ip.is_global or getattr(ip, "is_site_local", False):
        return False
    return not (isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _SPECIAL))


def forbidden_reason(address: str | IPAddress) -> str | None:
    """None when ``address`` is globally routable, else why not (``loopback``, ``private``,
    ``shared``, ``ipv4_embedded_loopback``, ``invalid``...)."""
    try:
        ip = address if not isinstance(address, str) else parse_address(address)
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None and not _public(inner):
            return f"ipv4_embedded_{_kind(inner)}"
        if inner is not None and ip.ipv4_mapped is not None:
            return None  # ::ffff:8.8.8.8 is 8.8.8.8, whatever ipaddress says of the v6 form
    return None if _public(ip) else _kind(ip)


def is_forbidden_address(address: str | IPAddress) -> bool:
    return forbidden_reason(address) is not None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP (an IP literal resolves to itself). Blocks."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


def host_and_port(url: str) -> tuple[str, str, int]:
    """(scheme, lower-case host, port) of an absolute URL; AddressRefused when it has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused("invalid_url", f"{url[:200]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise AddressRefused("scheme", f"{scheme or 'no'} scheme in {url[:200]!r}: only http and https")
    host = (parts.hostname or "").lower()
    if not host:
        raise AddressRefused("no_host", f"{url[:200]!r} has no host")
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def allowed_pairs(entry: str) -> set[tuple[str, int]]:
    """The (host, port) pairs an allow-list entry stands for; ValueError names a bad entry."""
    entry = entry.strip()
    if not entry:
        return set()
    if "://" in entry:
        try:
            _scheme, host, port = host_and_port(entry)
        except AddressRefused as exc:
            raise ValueError(f"not an http(s) URL or host[:port]: {entry!r} ({exc.reason})") from None
        return {(host, port)}
    if entry.count(":") > 1 and not entry.startswith("["):  # a bare IPv6 address: no port
        host, port_text = entry, ""
    else:
        host, sep, port_text = entry.rpartition(":")
        if not sep or "]" in port_text:
            host, port_text = entry, ""
    host = host.strip("[]").lower()
    if not host or any(c in host for c in "/?#@ ") or (port_text and not port_text.isdigit()):
        raise ValueError(f"not host[:port]: {entry!r}")
    if port_text:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"port out of range in {entry!r}")
        return {(host, port)}
    return {(host, p) for p in DEFAULT_PORTS.values()}


@dataclass(frozen=True)
class AddressPolicy:
    """What may be reached: everything public, plus ``allowed`` (host, port) pairs whatever they
    resolve to; ``allow_all`` turns the check off (a job that crawls a private network)."""

    allow_all: bool = False
    allowed: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def allowing(cls, urls_or_hosts: Iterable[str], *, allow_all: bool = False) -> AddressPolicy:
        """A policy allowing each entry: a URL (its host and port) or ``host[:port]`` (port 80
        and 443 when none is given; IPv6 as ``[::1]:8080`` or bare ``::1``)."""
        allowed: set[tuple[str, int]] = set()
        for entry in urls_or_hosts:
            allowed.update(allowed_pairs(entry))
        return cls(allow_all=allow_all, allowed=frozenset(allowed))

    def union(self, other: AddressPolicy) -> AddressPolicy:
        """What either policy allows (a process running several crawls resolves for all of them)."""
        return AddressPolicy(self.allow_all or other.allow_all, self.allowed | other.allowed)

    def exempts(self, host: str, port: int) -> bool:
        return self.allow_all or (host.strip("[]").lower(), port) in self.allowed

    def check_address(self, host: str, port: int, address: str) -> None:
        """Raise AddressRefused unless ``address`` (what ``host`` resolved or connected to) may be
        reached on ``port``."""
        if self.exempts(host, port):
            return
        reason = forbidden_reason(address)
        if reason is not None:
            raise AddressRefused(reason, f"{host}:{port} is {address} ({reason.replace('_', ' ')})")

    def check_url(self, url: str, resolver: Resolver = resolve) -> list[str]:
        """Resolve the URL's host and check every address; return them. Fails closed: a scheme
        other than http(s), no host, or a failed lookup is refused too."""
        _scheme, host, port = host_and_port(url)
        if self.exempts(host, port):
            return []
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused("unresolvable", f"{host}: {exc}") from None
        if not addresses:
            raise AddressRefused("unresolvable", f"{host}: no address")
        for address in addresses:
            self.check_address(host, port, address)
        return addresses
