"""MinHash near-duplicate detection as algorithms, apart from any workspace: tokens and shingles (word n-grams,
character n-grams for Chinese and Japanese), 64-bit shingle hashes, rensa R-MinHash signatures and their Jaccard
estimate, the LSH S-curve and the bands × rows chosen for a threshold, and the clustering of pairs above a
threshold (connected components) with the one threshold comparison (`reaches`) the applied run and the what-if
counts share. `core.dedup` runs them over a workspace and records the decisions; `core.dedup_review` reads the
results back for the page.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import cache
from itertools import chain

import numpy as np
import pyarrow as pa

from core.text import CJK_TOKEN_RE, detect_language

MINHASH_SEED = 1337
# Chinese/Japanese documents: every CJK or kana character is a token; Latin words and numbers inside them stay
# whole (mixed text such as "CT检查" gives "ct", "检", "查"): `core.text.CJK_TOKEN_RE`.
_CHAR_TOKENS = CJK_TOKEN_RE
_WORD_TOKENS = re.compile(r"\w+")



# --- LSH theory ---------------------------------------------------------------------------------------------
def candidate_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """P(two documents of Jaccard `similarity` share at least one band) = 1 - (1 - s^r)^b (the S-curve)."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s ** rows) ** bands


# Candidates are verified with the signature estimate before anything is linked, so a false positive costs one
# verification while a false negative is a duplicate kept: the LSH is chosen for recall.
RECALL_MARGIN = 0.05  # pairs this far above the threshold ...
RECALL_TARGET = 0.995  # ... share a band at least this often
FALSE_POSITIVE_WEIGHT = 0.1  # against 0.9 for false negatives, in the S-curve areas


