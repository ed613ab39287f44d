"""Permutation symmetry of text windows (Lavie, Gur-Ari & Ringel, ICML 2024).

Lavie et al. show that transformers in the infinite-width limit are biased toward functions
that are symmetric under permutations of the context positions, and that natural text
(WikiText) is approximately permutation symmetric. This module measures that symmetry for a
tokenised corpus through the covariance of its length-``n`` windows.

Embedding. Each token ``x`` gets a fixed vector ``e_x`` in ``R^d``:
``"onehot"``: the one-hot vector over the ``V`` most frequent tokens (frequency order, ties
broken by first occurrence, so relabelling token ids changes nothing); every other token maps
to one extra ``<unk>`` coordinate (``oov="unk"``, d = V + 1) or to the zero vector
(``oov="zero"``, "dropped", d = V). ``"random"``: those one-hot vectors times a fixed Gaussian
matrix ``R`` (codes x dim) / sqrt(dim), rows assigned by frequency rank.

Covariance. A window ``t`` is the concatenation ``z_t = (e_{x_t}, ..., e_{x_{t+n-1}})`` in
``R^{n d}``; ``C = E[z z^T] - E[z] E[z]^T`` with blocks ``C_ij = E[e_{x_{t+i}} e_{x_{t+j}}^T]
- mu_i mu_j^T``. For one-hot vectors ``E[e_a e_b^T]`` is the pair-count matrix of positions
``i, j``, computed with one ``np.bincount`` over pair keys per row ``i`` (no loop over
windows); the random embedding is ``R^T C_onehot R`` block by block. Windows start at every
``stride``-th token (``stride=1``: all overlapping windows; ``stride=n``: disjoint ones); with
more than ``max_windows`` windows a seeded random subset is used.

Symmetry. S_n acts on positions by ``P_pi (x) I_d``. Position space splits into the trivial
irrep (the all-ones direction, projector ``P_triv = 11^T / n``) and the standard irrep (its
complement). An exchangeable covariance ``C = I_n (x) A + 11^T (x) B`` has eigenvectors
``1 (x) v`` (eigenvalue of ``A + nB``) or ``z (x) v`` with ``z _|_ 1`` (eigenvalue of ``A``,
``n-1``-fold degenerate), i.e. every principal component lies wholly inside the trivial
subspace or wholly outside it. Two scores measure the departure from that:

1. ``pc_asymmetry``: for the top-K principal components ``u``, ``w = ||(P_triv (x) I) u||^2``
   and the mean of ``min(w, 1 - w)``. Degenerate eigenvalues make the eigenbasis arbitrary
   (i.i.d. tokens give n-fold clusters mixing trivial and non-trivial directions), so
   eigenvalues closer than ``rtol * lambda`` are grouped and a group scores the principal
   angles between its eigenspace and the trivial subspace: ``sum_k min(c_k, 1 - c_k)`` over
   the eigenvalues ``c_k`` of ``U^T P U`` (basis invariant; equals ``min(w, 1-w)`` for one
   vector). ``rtol="auto"`` is ``4 sqrt(n / M)``, the sampling spread of an n-fold cluster
   from ``M`` windows.
2. ``eps = E_pi ||P_pi C P_pi^T - C||_F / ||C||_F`` over random permutations. Identity used in
   the tests: ``E_pi ||P C P^T - C||_F^2 = 2 ||C - S(C)||_F^2`` with ``S`` the group average
   (``symmetrize``), the closest exchangeable matrix; ``dist_sym = ||C - S(C)|| / ||C||``.

Controls: the same windows with positions shuffled independently inside each window
(exchangeable in expectation: its noise floor at the same M) and a deterministic ordered chain
(``ordered_chain``, tokens cycling through the vocabulary).
Measured (2 cores, 1e6 i.i.d. tokens, n = 32, V = 64, 2^17 windows): about 3 s including the
shuffled control; see the notebook ``permutation_symmetry`` for text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg

Embedding = Literal["onehot", "random"]
Oov = Literal["unk", "zero"]

DEFAULT_VOCAB = 64
DEFAULT_MAX_WINDOWS = 2**17


@dataclass(frozen=True)
class WindowCovariance:
    """Covariance of concatenated window embeddings.

    cov: (n*d, n*d) float64, position-major (index ``i * d + a``); token_ids: (V,) original ids
    of the kept tokens in frequency-rank order; n_windows: windows averaged over.
    """

    cov: np.ndarray
    window: int
    dim: int
    n_windows: int
    token_ids: np.ndarray
    n_codes: int


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("tokens is empty; pass a tokenised corpus")
    return arr


def encode_top_vocab(tokens: np.ndarray, vocab_size: int, oov: Oov = "unk") -> tuple[np.ndarray, np.ndarray, int]:
    """Map tokens to frequency ranks ``0..V-1`` (ties: first occurrence), others to code ``V``.

    Returns (codes (T,) int64, kept original ids (V,), number of codes incl. <unk> if any).
    With ``oov="zero"`` the <unk> code exists but embeds to the zero vector (see ``_embedding``).
    """
    tokens = _check_tokens(tokens)
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}; pass e.g. vocab_size=64")
    ids, first, inverse, counts = np.unique(tokens, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))  # by count desc, then first occurrence
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    v = min(vocab_size, len(ids))
    codes = np.minimum(rank[inverse.reshape(-1)], v)
    n_codes = v + 1 if len(ids) > v else v
    return codes, ids[order[:v]], n_codes


def make_windows(
    codes: np.ndarray, window: int, stride: int = 1, max_windows: int | None = None, seed: int = 0
) -> np.ndarray:
    """Windows ``codes[s : s + window]`` for starts every ``stride`` tokens -> (M, window).

    With more than ``max_windows`` starts a random subset (seeded, sorted) is kept.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 positions, got {window}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}; use 1 (all windows) or window (disjoint)")
    starts = np.arange(0, len(codes) - window + 1, stride)
    if len(starts) < 2:
        raise ValueError(f"corpus of {len(codes)} tokens has < 2 windows of {window}; pass more tokens")
    if max_windows is not None and len(starts) > max_windows:
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(starts, size=max_windows, replace=False))
    return codes[starts[:, None] + np.arange(window)]  # (M, n)


