"""The webhook signature and its verifier (follow.webhooks.verify)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from follow.webhooks import SignatureError, parse_header, sign_header, verify

BODY = b'{"type":"created","url":"https://a.test/"}'
NOW = 1_767_225_600


def v1(secret: bytes, t: int, body: bytes) -> str:
    return hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def test_the_header_signs_the_timestamp_and_the_body() -> None:
    header = sign_header(["k"], BODY, timestamp=NOW)
    assert header == f"t={NOW},v1={v1(b'k', NOW, BODY)}"


def test_a_valid_notification_verifies_and_returns_its_timestamp() -> None:
    assert verify("k", sign_header(["k"], BODY, NOW), BODY, now=NOW + 10) == NOW


def test_a_tampered_body_is_refused() -> None:
    header = sign_header(["k"], BODY, NOW)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify("k", header, BODY.replace(b"created", b"changed"), now=NOW)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(SignatureError, match="no signature matches"):
        verify("other", sign_header(["k"], BODY, NOW), BODY, now=NOW)


def test_a_replayed_old_notification_is_refused_though_correctly_signed() -> None:
    header = sign_header(["k"], BODY, NOW)
    assert verify("k", header, BODY, tolerance_s=300, now=NOW + 300) == NOW  # the edge is inside
    with pytest.raises(SignatureError, match="old"):
        verify("k", header, BODY, tolerance_s=300, now=NOW + 301)


def test_a_timestamp_in_the_future_is_refused() -> None:
    with pytest.raises(SignatureError, match="future"):
        verify("k", sign_header(["k"], BODY, NOW + 301), BODY, tolerance_s=300, now=NOW)


def test_changing_the_timestamp_breaks_the_signature() -> None:
    signed = sign_header(["k"], BODY, NOW)
    moved = signed.replace(f"t={NOW}", f"t={NOW + 100}")
    with pytest.raises(SignatureError, match="no signature matches"):
        verify("k", moved, BODY, now=NOW + 100)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "sha256=" + "0" * 64,  # the old body-only form: no timestamp
        f"v1={'0' * 64}",
        f"t={NOW}",
        f"t=abc,v1={'0' * 64}",
        f"t={NOW},t={NOW},v1={'0' * 64}",
        f"t=-{NOW},v1={'0' * 64}",
        f"t=\u0661\u0662,v1={'0' * 64}",  # non-ASCII digits
        "t" * 5000,
        "garbage",
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(SignatureError):
        verify("k", header, BODY, now=NOW)


def test_non_hex_and_non_ascii_signatures_never_match_and_never_crash() -> None:
    with pytest.raises(SignatureError, match="no signature matches"):
        verify("k", f"t={NOW},v1=\u00e9\u00e9,v1={'z' * 64},v1={v1(b'k', NOW, BODY)[:-1]}", BODY, now=NOW)


def test_any_of_several_v1_values_matches_during_a_secret_rotation() -> None:
    header = sign_header(["new", "old"], BODY, NOW)
    assert len(parse_header(header)[1]) == 2
    assert verify("old", header, BODY, now=NOW) == NOW  # a receiver not yet switched
    assert verify("new", header, BODY, now=NOW) == NOW
    assert verify(["newer", "new"], header, BODY, now=NOW) == NOW  # a receiver holding two
    with pytest.raises(SignatureError):
        verify("neither", header, BODY, now=NOW)


def test_unknown_schemes_are_ignored() -> None:
    header = f"t={NOW},v0=abc,v2=def,v1={v1(b'k', NOW, BODY)}"
    assert verify("k", header, BODY, now=NOW) == NOW


def test_the_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import follow.webhooks.signature as signature

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(signature.hmac, "compare_digest", spy)
    verify("k", sign_header(["k"], BODY, NOW), BODY, now=NOW)
    assert len(calls) == 1


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        sign_header([""], BODY, NOW)
    with pytest.raises(ValueError, match="no webhook secret"):
        sign_header([], BODY, NOW)
