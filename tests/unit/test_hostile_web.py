"""The hostile web server of the test suites (tests/support/hostile.py) does what its docstring says:
several hosts on one port, a decoy, a request log, bounded responses, real bombs."""

from __future__ import annotations

import gzip
import http.client
import json
import zlib

import pytest

from tests.support.hostile import HostileWeb, deflate_bomb, gzip_bomb, rebinding_resolver


def _get(host: str, port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_hosts_share_a_port_and_every_request_is_logged_by_listener() -> None:
    with HostileWeb(hosts=["127.0.10.21", "127.0.10.22"]) as web:
        assert web.url("/page/1") == f"http://127.0.10.21:{web.port}/page/1"
        _get("127.0.10.22", web.port, "/page/1")
        status, headers, _ = _get("127.0.10.21", web.port, "/redirect/other-port")
        assert (status, headers["Location"]) == (302, f"http://127.0.0.1:{web.decoy[1]}/stolen")
        _get(*web.decoy, "/stolen")
        assert [(h.host, h.path) for h in web.log] == [
            ("127.0.10.22", "/page/1"),
            ("127.0.10.21", "/redirect/other-port"),
            ("127.0.0.1", "/stolen"),
        ]
        assert len(web.requests_to(web.decoy)) == 1
        assert web.errors == []


def test_only_loopback_is_served() -> None:
    with pytest.raises(ValueError, match="loopback"):
        HostileWeb(hosts=["10.0.0.1"])


def test_redirect_targets_cover_every_odd_form() -> None:
    with HostileWeb(hosts=["127.0.10.23", "127.0.10.24"]) as web:
        targets = web.redirect_targets()
        port = web.decoy[1]
        assert targets["decimal"] == f"http://2130706433:{port}/stolen"
        assert targets["mapped"] == f"http://[::ffff:127.0.0.1]:{port}/stolen"
        assert targets["metadata"].startswith("http://169.254.169.254/")
        assert targets["file"] == "file:///etc/passwd"
        assert targets["other-host"] == f"http://127.0.10.24:{web.port}/stolen"
        assert len(targets["long"]) == 3000
        for name in targets:
            assert _get("127.0.10.23", web.port, f"/redirect/{name}")[0] == 302


def test_traps_answer() -> None:
    with HostileWeb(hosts=["127.0.10.25"], max_response_s=1.0, drip_interval_s=0.05) as web:
        host, port = "127.0.10.25", web.port
        _, _, calendar = _get(host, port, "/trap/calendar/2026/12")
        assert b"/trap/calendar/2027/1" in calendar
        assert b"/trap/calendar/2026/11" in calendar
        _, _, api = _get(host, port, "/api/endless?page=41")
        assert json.loads(api)["next"] == "/api/endless?page=42"
        status, _, controls = _get(host, port, "/control-chars")
        assert status == 200
        assert len(controls) > 1024 * 1024
        status, headers, _ = _get(host, port, "/rate-limited")
        assert (status, headers["Retry-After"]) == (429, "1")
        assert _get(host, port, "/rate-limited")[0] == 200
        _, _, links = _get(host, port, "/links/100k")
        assert links.count(b"<a href=") == 100_000
        # The slow drip ends at max_response_s, whatever the client does.
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/slow")
        body = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            body.read()
        conn.close()


def test_bombs_are_what_they_claim() -> None:
    assert gzip.decompress(gzip_bomb(4)) == b"<html><body>" + bytes(4 << 20)
    assert zlib.decompress(deflate_bomb(4)) == b"<html><body>" + bytes(4 << 20)
    assert len(gzip_bomb(64)) < 70 * 1024  # ~1 KiB per MiB


def test_rebinding_resolver_answers_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import hostile

    hostile._dns_table.cache_clear()
    monkeypatch.setenv("HOSTILE_DNS", json.dumps({"Rebind.Test": [["93.184.215.14"], ["127.0.0.1"]]}))
    try:
        answers = [rebinding_resolver("rebind.test", 80) for _ in range(3)]
    finally:
        hostile._dns_table.cache_clear()
    assert answers == [["93.184.215.14"], ["127.0.0.1"], ["127.0.0.1"]]