@cache
def optimal_bands_rows(threshold: float, num_perm: int,
                       fp_weight: float = FALSE_POSITIVE_WEIGHT) -> tuple[int, int]:
    """Bands × rows for a Jaccard threshold, chosen for recall: the number of bands divides num_perm (rensa's
    LSH requires it), pairs at threshold + RECALL_MARGIN become candidates with probability >= RECALL_TARGET,
    and among those shapes the one with the least weighted area of false positives below the threshold and
    false negatives above it under the S-curve (false negatives weighted well above false positives)."""
    grid = np.linspace(0.0, 1.0, 1001)
    below, above = grid <= threshold, grid >= threshold
    check = threshold + min(RECALL_MARGIN, (1.0 - threshold) / 2)
    best: tuple[bool, float, int, int] | None = None
    for b in (d for d in range(1, num_perm + 1) if num_perm % d == 0):
        for r in range(1, num_perm // b + 1):
            p = candidate_probability(grid, b, r)
            fp = np.trapezoid(p[below], grid[below])
            fn = np.trapezoid(1.0 - p[above], grid[above])
            # Shapes meeting the recall target first; then the least weighted error.
            key = (float(candidate_probability(check, b, r)) < RECALL_TARGET,
                   fp_weight * fp + (1 - fp_weight) * fn, b, r)
            if best is None or key < best:
                best = key
    assert best is not None
    return best[2], best[3]


# --- shingles and signatures --------------------------------------------------------------------------------
def minhash_scheme(num_perm: int, ngram: int) -> str:
    import rensa

    return f"rensa-rminhash-v{rensa.RMinHash.ALGORITHM_VERSION}|ngramhash-v1|perm={num_perm}|ngram={ngram}|seed={MINHASH_SEED}"


def tokens_for(text: str, language: str | None = None) -> list[str]:
    """Word tokens, or character tokens for Chinese and Japanese documents (by script, per document)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    text = text.casefold()
    language = language or detect_language(text)
    return _CHAR_TOKENS.findall(text) if language in ("zh", "ja") else _WORD_TOKENS.findall(text)


def shingles(text: str, ngram: int = 5, language: str | None = None) -> list[str]:
    """The set of n-grams of `text` (word n-grams, character n-grams for zh/ja); a text shorter than n tokens
    is one shingle. Joined with a separator that cannot occur inside a token."""
    tokens = tokens_for(text, language)
    if len(tokens) <= ngram:
        return ["\x1f".join(tokens)] if tokens else [""]
    return list({"\x1f".join(tokens[i:i + ngram]) for i in range(len(tokens) - ngram + 1)})


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: spreads the bits of combined n-gram hashes."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(texts: Sequence[str], ngram: int = 5, languages: Sequence[str | None] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every n-gram of every text, flat, with row offsets (n + 1 of them).

    The same n-grams as `shingles` (so the same Jaccard similarity), computed without building a string per
    n-gram: tokens are dictionary-encoded (Arrow), each distinct token hashed once (rensa's FxHash, stable
    across processes), and each n-gram's hash combined from its tokens' hashes with NumPy over the whole batch.
    Repeated n-grams stay in (MinHash ignores repeats). A text shorter than n tokens is one shingle; an empty
    text one constant shingle."""
    import rensa

    langs = languages if languages is not None else [None] * len(texts)
    token_lists = [tokens_for(t, lang) for t, lang in zip(texts, langs, strict=True)]
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    encoded = pa.array(list(chain.from_iterable(token_lists)), pa.string()).dictionary_encode()
    distinct = encoded.dictionary.to_pylist()
    token_hash = np.asarray(rensa.RMinHash.hash_token_sets([distinct])[0] if distinct else [], dtype=np.uint64)
    tokens = np.concatenate([token_hash[encoded.indices.to_numpy(zero_copy_only=False)],
                             np.zeros(ngram, dtype=np.uint64)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    windows = np.where(lengths >= ngram, lengths - ngram + 1, 1)
    doc = np.repeat(np.arange(len(texts)), windows)
    first = np.repeat(np.cumsum(windows) - windows, windows)
    pos = np.arange(int(windows.sum()), dtype=np.int64) - first + starts[doc]
    span = np.minimum(lengths, ngram).astype(np.uint64)
    hashes = np.zeros(len(pos), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            hashes = (hashes * _GOLDEN) ^ tokens[pos + j]
        # Texts shorter than n tokens (few): their one shingle combines only their own tokens.
        window_end = np.cumsum(windows)
        for d in np.flatnonzero(lengths < ngram):
            h = np.uint64(0)
            for j in range(int(lengths[d])):
                h = (h * _GOLDEN) ^ tokens[starts[d] + j]
            hashes[window_end[d] - 1] = h
        hashes = _mix64(hashes ^ span[doc])
    offsets = np.concatenate([[0], np.cumsum(windows)]).astype(np.uint64)
    return hashes, offsets


def signatures(texts: Sequence[str], num_perm: int = 128, ngram: int = 5,
               languages: Sequence[str | None] | None = None) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures of the texts' n-gram sets (rensa R-MinHash, fixed seed)."""
    hashes, offsets = shingle_hashes(texts, ngram, languages)
    return signatures_from_hashes(hashes, offsets, num_perm)


def signatures_from_hashes(hashes: np.ndarray, offsets: np.ndarray, num_perm: int = 128) -> np.ndarray:
    import rensa

    if len(offsets) <= 1:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, MINHASH_SEED)
    return np.asarray(matrix.to_rows(), dtype=np.uint32)


def signatures_from_shingles(shingle_sets: Sequence[Sequence[str]], num_perm: int = 128) -> np.ndarray:
    """Signatures of explicit shingle strings (rensa hashes them); for comparisons and explanations."""
    import rensa

    if not shingle_sets:
        return np.zeros((0, num_perm), dtype=np.uint32)
    matrix = rensa.RMinHash.digest_matrix_from_token_sets(shingle_sets, num_perm, MINHASH_SEED)
    return np.asarray(matrix.to_rows(), dtype=np.uint32)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise share of equal signature slots: the MinHash estimate of Jaccard similarity."""
    return (a == b).mean(axis=-1)


# --- clustering ---------------------------------------------------------------------------------------------
def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over index pairs: a component label per node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as cc

    if len(a) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return cc(graph, directed=False)[1]


# Similarities are float32 when computed and float64 once stored: a pair exactly at the threshold must link in
# the what-if over stored pairs and in the applied run alike, so both compare through `reaches`.
SIMILARITY_TOLERANCE = 1e-9


def reaches(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Which pairs are at or above `threshold` (within SIMILARITY_TOLERANCE): the one comparison the applied run,
    the stored-pairs floor and the what-if counts share."""
    return np.asarray(similarity) >= threshold - SIMILARITY_TOLERANCE


def removal_count(pair_a: np.ndarray, pair_b: np.ndarray, similarity: np.ndarray, threshold: float) -> int:
    """How many documents clustering at `threshold` would drop (nodes minus components over linked nodes):
    what the page shows as the threshold moves, from stored pairs only."""
    keep = reaches(similarity, threshold)
    if not keep.any():
        return 0
    nodes, inverse = np.unique(np.concatenate([pair_a[keep], pair_b[keep]]), return_inverse=True)
    half = keep.sum()
    labels = connected_components(len(nodes), inverse[:half], inverse[half:])
    return int(len(nodes) - len(np.unique(labels)))