def shuffle_windows(win: np.ndarray, seed: int = 0) -> np.ndarray:
    """Permute positions independently inside each window (an exchangeable control)."""
    perm = np.argsort(np.random.default_rng(seed).random(win.shape), axis=1)
    return np.take_along_axis(win, perm, axis=1)


def ordered_chain(length: int, vocab_size: int, seed: int | None = None) -> np.ndarray:
    """A deterministic chain: ``0, 1, ..., V-1, 0, 1, ...``; with ``seed`` a random V-cycle.

    The seeded chain follows a random cyclic successor map, i.e. it is a relabelling of the
    plain cycle (so every relabelling-invariant score is the same for both).
    """
    if vocab_size < 2 or length < 1:
        raise ValueError(f"ordered_chain needs vocab_size >= 2 and length >= 1, got {vocab_size}, {length}")
    seq = np.arange(length, dtype=np.int64) % vocab_size
    if seed is None:
        return seq
    return np.random.default_rng(seed).permutation(vocab_size)[seq]


def _embedding(n_codes: int, kept: int, embedding: Embedding, oov: Oov, dim: int, seed: int) -> np.ndarray | None:
    """(n_codes, d) embedding table, or None for the plain one-hot (identity)."""
    if embedding == "onehot":
        if oov == "zero" and n_codes > kept:
            return np.eye(n_codes)[:, :kept]
        return None
    if embedding != "random":
        raise ValueError(f"embedding must be 'onehot' or 'random', got {embedding!r}")
    table = np.random.default_rng(seed).standard_normal((n_codes, dim)) / np.sqrt(dim)
    if oov == "zero" and n_codes > kept:
        table[kept:] = 0.0
    return table


