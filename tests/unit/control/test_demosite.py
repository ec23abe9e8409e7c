from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from control.demosite import DISALLOWED_PREFIX, UTM, generate_demo_site, serve_directory
from crawlstream.urls import canonical_url


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
        if p.is_file()
    }  # fmt: skip


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = generate_demo_site(tmp_path / "a")
    second = generate_demo_site(tmp_path / "b")
    assert first == second
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate_demo_site(tmp_path / "c", seed=8)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_default_manifest_figures(tmp_path: Path) -> None:
    m = generate_demo_site(tmp_path)

    html_files = [p for p in tmp_path.rglob("*.html") if DISALLOWED_PREFIX.strip("/") not in p.parts]
    assert m.pages == len(html_files) == 300
    assert m.expected_distinct_canonical_urls == 300  # every public page is reachable from index.html
    assert m.expected_html_responses == 300 + len(m.tracking_variants)
    assert len(m.tracking_variants) > 5
    assert all(v.endswith(UTM) for v in m.tracking_variants)
    assert m.expected_non_html_responses == 2
    assert m.expected_not_found == 1
    assert m.expected_robots_denied == len(m.private_pages) > 1
    assert m.expected_responses_total == m.expected_html_responses + 2 + 1 + 1
    assert (tmp_path / "robots.txt").read_text() == "User-agent: *\nDisallow: /private/\n"


def test_mirrors_have_identical_bytes(tmp_path: Path) -> None:
    m = generate_demo_site(tmp_path)
    assert len(m.duplicate_body_paths) >= 3
    for mirror, original in m.duplicate_body_paths.items():
        assert (tmp_path / mirror.lstrip("/")).read_bytes() == (tmp_path / original.lstrip("/")).read_bytes()


def test_tracking_and_fragment_links_point_at_plain_pages(tmp_path: Path) -> None:
    m = generate_demo_site(tmp_path)
    text = "".join(p.read_text() for p in tmp_path.rglob("*.html"))
    assert 'href="/private/' in text
    assert "#top" in text
    for variant in m.tracking_variants:
        plain = variant.split("?")[0]
        assert f'href="{plain}"' in text
    base = "http://127.0.0.1:9/"
    assert len(set(m.expected_canonical_urls(base))) == m.expected_distinct_canonical_urls
    assert canonical_url(base.rstrip("/") + m.tracking_variants[0]) in m.expected_canonical_urls(base)


def test_too_small_site_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        generate_demo_site(tmp_path, pages=5)


def test_serve_directory(tmp_path: Path) -> None:
    generate_demo_site(tmp_path, pages=40)
    server, base_url = serve_directory(tmp_path)
    try:
        assert base_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(base_url + "index.html", timeout=10) as resp:
            assert resp.headers["Content-Type"] == "text/html"
            assert b"<title>Demo site</title>" in resp.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base_url + "missing.html", timeout=10)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        server.shutdown()
        server.server_close()
