"""Signed webhook delivery for `crawlstream follow`: POST with retries and capped backoff.

Each change notification is a JSON body POSTed to every ``follow.webhook_urls`` entry with
``X-Crawlstream-Signature: sha256=<hex HMAC-SHA256 of the body under follow.webhook_secret>``
(receivers recompute it to authenticate us), ``X-Crawlstream-Event`` (created / changed / gone /
deleted) and ``X-Crawlstream-Delivery`` (the outbox event id, for receivers to drop repeats:
delivery is at-least-once). Connection errors, 429 and 5xx are retried with capped exponential
backoff; other answers and exhausted retries raise :class:`WebhookFailed`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from crawlstream.errors import CrawlstreamError
from crawlstream.settings import FollowSettings

SIGNATURE_HEADER = "X-Crawlstream-Signature"
Post = Callable[[str, bytes, dict[str, str], float], int]  # url, body, headers, timeout -> status


class WebhookFailed(CrawlstreamError):
    def __init__(self, url: str, attempts: int, reason: str) -> None:
        super().__init__(f"webhook {url} failed after {attempts} attempt(s): {reason}")
        self.url, self.attempts, self.reason = url, attempts, reason


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def urllib_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    # Only operator-configured http(s) URLs reach here (checked by FollowSettings).
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@dataclass
class Notifier:
    config: FollowSettings
    post: Post = urllib_post
    sleep: Callable[[float], None] = time.sleep
    retries: list[str] = field(default_factory=list)  # URLs retried, for metrics

    def notify(self, url: str, body: bytes, event_type: str, delivery_id: str) -> int:
        """Deliver ``body`` to ``url``; returns the attempts used or raises WebhookFailed."""
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.config.webhook_secret.get_secret_value().encode(), body),
            "X-Crawlstream-Event": event_type,
            "X-Crawlstream-Delivery": delivery_id,
        }
        delay = self.config.webhook_backoff_initial_s
        reason = ""
        for attempt in range(1, self.config.webhook_max_attempts + 1):
            try:
                status = self.post(url, body, headers, self.config.webhook_timeout_s)
            except OSError as exc:
                status, reason = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                return attempt
            if status:
                reason = f"HTTP {status}"
            if status and status != 429 and status < 500:
                raise WebhookFailed(url, attempt, reason)  # the receiver refused: retrying won't help
            if attempt < self.config.webhook_max_attempts:
                self.retries.append(url)
                self.sleep(delay)
                delay = min(delay * 2, self.config.webhook_backoff_max_s)
        raise WebhookFailed(url, self.config.webhook_max_attempts, reason)
