"""Webhooks of `crawlstream follow`: signed change notifications, safe to send and to receive.

Sending (:mod:`.delivery`, :mod:`.transport`): every URL of ``follow.webhook_urls`` has its own
bounded queue and worker; a notification is POSTed as JSON ``{"type", "url", "payload"}`` with

- ``X-Crawlstream-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
  (:mod:`.signature`; one ``v1`` per secret while ``follow.webhook_previous_secret`` is set),
- ``X-Crawlstream-Event``: created, changed, gone or deleted,
- ``X-Crawlstream-Delivery``: the outbox event id; delivery is at-least-once, drop repeats by it.

Redirects are never followed, receivers' addresses pass :mod:`crawlstream.addresses` at start
and at every connection (pinned: no DNS rebinding), every attempt and every delivery has a hard
deadline, answers are read up to a cap, and logs show a receiver as ``scheme://host:port`` only.

Receiving: check each request with :func:`verify` before trusting it::

    from follow.webhooks import SIGNATURE_HEADER, SignatureError, verify

    try:
        verify(secret, request.headers[SIGNATURE_HEADER], raw_body)  # raw bytes, unparsed
    except (KeyError, SignatureError):
        return 400
"""

from follow.webhooks.signature import (
    SIGNATURE_HEADER,
    SignatureError,
    compute_signature,
    parse_header,
    sign_header,
    verify,
)

__all__ = ["SIGNATURE_HEADER", "SignatureError", "compute_signature", "parse_header", "sign_header", "verify"]
