"""Content fingerprints: normalised-text hash, 64-bit SimHash, Hamming distance, LSH bands.

Plain functions used by :mod:`streams.enrich` (computing them) and by the change-detection,
content-dedup and near-duplicate agents (comparing them). No Kafka, no settings.

SimHash (Charikar; Manku et al., WWW 2007): every shingle of ``SHINGLE_WORDS`` consecutive
normalised words is hashed to 64 bits (from xxh64 word hashes); bit ``i`` of the fingerprint is set when more
than half of the shingles have bit ``i`` set. Pages that share most shingles land a few bits
apart. LSH banding splits the fingerprint into ``b`` equal bands: by the pigeonhole principle
two fingerprints at distance ``< b`` agree on at least one whole band, so looking up each band
in a table finds every candidate within that distance.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import xxhash

SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")
_BAND_COUNTS = (1, 2, 4, 8, 16)


def normalise_text(text: str) -> str:
    """NFKC, lower case, words only, single spaces: formatting and punctuation do not count."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).lower()))


def content_hash(normalised: str) -> str:
    """Hex digest (128-bit BLAKE2b) of normalised text; empty text hashes to ``""``."""
    if not normalised:
        return ""
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).hexdigest()


def _rotl(values: np.ndarray, bits: int) -> np.ndarray:
    return (values << np.uint64(bits)) | (values >> np.uint64(64 - bits))


def shingle_hashes(normalised: str, size: int = SHINGLE_WORDS) -> np.ndarray:
    """64-bit hashes of each run of ``size`` consecutive words (one shingle of all words if fewer).

    Each distinct word is hashed once (xxh64); a shingle's hash mixes its words' hashes rotated
    by position, so word order matters, vectorised in numpy.
    """
    words = normalised.split()
    if not words:
        return np.zeros(0, dtype=np.uint64)
    table = {word: xxhash.xxh64_intdigest(word.encode()) for word in set(words)}
    per_word = np.fromiter(map(table.__getitem__, words), dtype=np.uint64, count=len(words))
    width = min(size, len(words))
    count = len(words) - width + 1
    mixed = per_word[:count].copy()
    for offset in range(1, width):
        mixed ^= _rotl(per_word[offset : offset + count], (offset * 21) % 64)
    # A final avalanche (the splitmix64 finaliser) so nearby mixes differ in every bit.
    mixed ^= mixed >> np.uint64(30)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(27)
    mixed *= np.uint64(0x94D049BB133111EB)
    mixed ^= mixed >> np.uint64(31)
    return mixed


def simhash64(normalised: str) -> int:
    """64-bit SimHash of the text's word shingles; 0 for empty text."""
    hashes = shingle_hashes(normalised)
    if hashes.size == 0:
        return 0
    # (n, 8) little-endian bytes -> (n, 64) bits, bit i of the int at column i.
    bits = np.unpackbits(hashes.astype("<u8").view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    majority = bits.sum(axis=0, dtype=np.int64) * 2 > hashes.size
    return int(np.packbits(majority, bitorder="little").view("<u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def band_count(max_distance: int) -> int:
    """Fewest equal bands (a divisor of 64) guaranteeing a shared band within ``max_distance``."""
    for count in _BAND_COUNTS:
        if count > max_distance:
            return count
    raise ValueError(f"max_distance {max_distance} > {_BAND_COUNTS[-1] - 1} is not supported")


def bands(fingerprint: int, count: int) -> list[int]:
    """The fingerprint cut into ``count`` bands, least significant first."""
    width = 64 // count
    mask = (1 << width) - 1
    return [(fingerprint >> (i * width)) & mask for i in range(count)]


def band_keys(fingerprint: int, count: int) -> list[str]:
    """Table keys of the bands: ``"<index>:<hex value>"`` (index keeps bands apart)."""
    width = 64 // count
    return [f"{i}:{value:0{width // 4 or 1}x}" for i, value in enumerate(bands(fingerprint, count))]