def pair_covariance(win: np.ndarray, n_codes: int, table: np.ndarray | None = None) -> np.ndarray:
    """Covariance (n*d, n*d) of concatenated embeddings of windows ``win`` (M, n) of codes.

    Row ``i`` of blocks comes from one bincount of keys ``(j - i) * K^2 + x_i * K + x_j``,
    K = n_codes, over all ``j >= i`` (cost O(M n^2) integer ops, memory O(n K^2)).
    """
    m, n = win.shape
    k2 = n_codes * n_codes
    d = n_codes if table is None else table.shape[1]
    cov = np.empty((n * d, n * d))
    counts = np.stack([np.bincount(win[:, i], minlength=n_codes) for i in range(n)]) / m  # (n, K)
    mu = counts if table is None else counts @ table  # (n, d)
    w64 = win.astype(np.int64)
    for i in range(n):
        keys = (np.arange(n - i) * k2)[None, :] + (w64[:, i : i + 1] * n_codes) + w64[:, i:]  # (M, n-i)
        pair = np.bincount(keys.ravel(), minlength=(n - i) * k2).reshape(n - i, n_codes, n_codes) / m
        for lag in range(n - i):
            j = i + lag
            block = pair[lag] if table is None else table.T @ pair[lag] @ table
            block = block - np.outer(mu[i], mu[j])
            cov[i * d : (i + 1) * d, j * d : (j + 1) * d] = block
            cov[j * d : (j + 1) * d, i * d : (i + 1) * d] = block.T
    return cov


def window_covariance(
    tokens: np.ndarray,
    window: int,
    *,
    vocab_size: int | None = None,
    embedding: Embedding = "onehot",
    dim: int = 64,
    oov: Oov = "unk",
    stride: int = 1,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    shuffle: bool = False,
    seed: int = 0,
) -> WindowCovariance:
    """Window covariance of a corpus (see module docstring); ``shuffle`` gives the control."""
    return _window_covariances(tokens, window, (shuffle,), vocab_size=vocab_size, embedding=embedding,
                               dim=dim, oov=oov, stride=stride, max_windows=max_windows, seed=seed)[0]


