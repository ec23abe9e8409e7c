"""Webhook signatures: how `crawlstream follow` signs a notification and how a receiver checks it.

The header, as Stripe and GitHub do it::

    X-Crawlstream-Signature: t=1767225600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd

``t`` is the time of sending (Unix seconds, set anew for every attempt) and each ``v1`` is the
hex HMAC-SHA256, under a shared secret, of the bytes ``"<t>." + body``. Signing the timestamp
with the body lets a receiver refuse replays: :func:`verify` accepts a notification only within
``tolerance_s`` of its own clock. During a secret rotation the sender adds one ``v1`` per secret
(``follow.webhook_previous_secret``); a receiver accepts the notification if any ``v1`` matches.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable

SIGNATURE_HEADER = "X-Crawlstream-Signature"
SCHEME = "v1"
MAX_HEADER_CHARS = 4096  # a few signatures; anything longer is not ours
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")

Secret = str | bytes


class SignatureError(ValueError):
    """A notification that must not be trusted: malformed header, no match, or outside the window."""


def _key(secret: Secret) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if not key:
        raise ValueError("an empty webhook secret signs nothing")
    return key


def compute_signature(secret: Secret, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    return hmac.new(_key(secret), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign_header(secrets: Iterable[Secret], body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Crawlstream-Signature`` value: ``t=<timestamp>`` and one ``v1=`` per secret."""
    t = int(time.time()) if timestamp is None else timestamp
    parts = [f"t={t}"] + [f"{SCHEME}={compute_signature(s, t, body)}" for s in secrets]
    if len(parts) == 1:
        raise ValueError("no webhook secret to sign with")
    return ",".join(parts)


def parse_header(header: str) -> tuple[int, list[str]]:
    """(timestamp, the v1 signatures) of a header value; SignatureError when malformed.
    Unknown schemes (``v0=``, a future ``v2=``) are ignored, as Stripe's verifiers do."""
    if not isinstance(header, str) or not header or len(header) > MAX_HEADER_CHARS:
        raise SignatureError("missing or oversized signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed signature header: expected t=<seconds>,v1=<hex>")
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit() or len(value) > 12:
                raise SignatureError("malformed signature header: one t=<unix seconds> expected")
            timestamp = int(value)
        elif name == SCHEME:
            signatures.append(value.lower())
    if timestamp is None:
        raise SignatureError("malformed signature header: no timestamp (t=)")
    if not signatures:
        raise SignatureError(f"malformed signature header: no {SCHEME} signature")
    return timestamp, signatures


def verify(
    secret: Secret | Iterable[Secret],
    header: str,
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> int:
    """Check a notification as a receiver; return its timestamp, or raise SignatureError.

    ``secret``: the shared secret (or several, while a receiver rotates its own); ``header``:
    the ``X-Crawlstream-Signature`` value; ``body``: the raw request body, exactly as received
    (before any JSON parsing). The notification is accepted when some ``v1`` equals the HMAC of
    ``"<t>." + body`` under some secret (compared in constant time, ``hmac.compare_digest``) and
    ``t`` is within ``tolerance_s`` seconds of ``now`` (default: the current time), in the past
    or the future. Outside that window it is refused even when correctly signed: a replay.
    Deliveries are at-least-once: drop repeats by the ``X-Crawlstream-Delivery`` header.
    """
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    if not secrets:
        raise ValueError("no secret to verify with")
    timestamp, candidates = parse_header(header)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_s:
        raise SignatureError(
            f"signature timestamp is {current - timestamp:.0f}s old (tolerance {tolerance_s}s)"
        )
    if timestamp > current + tolerance_s:
        raise SignatureError(f"signature timestamp is {timestamp - current:.0f}s in the future")
    matched = False
    for key in secrets:
        expected = compute_signature(key, timestamp, body).encode("ascii")
        for candidate in candidates:
            if _HEX_SHA256.fullmatch(candidate):  # compare_digest needs ASCII; other values never match
                # Every pair is compared (no early exit): the time taken says nothing of which matched.
                matched |= hmac.compare_digest(expected, candidate.encode("ascii"))
    if not matched:
        raise SignatureError("no signature matches the body under the secret")
    return timestamp
