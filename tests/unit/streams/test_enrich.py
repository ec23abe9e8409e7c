"""Enrichment on real HTML: a Python documentation page and a demo-site page."""

from __future__ import annotations

from pathlib import Path

from crawlstream.demosite import generate_demo_site
from streams.enrich import enrich_html, outlinks
from streams.fingerprints import content_hash, normalise_text

DOCS = Path("/usr/share/doc/python3.11/html")
JSON_URL = "https://docs.python.org/3/library/json.html"


def test_python_docs_page_main_text_title_language_and_links() -> None:
    found = enrich_html((DOCS / "library/json.html").read_text(encoding="utf-8"), JSON_URL)
    assert found.title.startswith("json — JSON encoder and decoder")
    assert found.text.startswith("json — JSON encoder and decoder")
    assert "JavaScript Object Notation" in found.text
    # Boilerplate (sidebar, navigation, footer) is gone from the main text.
    assert "Table of Contents" not in found.text
    assert "Previous topic" not in found.text
    assert "Copyright" not in found.text
    assert found.language == "en"
    assert found.word_count == len(normalise_text(found.text).split()) > 1000
    assert found.content_hash == content_hash(normalise_text(found.text))
    assert found.simhash > 0
    assert "https://docs.python.org/3/library/pickle.html" in found.outlinks
    assert found.outlinks_count == len(found.outlinks) == len(set(found.outlinks))
    assert all(url.startswith(("http://", "https://")) and "#" not in url for url in found.outlinks)


def test_demo_site_page_metadata(tmp_path: Path) -> None:
    generate_demo_site(tmp_path, pages=20, seed=7)
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    found = enrich_html(index, "http://127.0.0.1:8000/index.html")
    assert found.title
    assert found.word_count > 0
    assert found.outlinks
    assert all(url.startswith("http://") for url in found.outlinks)


def test_canonical_jsonld_description_base_and_nofollow() -> None:
    html = """<html lang="fr"><head><title> Le  titre </title>
    <base href="https://example.org/docs/">
    <link rel="canonical" href="/canon#x">
    <meta name="description" content=" Une   description ">
    <script type="application/ld+json">{"@type": "Article", "name": "A"}</script>
    <script type="application/ld+json">[{"@type": "Person"}, 3]</script>
    <script type="application/ld+json">{broken</script>
    </head><body><nav><a href="/nav">Accueil</a></nav>
    <main><p>Le chat est sur la table et le chien dort dans le jardin.</p>
    <a href="page.html#frag">suite</a> <a href="page.html">encore</a> <a rel="nofollow" href="/x">x</a>
    <a href="mailto:a@b.c">m</a> <a href="javascript:void(0)">j</a></main>
    <footer>Mentions légales</footer></body></html>"""
    found = enrich_html(html, "https://example.org/a/b.html")
    assert found.title == "Le titre"
    assert found.meta_description == "Une description"
    assert found.canonical_link == "https://example.org/canon"
    assert found.jsonld == [{"@type": "Article", "name": "A"}, {"@type": "Person"}]
    assert found.outlinks == ["https://example.org/nav", "https://example.org/docs/page.html"]
    assert found.text == "Le chat est sur la table et le chien dort dans le jardin. suite encore x m j"
    assert found.language == "fr"


def test_empty_and_tiny_pages() -> None:
    found = enrich_html("", "https://example.org/")
    assert (found.text, found.word_count, found.content_hash, found.simhash, found.language) == (
        "",
        0,
        "",
        0,
        None,
    )


def test_outlinks_are_capped() -> None:
    from selectolax.lexbor import LexborHTMLParser

    html = "".join(f'<a href="/p{i}">{i}</a>' for i in range(50))
    assert len(outlinks(LexborHTMLParser(html), "https://example.org/", limit=10)) == 10
