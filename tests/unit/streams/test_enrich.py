"""Enrichment on real HTML: a Python documentation page and a demo-site page."""

# ruff: noqa: RUF001  (the multilingual samples are meant to hold letters that look Latin)

from __future__ import annotations

from pathlib import Path

import pytest

from control.demosite import generate_demo_site
from crawlstream.records import PageEvent
from streams.enrich import MAX_JSONLD_DEPTH, enrich_html, outlinks
from streams.fingerprints import content_hash, normalise_text
from tests.unit.streams.harness import page

DOCS = Path("/usr/share/doc/python3.11/html")
JSON_URL = "https://docs.python.org/3/library/json.html"
# The same few sentences (a library's opening hours) written in each language.
SENTENCES = {
    "en": (
        "The library opens at nine in the morning and closes late in the evening. "
        "Visitors can borrow up to five books at a time, and the reading room on the "
        "second floor is quiet enough to work all day."
    ),
    "fr": (
        "La bibliothèque ouvre à neuf heures du matin et ferme tard le soir. Les "
        "visiteurs peuvent emprunter jusqu'à cinq livres à la fois, et la salle de "
        "lecture du deuxième étage est assez calme pour travailler toute la journée."
    ),
    "de": (
        "Die Bibliothek öffnet um neun Uhr morgens und schließt spät am Abend. Besucher "
        "können bis zu fünf Bücher gleichzeitig ausleihen, und der Lesesaal im zweiten "
        "Stock ist ruhig genug, um den ganzen Tag zu arbeiten."
    ),
    "es": (
        "La biblioteca abre a las nueve de la mañana y cierra tarde por la noche. Los "
        "visitantes pueden tomar prestados hasta cinco libros a la vez, y la sala de "
        "lectura del segundo piso es lo bastante tranquila para trabajar todo el día."
    ),
    "it": (
        "La biblioteca apre alle nove del mattino e chiude tardi la sera. I visitatori "
        "possono prendere in prestito fino a cinque libri alla volta, e la sala di "
        "lettura al secondo piano è abbastanza tranquilla per lavorare tutto il giorno."
    ),
    "pt": (
        "A biblioteca abre às nove horas da manhã e fecha tarde da noite. Os visitantes "
        "podem pedir emprestados até cinco livros de cada vez, e a sala de leitura no "
        "segundo andar é tranquila o suficiente para trabalhar o dia inteiro."
    ),
    "nl": (
        "De bibliotheek gaat om negen uur 's ochtends open en sluit laat op de avond. "
        "Bezoekers kunnen tot vijf boeken tegelijk lenen, en de leeszaal op de tweede "
        "verdieping is rustig genoeg om de hele dag te werken."
    ),
    "sv": (
        "Biblioteket öppnar klockan nio på morgonen och stänger sent på kvällen. Besökare "
        "kan låna upp till fem böcker åt gången, och läsesalen på andra våningen är "
        "tillräckligt tyst för att arbeta hela dagen."
    ),
    "pl": (
        "Biblioteka jest otwarta od dziewiątej rano do późnego wieczora. Odwiedzający "
        "mogą wypożyczyć do pięciu książek jednocześnie, a czytelnia na drugim piętrze "
        "jest na tyle cicha, że można w niej pracować przez cały dzień."
    ),
    "ru": (
        "Библиотека открывается в девять часов утра и закрывается поздно вечером. "
        "Посетители могут взять до пяти книг одновременно, а читальный зал на втором "
        "этаже достаточно тихий, чтобы работать весь день."
    ),
    "ja": (
        "図書館は朝九時に開館し、夜遅くに閉館します。利用者は一度に五冊まで本を借りることができ、二階の閲覧室は一日中仕事ができるほど静かです。"
    ),
    "zh": (
        "图书馆早上九点开门，晚上很晚才关门。读者一次最多可以借五本书，二楼的阅览室非常安静，可以在那里工作一整天。"
    ),
    "ar": (
        "تفتح المكتبة أبوابها في التاسعة صباحا وتغلق في وقت متأخر من المساء. يمكن للزوار "
        "استعارة ما يصل إلى خمسة كتب في المرة الواحدة، وقاعة القراءة في الطابق الثاني "
        "هادئة بما يكفي للعمل طوال اليوم."
    ),
    "el": (
        "Η βιβλιοθήκη ανοίγει στις εννέα το πρωί και κλείνει αργά το βράδυ. Οι επισκέπτες "
        "μπορούν να δανειστούν έως πέντε βιβλία τη φορά, και η αίθουσα ανάγνωσης στον "
        "δεύτερο όροφο είναι αρκετά ήσυχη για να εργάζεστε όλη μέρα."
    ),
    "tr": (
        "Kütüphane sabah dokuzda açılır ve akşam geç saatte kapanır. Ziyaretçiler aynı "
        "anda beş kitaba kadar ödünç alabilir ve ikinci kattaki okuma salonu bütün gün "
        "çalışacak kadar sessizdir."
    ),
}


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


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_language_of_pages_in_many_languages(language: str) -> None:
    html = (
        "<html><body><nav>Home | Search</nav>"
        f"<main><h1>Library</h1><p>{SENTENCES[language]}</p></main></body></html>"
    )
    assert enrich_html(html, "https://example.org/").language == language


