"""Near-duplicate quality on a labelled set built from the Python documentation pages.

Takes library pages of /usr/share/doc/python3.11/html and, for each, altered copies a crawler meets:
  boilerplate  navigation, sidebar and footer replaced (the main text untouched),
  sentence     one sentence of the main text edited,
  reordered    two sections of the main text swapped.
Every copy is labelled a near-duplicate of its original; every other pair is unrelated (the
originals are different pages). Detection is what :mod:`streams.near` does: LSH bands of the
64-bit SimHash propose candidates, a Hamming distance <= ``near_duplicate_distance`` confirms.
Prints precision and recall (targets P >= 0.95, R >= 0.90) next to a baseline measured on the
same set: exact content-hash equality (what :mod:`streams.content` alone would catch).
"""

from __future__ import annotations

import itertools
import re
import sys
from collections import defaultdict
from pathlib import Path

from crawlstream.settings import StreamsSettings
from streams.enrich import enrich_html
from streams.fingerprints import band_count, band_keys, hamming

DOCS = Path("/usr/share/doc/python3.11/html/library")
PAGES = 200
_SECTION = re.compile(r'<section id="[^"]+">')


def boilerplate(html: str) -> str:
    """Other navigation, sidebar and footer: everything outside the main body changed."""
    html = re.sub(
        r'(<div class="related"[^>]*>).*?(</div>)',
        r"\1<ul><li>Home</li><li>Shop</li></ul>\2",
        html,
        flags=re.S,
    )
    html = re.sub(
        r'(<div class="sphinxsidebar"[^>]*>).*?(</div>\s*</div>)',
        r"\1<p>Ads and news</p>\2",
        html,
        flags=re.S,
    )
    return re.sub(
        r'(<div class="footer"[^>]*>).*?(</div>)', r"\1Copyright 2026 Mirror Inc.\2", html, flags=re.S
    )


def sentence(html: str) -> str | None:
    """One sentence of the main text edited."""
    start = html.find('role="main"')
    found = re.compile(r"<p>([^<]{40,}?)\.").search(html, start)
    if found is None:
        return None
    edited = found.group(1).replace(" the ", " this ", 1) + " (edited)"
    return html[: found.start(1)] + edited + html[found.end(1) :]


def reordered(html: str) -> str | None:
    """The last two sections at the same nesting depth swapped."""
    starts = [m.start() for m in _SECTION.finditer(html)]
    if len(starts) < 3:
        return None
    a, b = starts[-2], starts[-1]
    end = html.rfind("</section>")
    if not a < b < end:
        return None
    return html[:a] + html[b:end] + html[a:b] + html[end:]


def labelled_set() -> tuple[list[tuple[str, int, int]], set[tuple[str, str]]]:
    """(name, simhash, is-exact-copy-hash) per page and the set of near-duplicate pairs."""
    files = sorted(DOCS.glob("*.html"))[:PAGES]
    pages: dict[str, str] = {}
    positives: set[tuple[str, str]] = set()
    for f in files:
        html = f.read_text(encoding="utf-8", errors="replace")
        pages[f.stem] = html
        for kind, alter in (("boilerplate", boilerplate), ("sentence", sentence), ("reordered", reordered)):
            copy = alter(html)
            if copy is not None and copy != html:
                pages[f"{f.stem}~{kind}"] = copy
                positives.add((f.stem, f"{f.stem}~{kind}"))
    # Copies of one original are near-duplicates of each other too.
    for original in {a for a, _ in positives}:
        copies = sorted(b for a, b in positives if a == original)
        positives.update(itertools.combinations(copies, 2))
    prints = []
    for name, html in pages.items():
        enrichment = enrich_html(html, f"https://docs.example/{name}.html")
        prints.append((name, enrichment.simhash, int(enrichment.content_hash, 16)))
    return prints, positives


def detected(prints: list[tuple[str, int, int]], distance: int) -> set[tuple[str, str]]:
    """Pairs within ``distance`` among LSH candidates (the agent's logic, without Kafka)."""
    buckets: dict[str, list[tuple[str, int]]] = defaultdict(list)
    found: set[tuple[str, str]] = set()
    for name, simhash, _ in prints:
        for key in band_keys(simhash, band_count(distance)):
            for other, other_hash in buckets[key]:
                if hamming(simhash, other_hash) <= distance:
                    found.add(tuple(sorted((name, other))))  # type: ignore[arg-type]
            buckets[key].append((name, simhash))
    return found


def exact(prints: list[tuple[str, int, int]]) -> set[tuple[str, str]]:
    by_hash: dict[int, list[str]] = defaultdict(list)
    for name, _, content in prints:
        by_hash[content].append(name)
    return {tuple(sorted(p)) for names in by_hash.values() for p in itertools.combinations(names, 2)}  # type: ignore[misc]


def score(found: set[tuple[str, str]], positives: set[tuple[str, str]]) -> tuple[float, float]:
    truth = {tuple(sorted(p)) for p in positives}
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0), hits / len(truth)


def main() -> int:
    if not DOCS.is_dir():
        print(f"no pages under {DOCS}", file=sys.stderr)
        return 1
    distance = StreamsSettings().near_duplicate_distance
    prints, positives = labelled_set()
    print(
        f"pages: {len(prints)} ({PAGES} originals + altered copies), near-duplicate pairs: {len(positives)}"
    )
    print(f"unrelated pairs: {len(prints) * (len(prints) - 1) // 2 - len(positives)}; distance <= {distance}")
    found = detected(prints, distance)
    precision, recall = score(found, positives)
    for kind in ("boilerplate", "sentence", "reordered"):
        pairs = {(a, b) for a, b in positives if b.endswith("~" + kind) and "~" not in a}
        print(f"  recall on {kind:11} copies: {len(found & pairs) / len(pairs):.3f} of {len(pairs)}")
    base_p, base_r = score(exact(prints), positives)
    print(f"SimHash + LSH:       precision {precision:.3f}  recall {recall:.3f}  (targets >= 0.95, >= 0.90)")
    print(f"exact hash baseline: precision {base_p:.3f}  recall {base_r:.3f}")
    print(f"recall ratio SimHash/exact: {recall / base_r:.2f}" if base_r else "exact hash recall is 0")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.results import Row, Target, write_result

    write_result(
        "near_duplicates",
        f"Near duplicates: {len(prints)} Python docs pages and altered copies",
        [
            Row("SimHash + LSH", precision, "", "ours", "precision"),
            Row("exact hash", base_p, "", "baseline", "precision"),
            Row("SimHash + LSH", recall, "", "ours", "recall"),
            Row("exact hash", base_r, "", "baseline", "recall"),
        ],
        targets=[Target("precision", precision, ">=", 0.95), Target("recall", recall, ">=", 0.90)],
        params={"pages": PAGES, "distance": distance},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
