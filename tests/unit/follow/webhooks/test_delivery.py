"""Per-receiver delivery: retries, Retry-After, deadlines, redirects, queues, dead letters.
Fake clients (the WebhookClient interface), a fake clock and waits: no sockets, no sleeping."""

from __future__ import annotations

import threading
from typing import Any

import httpcore
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from crawlstream.addresses import AddressRefused
from crawlstream.deadletters import DeadLetterMessage, Origin
from crawlstream.errors import ConfigError
from crawlstream.settings import FollowSettings
from follow.follow import FollowMetrics
from follow.webhooks import SIGNATURE_HEADER, verify
from follow.webhooks.delivery import Dispatcher, Notification, Receiver, check_receivers
from follow.webhooks.transport import Answer

URL = "https://hooks.example.com/in/T0KEN?sig=abc"


class FakeClient:
    """Answers scripted per attempt: an Answer, a status, or an exception to raise."""

    def __init__(self, clock: FakeClock, script: list[Any], cost_s: float = 1.0) -> None:
        self.clock, self.script, self.cost_s = clock, script, cost_s
        self.calls: list[tuple[bytes, dict[str, str], float]] = []

    def post(self, body: bytes, headers: list[tuple[str, str]], deadline_at: float) -> Answer:
        self.calls.append((body, dict(headers), deadline_at))
        self.clock.now += self.cost_s
        step = self.script.pop(0) if self.script else 200
        if isinstance(step, Exception):
            raise step
        return step if isinstance(step, Answer) else Answer(step, None, 0, False)

    def close(self) -> None:
        pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def config(**kw: Any) -> FollowSettings:
    values: dict[str, Any] = {
        "webhook_urls": [URL],
        "webhook_secret": SecretStr("k"),
        "webhook_max_attempts": 4,
        "webhook_backoff_initial_s": 1.0,
        "webhook_backoff_max_s": 8.0,
        "webhook_timeout_s": 5.0,
        "webhook_deadline_s": 60.0,
    }
    return FollowSettings(**(values | kw))


def receiver(script: list[Any], **kw: Any) -> tuple[Receiver, FakeClient, list[DeadLetterMessage], FakeClock]:
    clock, letters = FakeClock(), []
    r = Receiver(
        0,
        URL,
        config(**kw),
        dead_letters=letters.append,
        dead_letter_max_bytes=1024 * 1024,
        done=lambda token: None,
        metrics=FollowMetrics(CollectorRegistry()),
        stopping=threading.Event(),
        clock=clock,
        wall_clock=lambda: 1_767_225_600.0,
        wait=clock.wait,
        jitter=lambda: 1.0,  # the top of each jitter range
    )
    fake = FakeClient(clock, script)
    r.client = fake  # type: ignore[assignment]
    return r, fake, letters, clock


def note(body: bytes = b'{"url":"https://a.test/"}', token: object = None) -> Notification:
    return Notification(
        b"https://a.test/", body, "created", "ev-1", Origin("outbox.event.page", 2, 41), token
    )


def test_a_2xx_is_delivered_signed_and_verifiable() -> None:
    r, fake, letters, _clock = receiver([204])
    assert r.deliver(note()) is None
    ((body, headers, _deadline),) = fake.calls
    assert verify("k", headers[SIGNATURE_HEADER], body, now=1_767_225_600) == 1_767_225_600
    assert (headers["X-Crawlstream-Event"], headers["X-Crawlstream-Delivery"]) == ("created", "ev-1")
    assert letters == []


def test_the_previous_secret_signs_too_during_a_rotation() -> None:
    r, fake, _letters, _clock = receiver([204], webhook_previous_secret=SecretStr("old"))
    r.deliver(note())
    body, headers, _ = fake.calls[0]
    assert verify("old", headers[SIGNATURE_HEADER], body, now=1_767_225_600)
    assert verify("k", headers[SIGNATURE_HEADER], body, now=1_767_225_600)


def test_server_errors_are_retried_with_backoff_and_jitter() -> None:
    r, fake, _letters, clock = receiver([500, httpcore.ReadTimeout("slow"), 503, 200])
    assert r.deliver(note()) is None
    assert len(fake.calls) == 4
    assert clock.waits == [1.0, 2.0, 4.0]  # doubling; jitter() = 1.0 is the top of the range


def test_jitter_spreads_the_waits_over_the_upper_half() -> None:
    r, _fake, _letters, clock = receiver([500, 500, 200])
    r.jitter = lambda: 0.0
    r.deliver(note())
    assert clock.waits == [0.5, 1.0]


def test_retry_after_is_honoured_and_capped() -> None:
    r, _fake, _letters, clock = receiver(
        [Answer(429, 7.0, 0, False), Answer(503, 3600.0, 0, False), 200], webhook_retry_after_max_s=20.0
    )
    assert r.deliver(note()) is None
    assert clock.waits == [7.0, 20.0]