def _window_covariances(
    tokens: np.ndarray, window: int, shuffles: tuple[bool, ...], *, vocab_size: int | None,
    embedding: Embedding, dim: int, oov: Oov, stride: int, max_windows: int | None, seed: int,
) -> list[WindowCovariance]:
    """One covariance per entry of ``shuffles`` from the same windows (encoded once)."""
    if oov not in ("unk", "zero"):
        raise ValueError(f"oov must be 'unk' or 'zero', got {oov!r}")
    codes, kept, n_codes = encode_top_vocab(tokens, vocab_size or DEFAULT_VOCAB, oov)
    table = _embedding(n_codes, len(kept), embedding, oov, dim, seed)
    win = make_windows(codes, window, stride, max_windows, seed)
    out = []
    for shuffle in shuffles:
        cov = pair_covariance(shuffle_windows(win, seed + 1) if shuffle else win, n_codes, table)
        out.append(WindowCovariance(cov, window, cov.shape[0] // window, len(win), kept, n_codes))
    return out


def _check_cov(cov: np.ndarray, n: int) -> int:
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or cov.shape[0] % n:
        raise ValueError(f"cov must be square with side divisible by window={n}, got {cov.shape}")
    return cov.shape[0] // n


def symmetrize(cov: np.ndarray, n: int) -> np.ndarray:
    """Group average ``S(C) = mean_pi P_pi C P_pi^T`` over all of S_n (exact, closed form).

    Diagonal blocks -> mean diagonal block, off-diagonal blocks -> mean off-diagonal block.
    """
    d = _check_cov(cov, n)
    blocks = cov.reshape(n, d, n, d).transpose(0, 2, 1, 3)  # (n, n, d, d)
    diag = blocks[np.arange(n), np.arange(n)].mean(0)
    off = (blocks.sum((0, 1)) - diag * n) / (n * (n - 1))
    out = np.broadcast_to(off, (n, n, d, d)).copy()
    out[np.arange(n), np.arange(n)] = diag
    return out.transpose(0, 2, 1, 3).reshape(n * d, n * d)


def trivial_decomposition(cov: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Split ``C = PCP + QCQ + (PCQ + QCP)``, P = P_triv (x) I_d, Q = I - P.

    ``trivial`` acts on the trivial irrep, ``nontrivial`` on its complement, ``cross`` couples
    them; ``cross`` is zero for any exchangeable C.
    """
    d = _check_cov(cov, n)
    blocks = cov.reshape(n, d, n, d)
    pc = np.broadcast_to(blocks.mean(0, keepdims=True), blocks.shape).reshape(n * d, n * d)  # P C
    pcp = np.broadcast_to(blocks.mean((0, 2), keepdims=True), blocks.shape).reshape(n * d, n * d)
    cross = pc + pc.T - 2 * pcp
    return {"trivial": pcp, "nontrivial": cov - pcp - cross, "cross": cross}


def cross_fraction(cov: np.ndarray, n: int) -> float:
    """``||PCQ + QCP||_F / ||C||_F`` in O((nd)^2): zero for exchangeable C.

    ``||PCQ + QCP||^2 = 2 (||PC||^2 - ||PCP||^2)``; PC repeats the block-column means m_j
    n times and PCP repeats the overall block mean n^2 times.
    """
    d = _check_cov(cov, n)
    blocks = cov.reshape(n, d, n, d)
    col_means = blocks.mean(0)  # (d, n, d)
    pc2 = n * float((col_means**2).sum())
    pcp2 = n * n * float((col_means.mean(1) ** 2).sum())
    return float(np.sqrt(max(2.0 * (pc2 - pcp2), 0.0)) / np.linalg.norm(cov))


def trivial_weights(vecs: np.ndarray, n: int) -> np.ndarray:
    """``||(P_triv (x) I) u||^2`` for each column u of vecs (n*d, m) -> (m,)."""
    mean = vecs.reshape(n, -1, vecs.shape[1]).mean(0)  # (d, m)
    return n * (mean**2).sum(0)


def _top_eigh(cov: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``count`` eigenpairs, descending."""
    side = cov.shape[0]
    count = min(count, side)
    vals, vecs = scipy.linalg.eigh(cov, subset_by_index=[side - count, side - 1], driver="evr")
    return vals[::-1], vecs[:, ::-1]


def pc_asymmetry(cov: np.ndarray, n: int, top_k: int = 10, rtol: float = 1e-6) -> dict[str, np.ndarray | float]:
    """Score 1: mean of ``min(w, 1-w)`` over the top-K PCs, near-degenerate groups merged.

    Eigenvalues are grouped while consecutive gaps are < ``rtol * lambda``; a group's score is
    ``sum min(c, 1-c)`` over the cos^2 of its principal angles to the trivial subspace. Groups
    are taken whole until they cover >= top_k PCs; the score is the total / PCs covered.
    Returns score, the top eigenvalues, each PC's trivial weight and the group sizes.
    """
    _check_cov(cov, n)
    side = cov.shape[0]
    want = min(side, top_k + 2 * n + 16)
    while True:
        vals, vecs = _top_eigh(cov, want)
        scale = max(abs(vals[0]), 1e-300)
        gaps = vals[:-1] - vals[1:] >= rtol * np.maximum(np.abs(vals[:-1]), 1e-12 * scale)
        edges = np.concatenate([[0], np.flatnonzero(gaps) + 1, [len(vals)]])
        groups = [(a, b) for a, b in zip(edges[:-1], edges[1:])]
        covered = [b for _, b in groups if b >= min(top_k, side)]
        if covered and (covered[0] < len(vals) or want == side):
            stop = covered[0]
            break
        want = side  # a group reaches past the subset: one full decomposition
    total = 0.0
    sizes = []
    for a, b in groups:
        if a >= stop:
            break
        mean = vecs[:, a:b].reshape(n, -1, b - a).mean(0)  # (d, m)
        cos2 = np.clip(np.linalg.eigvalsh(n * mean.T @ mean), 0.0, 1.0)
        total += float(np.minimum(cos2, 1.0 - cos2).sum())
        sizes.append(b - a)
    return {
        "score": total / stop,
        "eigvals": vals[:stop],
        "weights": trivial_weights(vecs[:, :stop], n),
        "group_sizes": np.array(sizes),
    }


def perm_eps(cov: np.ndarray, n: int, n_perms: int = 32, seed: int = 0) -> float:
    """Score 2: ``mean_pi ||P_pi C P_pi^T - C||_F / ||C||_F`` over ``n_perms`` random pi."""
    d = _check_cov(cov, n)
    norm = np.linalg.norm(cov)
    if norm == 0:
        raise ValueError("cov is zero (constant windows); pass a corpus with more than one token type")
    blocks = np.ascontiguousarray(cov.reshape(n, d, n, d).transpose(0, 2, 1, 3))  # (n, n, d, d)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_perms):
        pi = rng.permutation(n)
        out.append(np.linalg.norm(blocks[pi[:, None], pi[None, :]] - blocks) / norm)
    return float(np.mean(out))


def auto_rtol(n: int, n_windows: int) -> float:
    """Grouping tolerance ``4 sqrt(n / M)``: the sampling spread of an n-fold cluster."""
    return 4.0 * float(np.sqrt(n / n_windows))


def scores_from_cov(
    cov: np.ndarray, n: int, *, top_k: int = 10, rtol: float = 1e-6, n_perms: int = 32, seed: int = 0
) -> dict[str, float]:
    """All scores of one covariance: pc_asymmetry, eps, dist_sym, cross_frac."""
    pc = pc_asymmetry(cov, n, top_k, rtol)
    norm = np.linalg.norm(cov)
    return {
        "pc_asymmetry": float(pc["score"]),
        "eps": perm_eps(cov, n, n_perms, seed),
        "dist_sym": float(np.linalg.norm(cov - symmetrize(cov, n)) / norm),
        "cross_frac": cross_fraction(cov, n),
    }


def symmetry_scores(
    tokens: np.ndarray,
    window: int,
    top_k: int = 10,
    vocab_size: int | None = None,
    seed: int = 0,
    *,
    embedding: Embedding = "onehot",
    dim: int = 64,
    oov: Oov = "unk",
    stride: int = 1,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    n_perms: int = 32,
    rtol: float | Literal["auto"] = "auto",
    ordered: bool = False,
) -> dict[str, float]:
    """Permutation-symmetry scores of a corpus and its controls (Lavie et al., ICML 2024).

    tokens: (T,) ints. Returns ``pc_asymmetry``, ``eps``, ``dist_sym``, ``cross_frac`` for the
    data, the same with suffix ``_shuffled`` (positions shuffled within each window, same
    windows) and, if ``ordered``, ``_ordered`` (``ordered_chain`` of the same length over the
    same number of codes); plus ``n_windows``, ``dim``, ``rtol``. Defaults: top 64 tokens
    one-hot + <unk>, all overlapping windows, at most 2^17 of them (seeded subset).
    """
    data, shuffled = _window_covariances(tokens, window, (False, True), vocab_size=vocab_size, embedding=embedding,
                                         dim=dim, oov=oov, stride=stride, max_windows=max_windows, seed=seed)
    runs = {"": data, "_shuffled": shuffled}
    if ordered:
        chain = ordered_chain(len(tokens), max(runs[""].n_codes, 2))
        runs["_ordered"] = window_covariance(chain, window, vocab_size=vocab_size, embedding=embedding, dim=dim,
                                             oov=oov, stride=stride, max_windows=max_windows, seed=seed)
    out: dict[str, float] = {}
    for suffix, wc in runs.items():
        tol = auto_rtol(window, wc.n_windows) if rtol == "auto" else float(rtol)
        for key, val in scores_from_cov(wc.cov, window, top_k=top_k, rtol=tol, n_perms=n_perms, seed=seed).items():
            out[key + suffix] = val
    out.update(n_windows=float(runs[""].n_windows), dim=float(runs[""].dim),
               rtol=auto_rtol(window, runs[""].n_windows) if rtol == "auto" else float(rtol))
    return out
