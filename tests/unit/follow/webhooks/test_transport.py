"""One webhook POST: pinned to a checked address, within its deadline, answers read up to a cap.
Loopback receivers in this process; fake resolvers and clocks."""

from __future__ import annotations

import datetime
import itertools
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpcore
import pytest

from crawlstream.addresses import AddressPolicy, AddressRefused
from follow.webhooks.transport import WebhookClient, redact, retry_after_seconds
from tests.webhook_receivers import Receiver, drip, garbage_or_huge, healthy, redirect


class LoopbackOnly(AddressPolicy):
    """The real policy's interface; allows 127.0.0.1 only, and records every check."""

    checked: list[str]

    def check_address(self, host: str, port: int, address: str) -> None:
        self.checked.append(address)
        if address != "127.0.0.1":
            raise AddressRefused("private", f"{host}:{port} is {address}")


def policy() -> LoopbackOnly:
    p = LoopbackOnly()
    object.__setattr__(p, "checked", [])
    return p


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(healthy())
    yield r
    r.close()


_CLIENTS: list[WebhookClient] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Each test's clients are closed after it, as the delivery worker closes its own: a client
    keeps its connection to the receiver open for the next POST."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client(url: str, resolver: object, pol: AddressPolicy | None = None, **kw: object) -> WebhookClient:
    made = WebhookClient(url, pol or policy(), max_response_bytes=1024, resolver=resolver, **kw)  # type: ignore[arg-type]
    _CLIENTS.append(made)
    return made


def soon() -> float:
    return time.monotonic() + 30


def test_connects_to_the_checked_address_with_the_original_host(receiver: Receiver) -> None:
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    c = client(f"http://hooks.example.test:{receiver.port}/in?token=t", resolver)
    answer = c.post(b"{}", [("X-Test", "1")], soon())

    assert answer.status == 204
    (request,) = receiver.requests
    assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
    assert request.path == "/in?token=t"
    assert (lookups, c.backend.connected_to) == (["hooks.example.test"], "127.0.0.1")


def test_every_address_is_checked_before_any_connection(receiver: Receiver) -> None:
    pol = policy()
    c = client(receiver.url(), lambda h, p: ["127.0.0.1", "10.0.0.7"], pol)
    with pytest.raises(AddressRefused, match=r"10\.0\.0\.7"):
        c.post(b"{}", [], soon())
    assert pol.checked == ["127.0.0.1", "10.0.0.7"]
    assert receiver.connections == 0


def test_dns_rebinding_is_caught_at_the_connection(receiver: Receiver) -> None:
    """The first connection's lookup is fine; the next lookup answers a private address (the
    rebinding): that connection is refused, nothing reaches the receiver again."""
    answers = itertools.chain([["127.0.0.1"]], itertools.repeat(["192.168.1.10"]))
    c = client(receiver.url(), lambda h, p: next(answers))
    assert c.post(b"{}", [], soon()).status == 204
    c.pool.close()  # a new connection: a new lookup
    with pytest.raises(AddressRefused, match=r"192\.168\.1\.10"):
        c.post(b"{}", [], soon())
    assert len(receiver.requests) == 1


def test_the_real_policy_refuses_loopback_receivers(receiver: Receiver) -> None:
    c = client(receiver.url(), lambda h, p: ["127.0.0.1"], AddressPolicy())
    with pytest.raises(AddressRefused) as refused:
        c.post(b"{}", [], soon())
    assert refused.value.reason == "loopback"
    assert receiver.connections == 0


def test_a_failed_lookup_refuses(receiver: Receiver) -> None:
    def broken(host: str, port: int) -> list[str]:
        raise OSError("Temporary failure in name resolution")

    for resolver in (broken, lambda h, p: []):
        with pytest.raises(AddressRefused) as refused:
            client(receiver.url(), resolver).post(b"{}", [], soon())
        assert refused.value.reason == "unresolvable"
    assert receiver.connections == 0


def test_a_slow_drip_cannot_hold_an_attempt_past_its_deadline() -> None:
    """The receiver sends a byte every 10 ms, forever; each read returns in time, so only the
    attempt's deadline can end it. A fake clock moves 1 s per look: the deadline (5 s) passes
    after a few reads."""
    r = Receiver(drip(every_s=0.01))
    ticks = itertools.count(0.0, 1.0)
    try:
        c = client(r.url(), lambda h, p: ["127.0.0.1"], clock=lambda: next(ticks))
        with pytest.raises(httpcore.TimeoutException, match="deadline"):
            c.post(b"{}", [], deadline_at=5.0)
    finally:
        r.close()


def test_an_endless_answer_is_read_up_to_the_cap_only() -> None:
    r = Receiver(garbage_or_huge())
    try:
        c = client(r.url(), lambda h, p: ["127.0.0.1"])
        with pytest.raises(httpcore.RemoteProtocolError):  # connection 1: not HTTP
            c.post(b"{}", [], soon())
        answer = c.post(b"{}", [], soon())  # connection 2: 10 GB announced
        assert (answer.status, answer.body_truncated) == (200, True)
        assert answer.body_bytes_read == 1024
    finally:
        r.close()


def test_a_redirect_is_an_answer_not_followed() -> None:
    target = Receiver(healthy())
    r = Receiver(redirect(target.url("/stolen")))
    try:
        answer = client(r.url(), lambda h, p: ["127.0.0.1"]).post(b"{}", [], soon())
        assert answer.status == 302
        assert target.connections == 0
    finally:
        r.close()
        target.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("-5", None),
        ("9" * 40, 999_999_999.0),
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    now = 1445412450.0  # 2015-10-21 07:27:30 UTC
    assert retry_after_seconds(value, now) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/T0/B1/secret?token=x", "https://hooks.example.com"),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080"),
        ("http://[::1]:9/p", "http://[::1]:9"),
        ("http://h:bad/", "<invalid URL>"),
    ],
)
def test_receivers_are_shown_without_path_or_query(url: str, shown: str) -> None:
    assert redact(url) == shown


def tls_contexts(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for ``name``, and a client context that
    trusts it (and verifies host names, as the default does)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return server, ssl.create_default_context(cafile=str(cert_path))


def test_tls_goes_to_the_pinned_address_with_the_urls_host_as_sni_and_certificate_name(
    tmp_path: Path,
) -> None:
    server, client_context = tls_contexts(tmp_path, "hooks.example.test")
    r = Receiver(healthy(), tls=server)
    try:
        c = client(
            f"https://hooks.example.test:{r.port}/in", lambda h, p: ["127.0.0.1"], ssl_context=client_context
        )
        assert c.post(b"{}", [], soon()).status == 204
        assert r.server_names == ["hooks.example.test"]
        assert r.requests[0].headers["host"] == f"hooks.example.test:{r.port}"
        assert c.backend.connected_to == "127.0.0.1"
    finally:
        r.close()


def test_a_certificate_for_another_name_is_refused_though_the_address_was_allowed(tmp_path: Path) -> None:
    server, client_context = tls_contexts(tmp_path, "other.example.test")
    r = Receiver(healthy(), tls=server)
    try:
        c = client(
            f"https://hooks.example.test:{r.port}/in", lambda h, p: ["127.0.0.1"], ssl_context=client_context
        )
        with pytest.raises(httpcore.ConnectError, match="certificate verify failed"):
            c.post(b"{}", [], soon())
        assert r.requests == []
    finally:
        r.close()