def test_each_attempt_ends_by_its_timeout_and_the_delivery_deadline() -> None:
    r, fake, _letters, _clock = receiver([500, 500, 500, 500], webhook_deadline_s=8.0)
    failure = r.deliver(note())
    assert failure is not None
    assert failure.reason == "webhook_failed"
    deadlines = [d for _b, _h, d in fake.calls]
    assert deadlines[0] == 1000.0 + 5.0  # the attempt timeout first
    assert all(d <= 1000.0 + 8.0 for d in deadlines)  # never past the delivery's deadline
    assert "deadline" in failure.detail


def test_exhausted_retries_become_a_dead_letter_with_the_last_reason() -> None:
    r, fake, letters, _clock = receiver([500, 502, 500, 500])
    r.handle(note())
    assert len(fake.calls) == 4
    (letter,) = letters
    assert (letter.letter.reason, letter.letter.stage) == ("webhook_failed", "follow")
    assert (letter.letter.source_topic, letter.letter.source_partition, letter.letter.source_offset) == (
        "outbox.event.page",
        2,
        41,
    )
    assert "HTTP 500" in letter.letter.error
    assert "4 attempt(s)" in letter.letter.error
    assert "T0KEN" not in letter.letter.error
    assert "https://hooks.example.com" in letter.letter.error
    assert letter.letter.original_value() == note().body


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (301, "webhook_redirect"),
        (302, "webhook_redirect"),
        (307, "webhook_redirect"),
        (400, "webhook_rejected"),
        (410, "webhook_rejected"),
        (AddressRefused("private", "hooks.example.com:443 is 10.0.0.1"), "webhook_refused_address"),
        (httpcore.LocalProtocolError("bad header"), "webhook_failed"),
    ],
)
def test_final_answers_are_not_retried(answer: Any, reason: str) -> None:
    r, fake, letters, _clock = receiver([answer, 200])
    r.handle(note())
    assert len(fake.calls) == 1
    assert letters[0].letter.reason == reason


def test_a_failed_lookup_is_retried_then_fails_closed() -> None:
    refused = AddressRefused("unresolvable", "hooks.example.com: no address")
    r, fake, letters, _clock = receiver([refused, refused, refused, refused])
    r.handle(note())
    assert len(fake.calls) == 4
    assert letters[0].letter.reason == "webhook_failed"
    assert "lookup failed" in letters[0].letter.error


def test_an_unexpected_exception_is_a_dead_letter_not_a_dead_worker() -> None:
    r, _fake, letters, _clock = receiver([RuntimeError("library surprise")])
    r.handle(note())
    assert (letters[0].letter.reason, letters[0].letter.error_class) == ("webhook_failed", "RuntimeError")


def test_dead_letters_fit_the_topic_whatever_the_body() -> None:
    r, _fake, letters, _clock = receiver([400])
    r.dead_letter_max_bytes = 64 * 1024
    huge = note(body=b"x" * 1_000_000)
    r.handle(huge)
    (letter,) = letters
    assert letter.letter.truncated
    assert len(letter.value) + len(letter.key or b"") <= 64 * 1024


def test_secrets_are_required_to_sign() -> None:
    r, _fake, _letters, _clock = receiver([200], webhook_secret=SecretStr(""))
    with pytest.raises(ValueError, match="no webhook secret"):
        r.headers(note())


