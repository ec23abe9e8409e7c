"""Content fingerprints: normalised-text hash, 64-bit SimHash, Hamming distance, LSH bands.

Plain functions used by :mod:`streams.enrich` (computing them) and by the change-detection,
content-dedup and near-duplicate agents (comparing them). No Kafka, no settings.

SimHash (Charikar; Manku et al., WWW 2007): every shingle of ``SHINGLE_WORDS`` consecutive
normalised words is hashed to 64 bits; bit ``i`` of the fingerprint is set when more than half of
the shingles have bit ``i`` set. Pages that share most shingles land a few bits apart. LSH banding
splits the fingerprint into ``b`` equal bands: by the pigeonhole principle two fingerprints at
distance ``< b`` agree on at least one whole band, so looking up each band in a table finds every
candidate within that distance.

Hashing is vectorised in numpy over the text's UTF-8 bytes (no Python loop per word): a word's hash
is a polynomial hash of its bytes modulo 2**64 (from one prefix sum over the whole text), made
uniform by the splitmix64 finaliser; a shingle mixes its words' hashes rotated by position.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata

import numpy as np

SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")
_BAND_COUNTS = (1, 2, 4, 8, 16)


@functools.cache
def _word_characters() -> np.ndarray:
    """Whether each code point is a word character (``\\w`` of :mod:`re`), as a lookup table.

    Built from the regular expression itself over every code point (once, about 0.1 s).
    """
    table = np.zeros(sys.maxunicode + 1, dtype=np.bool_)
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    for run in _WORD.finditer(every):
        table[run.start() : run.end()] = True
    return table


def normalise_text(text: str) -> str:
    """NFKC, lower case, words only, single spaces: formatting and punctuation do not count.

    The words are the runs of ``\\w`` (the same as ``" ".join(re.findall(r"\\w+", ...))``), found
    with a code point table in numpy rather than by the regular expression engine: half the time.
    """
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    points = np.frombuffer(text.lower().encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    word = _word_characters()[points]
    # Keep the word characters and, as a single space, the first other character after each.
    keep = word.copy()
    keep[1:] |= word[:-1]
    spaced = np.where(word, points, np.uint32(ord(" ")))[keep]
    # Leading non-word characters are already gone (nothing precedes them); drop a trailing one.
    words: str = spaced.tobytes().decode("utf-32-le", "surrogatepass")
    return words.removesuffix(" ")


def content_hash(normalised: str) -> str:
    """Hex digest (128-bit BLAKE2b) of normalised text; empty text hashes to ``""``."""
    if not normalised:
        return ""
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).hexdigest()


# Polynomial word hashing modulo 2**64: an odd base is invertible, so one prefix sum weighted by
# powers of its inverse gives every word's hash, sum((byte + 1) * BASE**(end - 1 - j)), at once.
_BASE = 0x9E3779B97F4A7C15
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)
_powers: tuple[np.ndarray, np.ndarray] = (np.ones(0, dtype=np.uint64), np.ones(0, dtype=np.uint64))
# Row b: the 8 bits of byte value b, least significant first.
_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(
    np.int64
)


def _base_powers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``BASE**j`` and ``BASE**-j`` modulo 2**64 for ``j < count`` (cached, grown on demand)."""
    global _powers
    if _powers[0].size < count:
        size = max(count, 1 << 16)
        up = np.full(size, _BASE, dtype=np.uint64)
        down = np.full(size, _BASE_INVERSE, dtype=np.uint64)
        up[0] = down[0] = 1
        _powers = (np.cumprod(up, dtype=np.uint64), np.cumprod(down, dtype=np.uint64))
    return _powers[0][:count], _powers[1][:count]


def _avalanche(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, in place: a bijection where every input bit flips each output bit."""
    values ^= values >> np.uint64(30)
    values *= np.uint64(0xBF58476D1CE4E5B9)
    values ^= values >> np.uint64(27)
    values *= np.uint64(0x94D049BB133111EB)
    values ^= values >> np.uint64(31)
    return values


def _rotl(values: np.ndarray, bits: int) -> np.ndarray:
    return (values << np.uint64(bits)) | (values >> np.uint64(64 - bits))


def word_hashes(normalised: str) -> np.ndarray:
    """64-bit hash of each space-separated word, in order; equal words hash equally anywhere."""
    data = np.frombuffer(normalised.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    size = data.size
    up, down = _base_powers(size)
    prefix = np.zeros(size + 1, dtype=np.uint64)
    np.cumsum((data + np.uint64(1)) * down, out=prefix[1:])
    spaces = np.flatnonzero(data == 32)
    starts = np.empty(spaces.size + 1, dtype=np.intp)
    starts[0], starts[1:] = 0, spaces + 1
    ends = np.empty(spaces.size + 1, dtype=np.intp)
    ends[:-1], ends[-1] = spaces, size
    # (Q[end] - Q[start]) * BASE**(end - 1): the word's bytes weighted from its own start.
    return _avalanche((prefix[ends] - prefix[starts]) * up[ends - 1])


def shingle_hashes(normalised: str, size: int = SHINGLE_WORDS) -> np.ndarray:
    """64-bit hashes of each run of ``size`` consecutive words (one shingle of all words if fewer).

    A shingle's hash mixes its words' hashes rotated by position (word order matters), then
    avalanches, so shingles differing in one word differ in about half their bits.
    """
    if not normalised:
        return np.zeros(0, dtype=np.uint64)
    per_word = word_hashes(normalised)
    width = min(size, per_word.size)
    count = per_word.size - width + 1
    mixed = per_word[:count].copy()
    for offset in range(1, width):
        mixed ^= _rotl(per_word[offset : offset + count], (offset * 21) % 64)
    return _avalanche(mixed)


def simhash64(normalised: str) -> int:
    """64-bit SimHash of the text's word shingles; 0 for empty text."""
    hashes = shingle_hashes(normalised)
    if hashes.size == 0:
        return 0
    # Bit counts per column: a histogram of each byte position (8 x 256 bins) times the bits of
    # each byte value, instead of unpacking every hash into 64 bits.
    octets = hashes.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)
    counts = np.concatenate([np.bincount(octets[:, i], minlength=256) @ _BYTE_BITS for i in range(8)])
    return int(np.packbits(counts * 2 > hashes.size, bitorder="little").view("<u8")[0])


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
