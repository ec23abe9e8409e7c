from __future__ import annotations

from scrapy.http import HtmlResponse, Request, Response
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.error import TimeoutError as TxTimeoutError
from twisted.python.failure import Failure

from crawlers.pages import (
    MAX_HEADER_CHARS,
    canonical_link,
    failure_reason,
    fetch_dead_letter,
    metadata_record,
    page_record,
    selected_headers,
)


def _html(body: bytes, url: str = "http://example.com/a?utm_source=x&b=1#f", **headers: str) -> HtmlResponse:
    request = Request(
        url, meta={"redirect_urls": ["http://example.com/old"], "depth": 2, "download_latency": 0.1}
    )
    hdrs = {"Content-Type": "text/html; charset=utf-8", **headers}
    return HtmlResponse(url, body=body, headers=hdrs, request=request)


def test_page_record_fields() -> None:
    response = _html(
        b'<html><head><title> T </title><link rel="Canonical" href="/c"></head><body>x</body></html>',
        ETag='"e"',
        Set_Cookie="secret=1",
    )
    record = page_record(response, max_body_bytes=1024, job_id="j", run_id="r")
    assert record.canonical_url == "http://example.com/a?b=1"
    assert record.url == "http://example.com/old"
    assert record.redirect_chain == ["http://example.com/old"]
    assert record.canonical_link == "http://example.com/c"
    assert record.headers["etag"] == '"e"'
    assert "set-cookie" not in record.headers  # only selected headers travel
    assert (record.title, record.depth, record.kind, record.job_id, record.run_id) == (
        "T",
        2,
        "html",
        "j",
        "r",
    )


def test_bad_bytes_never_raise() -> None:
    response = _html(b"<html><head><title>caf\xe9 \xff</title></head><body>\x80</body></html>")
    record = page_record(response, max_body_bytes=1024, job_id="", run_id="")
    assert record.title.startswith("caf")
    assert canonical_link(_html(b"<html><body>no link</body></html>")) is None


def test_metadata_record_has_no_body() -> None:
    request = Request("http://example.com/logo.png")
    response = Response(
        "http://example.com/logo.png",
        body=b"\x89PNG" * 100,
        headers={"Content-Type": "image/png"},
        request=request,
    )
    record = metadata_record(response, job_id="j", run_id="r")
    assert (record.kind, record.body, record.content_type, record.body_bytes) == (
        "metadata",
        "",
        "image/png",
        400,
    )


def test_failure_reasons_and_dead_letter() -> None:
    request = Request("http://example.com/x?utm_medium=y")
    response = HtmlResponse(request.url, status=503, request=request)
    assert failure_reason(Failure(HttpError(response, "no"))) == "http_503"
    assert failure_reason(Failure(TxTimeoutError())) == "fetch_timeout_error"
    message = fetch_dead_letter(
        Failure(TxTimeoutError()), request.url, job_id="j", run_id="r", max_bytes=1 << 20
    )
    letter = message.letter
    assert (letter.stage, letter.reason) == ("crawl", "fetch_timeout_error")
    assert letter.error_class == "twisted.internet.error.TimeoutError"
    assert letter.original_value() == request.url.encode()
    assert message.key == b"http://example.com/x"  # the canonical URL
    assert "job j, run r" in letter.error


def test_a_fetch_dead_letter_fits_its_topic_whatever_the_url() -> None:
    url = "http://example.com/" + "x" * 50_000
    message = fetch_dead_letter(Failure(TxTimeoutError()), url, job_id="j", run_id="r", max_bytes=16 * 1024)
    assert len(message.value) + len(message.key or b"") <= 16 * 1024 - 1024
    assert message.letter.truncated


def test_selected_headers_in_their_order_joined_and_capped() -> None:
    response = HtmlResponse(
        "http://example.com/",
        body=b"<html></html>",
        headers=[
            ("x-robots-tag", "noindex"),
            ("LINK", "<a>; rel=x"),
            ("Link", "<b>; rel=y"),
            ("Set-Cookie", "secret=1"),
            ("etag", '"e"'),
            ("Server", "s" * (MAX_HEADER_CHARS + 10)),
            ("Content-Type", "text/html"),
        ],
    )
    headers = selected_headers(response)
    assert list(headers) == ["content-type", "etag", "server", "x-robots-tag", "link"]
    assert headers["link"] == "<a>; rel=x, <b>; rel=y"  # every value of a repeated header
    assert headers["x-robots-tag"] == "noindex"
    assert headers["server"] == "s" * MAX_HEADER_CHARS
