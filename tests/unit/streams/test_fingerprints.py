"""Fingerprints: normalised hash, SimHash on real text, Hamming distance and LSH banding."""

# ruff: noqa: RUF001  (normalisation is tested on letters that look Latin)

from __future__ import annotations

import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from streams.enrich import enrich_html
from streams.fingerprints import (
    band_count,
    band_keys,
    bands,
    content_hash,
    hamming,
    normalise_text,
    shingle_hashes,
    simhash64,
    word_hashes,
)

DOCS = Path("/usr/share/doc/python3.11/html")


def doc_text(name: str) -> str:
    return enrich_html((DOCS / name).read_text(encoding="utf-8"), f"https://docs.python.org/3/{name}").text


def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise_text("Hello,\n  WORLD!  It's\tﬁne") == "hello world it s fine"
    assert content_hash(normalise_text("A  b.")) == content_hash(normalise_text("a b"))
    assert content_hash(normalise_text("a b")) != content_hash(normalise_text("a c"))
    assert content_hash("") == ""


@pytest.mark.parametrize(
    "text",
    [
        "",
        " !! ",
        "naïve café—déjà vu ¶ x_y 3.14 İstanbul",
        "ΑΣ.Β ΑΣ",
        "日本語のテキスト、句読点。",
        "a\u00a0b\u2003c\u0301d e\u0301",
        "x\x00y\x85z",
        "𝔘𝔫𝔦 emoji 😀 ok 𠀀x",
        "  lead, trail.  ",
    ],
)
def test_normalise_keeps_the_runs_of_word_characters(text: str) -> None:
    expected = " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower()))
    assert normalise_text(text) == expected


def test_normalise_a_documentation_page_like_the_regular_expression() -> None:
    text = doc_text("library/stdtypes.html")
    assert normalise_text(text) == " ".join(re.findall(r"\w+", text.lower()))


def test_hamming_counts_differing_bits() -> None:
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(0, 2**64 - 1) == 64


def test_simhash_is_deterministic_64_bit_and_zero_for_empty_text() -> None:
    text = normalise_text(doc_text("library/json.html"))
    assert simhash64(text) == simhash64(text)
    assert 0 < simhash64(text) < 2**64
    assert simhash64("") == 0


def test_simhash_of_an_edited_page_is_close_and_of_another_page_far() -> None:
    words = normalise_text(doc_text("library/json.html")).split()
    edited = list(words)
    edited[len(words) // 2 : len(words) // 2 + 3] = ["quite", "different", "words"]
    other = normalise_text(doc_text("library/csv.html"))
    original = simhash64(" ".join(words))
    assert hamming(original, simhash64(" ".join(edited))) <= 3
    assert hamming(original, simhash64(other)) > 10


def test_word_hashes_depend_on_the_word_only_and_differ_between_words() -> None:
    hashes = word_hashes("abc de abc x de").tolist()
    assert hashes[0] == hashes[2]
    assert hashes[1] == hashes[4]
    assert len(set(hashes)) == 3
    # Every distinct word of a few documentation pages gets its own hash.
    vocabulary = sorted(
        {
            word
            for name in ("library/json.html", "library/csv.html", "tutorial/classes.html")
            for word in normalise_text(doc_text(name)).split()
        }
    )
    assert len(set(word_hashes(" ".join(vocabulary)).tolist())) == len(vocabulary) > 1000
    assert word_hashes("naïve café").size == 2


def test_shingle_hash_bits_are_balanced_and_shingles_follow_word_order() -> None:
    hashes = shingle_hashes(normalise_text(doc_text("library/json.html")))
    bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1)
    assert hashes.size > 1000
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.05)  # each bit set in about half the shingles
    assert shingle_hashes("a b c")[0] != shingle_hashes("c b a")[0]
    assert shingle_hashes("a b c d").size == 2
    assert shingle_hashes("a b").size == 1


@pytest.mark.parametrize(("distance", "count"), [(0, 1), (1, 2), (3, 4), (4, 8), (7, 8), (15, 16)])
def test_band_count_is_the_smallest_divisor_of_64_above_the_distance(distance: int, count: int) -> None:
    assert band_count(distance) == count


def test_band_count_rejects_distances_banding_cannot_guarantee() -> None:
    with pytest.raises(ValueError, match="16"):
        band_count(16)


def test_bands_reassemble_the_fingerprint_and_keys_carry_the_index() -> None:
    fingerprint = 0x0123456789ABCDEF
    assert bands(fingerprint, 4) == [0xCDEF, 0x89AB, 0x4567, 0x0123]
    assert band_keys(fingerprint, 4) == ["0:cdef", "1:89ab", "2:4567", "3:0123"]
    assert band_keys(fingerprint, 16)[0] == "0:f"


def test_fingerprints_within_the_distance_always_share_a_band() -> None:
    rng = random.Random(4)
    for _ in range(2000):
        a = rng.getrandbits(64)
        flipped = rng.sample(range(64), rng.randint(0, 3))
        b = a
        for bit in flipped:
            b ^= 1 << bit
        assert set(band_keys(a, 4)) & set(band_keys(b, 4))