class Gate:
    """A client whose attempts wait for the test to open the gate (a dead receiver)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.six = threading.Event()
        self.bodies: list[bytes] = []

    def post(self, body: bytes, headers: list[tuple[str, str]], deadline_at: float) -> Answer:
        self.opened.wait(30)
        self.bodies.append(body)
        if len(self.bodies) == 6:
            self.six.set()
        return Answer(200, None, 0, False)

    def close(self) -> None:
        self.opened.set()


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.arrived = [threading.Event() for _ in range(20)]

    def post(self, body: bytes, headers: list[tuple[str, str]], deadline_at: float) -> Answer:
        self.bodies.append(body)
        self.arrived[len(self.bodies) - 1].set()
        return Answer(204, None, 0, False)

    def close(self) -> None:
        pass


def test_a_stuck_receiver_delays_no_one_and_its_overflow_is_dead_lettered() -> None:
    settings = config(
        webhook_urls=["https://stuck.example.com/", "https://fine.example.com/"], webhook_queue_size=5
    )
    letters: list[DeadLetterMessage] = []
    done: list[object] = []
    dispatcher = Dispatcher(
        settings,
        dead_letters=letters.append,
        dead_letter_max_bytes=1 << 20,
        done=done.append,
        metrics=FollowMetrics(CollectorRegistry()),
    )
    gate, recorder = Gate(), Recorder()
    dispatcher.receivers[0].client = gate  # type: ignore[assignment]
    dispatcher.receivers[1].client = recorder  # type: ignore[assignment]
    dispatcher.start()
    try:
        for i in range(20):
            dispatcher.submit(b"k", f'{{"n":{i}}}'.encode(), "created", f"ev-{i}", Origin("t", 0, i), i)
            # The healthy receiver has each one before the next is submitted, stuck one or not.
            assert recorder.arrived[i].wait(10), f"notification {i} did not reach the healthy receiver"
        assert recorder.bodies == [f'{{"n":{i}}}'.encode() for i in range(20)]  # all, in order
        assert gate.bodies == []  # the stuck receiver still holds its first one
        # 1 in flight + 5 queued; the 14 others were dead letters at once, never dropped.
        assert len(letters) == 14
        assert {m.letter.reason for m in letters} == {"webhook_queue_full"}
        assert "stuck.example.com" in letters[0].letter.error
        gate.opened.set()  # the receiver comes back: what it had queued is delivered
        assert gate.six.wait(10)
    finally:
        dispatcher.stop(join_s=10)
    assert gate.bodies == [f'{{"n":{i}}}'.encode() for i in range(6)]
    # Every notification was finished by every receiver exactly once (delivered or dead letter).
    assert sorted(done) == sorted(list(range(20)) * 2)


def test_private_receivers_are_refused_at_start_naming_the_field() -> None:
    settings = config(webhook_urls=["https://ok.example.com/", "http://internal.example.com:8080/t0ken"])
    addresses = {"ok.example.com": ["93.184.215.14"], "internal.example.com": ["10.1.2.3"]}
    with pytest.raises(ConfigError) as refused:
        check_receivers(settings, lambda host, port: addresses[host])
    message = str(refused.value)
    assert "follow.webhook_urls[1]" in message
    assert "CRAWLSTREAM_FOLLOW__ALLOW_PRIVATE_WEBHOOKS" in message
    assert "http://internal.example.com:8080" in message
    assert "t0ken" not in message


def test_allow_private_webhooks_allows_the_receivers_own_host_and_port_only() -> None:
    settings = config(webhook_urls=["http://127.0.0.1:8080/x"], allow_private_webhooks=True)
    check_receivers(settings, lambda host, port: ["127.0.0.1"])
    from follow.webhooks.delivery import webhook_policy

    policy = webhook_policy(settings)
    policy.check_address("127.0.0.1", 8080, "127.0.0.1")
    with pytest.raises(AddressRefused):
        policy.check_address("127.0.0.1", 8081, "127.0.0.1")


def test_an_unresolvable_receiver_at_start_is_a_warning_deliveries_fail_closed() -> None:
    def broken(host: str, port: int) -> list[str]:
        raise OSError("no DNS")

    check_receivers(config(), broken)  # no exception: every delivery checks again


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://h/x", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http:///x", "no host"),
        ("http://user:pw@h/x", "credentials"),
        ("http://h/x y", "control"),
        ("http://h:99999/", "valid URL"),
    ],
)
def test_bad_webhook_urls_fail_at_start_without_echoing_the_url(url: str, problem: str) -> None:
    from crawlstream.settings import load_settings

    with pytest.raises(ConfigError) as bad:
        load_settings(follow={"webhook_urls": [url]})
    assert problem in str(bad.value)
    assert "webhook_urls[0]" in str(bad.value)
    assert "/x" not in str(bad.value)
    assert "pw" not in str(bad.value)


def test_logs_never_show_a_receivers_path_or_query(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    settings = config(webhook_urls=[URL], webhook_queue_size=1)
    letters: list[DeadLetterMessage] = []
    dispatcher = Dispatcher(
        settings,
        dead_letters=letters.append,
        dead_letter_max_bytes=1 << 20,
        done=lambda token: None,
        metrics=FollowMetrics(CollectorRegistry()),
    )
    clock = FakeClock()
    receiver = dispatcher.receivers[0]
    receiver.client = FakeClient(clock, [302, 500, 500, 500, 500])  # type: ignore[assignment]
    receiver.wait, receiver.clock = clock.wait, clock
    dispatcher.start()
    try:
        receiver.handle(note())  # redirect
        receiver.handle(note())  # retries exhausted
        dispatcher.submit(b"k", b"{}", "created", "ev-2", Origin("t", 0, 1), None)
        dispatcher.submit(b"k", b"{}", "created", "ev-3", Origin("t", 0, 2), None)  # one may overflow
    finally:
        dispatcher.stop(join_s=5)
    assert "https://hooks.example.com" in caplog.text
    assert "T0KEN" not in caplog.text
    assert "sig=abc" not in caplog.text
    assert all("T0KEN" not in m.letter.error for m in letters)