def test_python_docs_pages_are_english() -> None:
    pages = sorted(DOCS.rglob("*.html"))
    assert len(pages) > 500
    languages = [enrich_html(page.read_text(encoding="utf-8"), JSON_URL).language for page in pages]
    assert languages.count("en") == len(pages)


def test_main_content_inside_boilerplate_is_not_the_main_text() -> None:
    html = """<body><aside><article>Related story</article></aside><header><main>Menu</main></header>
    <article hidden>Draft</article><div role="main">The real content.</div><article>Later</article></body>"""
    assert enrich_html(html, "https://example.org/").text == "The real content."
    html = '<body><nav><div role="main">Links</div></nav><article>Story text.</article><p>Other</p></body>'
    assert enrich_html(html, "https://example.org/").text == "Story text."
    html = '<body><div role="main">Role text.</div><main role="main">Main text.</main></body>'
    assert enrich_html(html, "https://example.org/").text == "Main text."


def test_a_hidden_root_element_keeps_the_page() -> None:
    found = enrich_html("<html hidden><body><p>Text of a page.</p></body></html>", "https://example.org/")
    assert found.text == "Text of a page."


def test_the_first_title_base_description_and_canonical_win() -> None:
    html = """<head><title>First</title><title>Second</title>
    <base href="https://one.example/d/"><base href="https://two.example/">
    <meta name="keywords" content="k"><meta property="og:description" content="Og">
    <meta name="description" content="Plain"><link rel="stylesheet" href="s.css">
    <link rel="canonical" href="c1"><link rel="canonical" href="c2"></head><body><p>x</p></body>"""
    found = enrich_html(html, "https://example.org/")
    assert (found.title, found.meta_description, found.canonical_link) == (
        "First",
        "Og",
        "https://one.example/d/c1",
    )


def test_outlinks_resolve_queries_parents_protocol_relative_and_fragments() -> None:
    html = """<a href="?q=1#f">q</a><a href="#top">t</a><a href="../up/x.html">u</a>
    <a href="https://o.org/p#x">o</a><a href="//cdn.org/z">c</a><a href=" x.html ">s</a>
    <a href="x.html#y">again</a><a href="../../../../root.html">r</a><a href="ftp://f.org/">f</a>"""
    found = enrich_html(html, "https://example.org/d/e.html?k=v")
    assert found.outlinks == [
        "https://example.org/d/e.html?q=1",
        "https://example.org/up/x.html",
        "https://o.org/p",
        "https://cdn.org/z",
        "https://example.org/d/x.html",
        "https://example.org/root.html",
    ]


@pytest.mark.parametrize(
    "base",
    ["javascript:alert(1)", "data:text/html,hi", "http://[::1", "http://[invalid", "file:///etc/", "  "],
)
def test_a_base_href_that_is_no_http_url_is_ignored(base: str) -> None:
    html = f'<base href="{base}"><link rel="canonical" href="c.html"><a href="x.html">x</a>'
    found = enrich_html(html, "https://example.org/dir/page.html")
    assert found.outlinks == ["https://example.org/dir/x.html"]
    assert found.canonical_link == "https://example.org/dir/c.html"


def test_links_that_do_not_parse_or_hold_control_characters_are_dropped() -> None:
    hrefs = [
        "http://[invalid",
        "https://[::1/x",
        "http://exa\u2100mple.org/",
        "http://ok.example/\x01",
        "y.html",
    ]
    html = "".join(f'<a href="{href}">l</a>' for href in hrefs) + '<link rel="canonical" href="http://[x">'
    found = enrich_html(html, "https://example.org/")
    assert found.outlinks == ["https://example.org/y.html"]
    assert found.canonical_link is None


def test_jsonld_the_next_hop_could_not_read_is_skipped() -> None:
    blocks = [
        '{"@type": "Thing", "name": "kept"}',
        '{"name": "\\ud800"}',  # a lone surrogate: json.loads takes it, nothing can write it out
        "[" * 100_000 + "]" * 100_000,  # json.loads: RecursionError
        '{"a":' * 100 + "1" + "}" * 100,  # parses, but nests deeper than MAX_JSONLD_DEPTH
        '{"n": Infinity, "big": 123456789012345678901234567890}',
    ]
    html = "".join(f'<script type="application/ld+json">{block}</script>' for block in blocks)
    found = enrich_html(html, "https://example.org/")
    assert found.jsonld == [
        {"@type": "Thing", "name": "kept"},
        {"n": float("inf"), "big": 123456789012345678901234567890},
    ]
    # and the event it goes in is read back by the next hop as it was written
    event = PageEvent(change="new", page=page("https://example.org/"), enrichment=found)
    assert PageEvent.model_validate_json(event.to_bytes()).enrichment.jsonld[0] == found.jsonld[0]  # type: ignore[union-attr]


def test_jsonld_nesting_limit_is_inclusive() -> None:
    def nested(depth: int) -> str:
        return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)

    html = "".join(
        f'<script type="application/ld+json">{nested(depth)}</script>'
        for depth in (MAX_JSONLD_DEPTH, MAX_JSONLD_DEPTH + 1)
    )
    assert len(enrich_html(html, "https://example.org/").jsonld) == 1
