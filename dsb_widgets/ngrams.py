"""N-gram statistics of token streams, maximum-entropy n-gram samplers and their exact entropy rates.

Belrose et al. (ICML 2024, "Neural networks learn statistics of increasing complexity", Sec. 5):
with one-hot tokens e_x, n-gram frequencies are the moments of the token stream,

    unigram  p(a)      = E_t[e_{x_t}]_a,
    bigram   p(a, b)   = E_t[e_{x_t} e_{x_{t+1}}^T]_{ab},
    trigram  p(a, b, c) = E_t[e_{x_t} (x) e_{x_{t+1}} (x) e_{x_{t+2}}]_{abc},

and the maximum-entropy sequence distribution matching the order-k moments is the order-(k-1)
Markov chain with conditionals p(c | a, b) = count(a b c) / sum_c' count(a b c'). A language
model first fits the unigram sequences, then the bigram ones (their loss on these sequences
falls, then rises). Counts are stored sparse: a k-gram (x_1..x_k) is the int64 key
sum_i x_i V^(k-i), ``np.unique`` gives sorted keys and counts; memory O(#distinct k-grams).

Sampling (``sample_sequences``): position 0 is drawn from the unigram frequencies, position t
from the conditional on the last min(t, order-1) tokens. Back-off: a context never seen in the
counts (only reachable after the stream's final tokens) falls back to the next shorter context:
trigram (a, b) unseen -> bigram on b -> unigram. The same back-off chain defines
``entropy_rate`` (nats/token) = sum_s pi(s) H(Q(. | s)), with pi the EXACT stationary
distribution of that chain (lazy power iteration from the empirical context frequencies, which
differ from pi only through the stream's first and last tokens; ``stationary="empirical"``
gives the empirical-frequency version). ``loss_floor`` gives the exact per-position optimum
(the conditional entropy at each position of a sampled sequence, unigram at t = 0); its mean is
the best loss any model can reach on the sampler's sequences.

Measured entropy rates (nats/token; exact and empirical weights agree to 4 decimals), train
splits of the offline data (small-data reproductions: plug-in n-gram entropies of ~1M tokens
are far below the language's true conditional entropies, most trigram contexts are rare):

- TinyStories head (lowercased), GPT-2 BPE restricted to the top 1000 tokens, 1.05M tokens,
  4.005 bytes/token: unigram 5.152, bigram 3.182, trigram 2.290 (1.856 / 1.146 / 0.825 bits/byte).
- Tiny Shakespeare, characters (V = 65), 1.00M tokens: unigram 3.309, bigram 2.452, trigram 1.903.

Speed on the TinyStories setting (2 shared CPU cores, CPU time, varies ~2x under load):
counting orders 1-3 0.07-0.2 s, 1000 x 128 trigram tokens sampled 0.1-0.2 s, exact trigram
entropy rate 0.2-0.3 s (53,825 states, 241,270 transitions), ``loss_floor(stats, 128)`` 0.6-1.3 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

_MAX_KEY = np.iinfo(np.int64).max


@dataclass(frozen=True, eq=False)
class _Cond:
    """Conditional table over contexts of one length, CSR-like, rows sorted by context code."""

    ctx: np.ndarray  # (n_ctx,) int64 context codes, sorted
    start: np.ndarray  # (n_ctx + 1,) int64 row starts into the entry arrays
    nxt: np.ndarray  # (nnz,) int64 next token
    cnt: np.ndarray  # (nnz,) int64 count of (context, next)
    cum: np.ndarray  # (nnz,) int64 inclusive cumulative count over all entries
    total: np.ndarray  # (n_ctx,) int64 row sums = count of the context followed by anything
    ent: np.ndarray  # (n_ctx,) float64 conditional entropy H(. | context) in nats

    @classmethod
    def from_keys(cls, keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> "_Cond":
        ctx_all, nxt = keys // vocab_size, keys % vocab_size  # keys sorted => ctx_all sorted
        ctx, first = np.unique(ctx_all, return_index=True)
        start = np.append(first, len(keys)).astype(np.int64)
        total = np.add.reduceat(counts, first)
        plogp = counts * np.log(counts)
        ent = np.log(total) - np.add.reduceat(plogp, first) / total
        return cls(ctx, start, nxt, counts, np.cumsum(counts), total, np.maximum(ent, 0.0))

    def find(self, codes: np.ndarray) -> np.ndarray:
        """Row of each context code, -1 where the context was never seen."""
        pos = np.minimum(np.searchsorted(self.ctx, codes), len(self.ctx) - 1)
        return np.where(self.ctx[pos] == codes, pos, -1)


@dataclass(frozen=True, eq=False)
class NGramStats:
    """Sparse n-gram counts of one token stream, for all orders 1..``order``.

    ``unigram``: (V,) int64 counts; ``keys[k-2]``, ``counts[k-2]``: the sorted int64 codes
    sum_i x_i V^(k-i) of the distinct k-grams (k = 2..order) and their counts.
    """

    order: int
    vocab_size: int
    n_tokens: int
    unigram: np.ndarray  # (V,) int64
    keys: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    _tables: dict[int, _Cond] = field(default_factory=dict, repr=False)

    def table(self, context_len: int) -> _Cond:
        """Conditional table p(next | last ``context_len`` tokens), 0 <= context_len < order."""
        if context_len not in self._tables:
            if context_len == 0:
                ids = np.flatnonzero(self.unigram).astype(np.int64)
                keys, cnt = ids, self.unigram[ids]
            else:
                keys, cnt = self.keys[context_len - 1], self.counts[context_len - 1]
            self._tables[context_len] = _Cond.from_keys(keys, cnt.astype(np.int64), self.vocab_size)
        return self._tables[context_len]

    def frequencies(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(k-gram codes, frequencies summing to 1): the sparse k-th moment of one-hot tokens."""
        if k == 1:
            ids = np.flatnonzero(self.unigram)
            return ids.astype(np.int64), self.unigram[ids] / self.unigram.sum()
        return self.keys[k - 2], self.counts[k - 2] / self.counts[k - 2].sum()

    def dense(self, k: int) -> np.ndarray:
        """Dense moment E[e_{x_t} (x) ... (x) e_{x_{t+k-1}}], shape (V,)*k; small V only."""
        if self.vocab_size**k > 50_000_000:
            raise ValueError(f"dense order-{k} moment with V={self.vocab_size} is too large; use frequencies()")
        codes, freq = self.frequencies(k)
        out = np.zeros(self.vocab_size**k)
        out[codes] = freq
        return out.reshape((self.vocab_size,) * k)


# Dense counting (one bincount over all V^k keys) while that table is at most this many cells
# (128 MB of int64) and at most 16 cells per counted token; np.unique (a sort) beyond.
DENSE_MAX_CELLS = 2**24


def count_codes(code: np.ndarray, space: int, dense_max: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys of ``code`` (ints in [0, space)) and their int64 counts.

    Equal to ``np.unique(code, return_counts=True)``; where the key space fits
    (``space <= dense_max`` and ``<= 16 * len(code)``) it is a linear-time ``np.bincount``
    instead of an O(n log n) sort (issue 17 measured the sort 2.2-3.6x slower where V^2 fits;
    ``benchmarks/bench_ngrams.py``).
    """
    dense_max = DENSE_MAX_CELLS if dense_max is None else dense_max
    if space <= dense_max and space <= 16 * max(code.size, 1):
        table = np.bincount(code, minlength=space)
        keys = np.flatnonzero(table)
        return keys.astype(np.int64), table[keys].astype(np.int64)
    u, c = np.unique(code, return_counts=True)
    return u, c.astype(np.int64)


def count_ngrams(tokens: np.ndarray, vocab_size: int, order: int = 2) -> NGramStats:
    """Count all k-grams, k = 1..order (order 1, 2 or 3), of a 1-D token stream. Vectorised.

    Measured: 1.05M TinyStories GPT-2 tokens (V = 1000), orders 1-3, ~0.2 s on 2 shared cores.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    x = np.asarray(tokens)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"count_ngrams needs a non-empty 1-D token array, got shape {x.shape}")
    if x.size < order:
        raise ValueError(f"an order-{order} model needs at least {order} tokens, got {x.size}")
    x = x.astype(np.int64)
    if vocab_size < 1 or x.min() < 0 or x.max() >= vocab_size:
        raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}); got [{x.min()}, {x.max()}]")
    if float(vocab_size) ** order > _MAX_KEY:
        raise ValueError(f"V^{order} = {vocab_size}^{order} overflows int64 keys; restrict the vocabulary")
    keys, counts = [], []
    for k in range(2, order + 1):
        n = x.size - k + 1
        code = np.zeros(n, dtype=np.int64)
        for i in range(k):
            code = code * vocab_size + x[i : i + n]
        u, c = count_codes(code, vocab_size**k)
        keys.append(u)
        counts.append(c)
    unigram = np.bincount(x, minlength=vocab_size).astype(np.int64)
    return NGramStats(order, vocab_size, int(x.size), unigram, tuple(keys), tuple(counts))


def _resolve(stats: NGramStats, states: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Back-off: (context length used, table row) for each state = code of the last m tokens."""
    level = np.zeros(states.shape, dtype=np.int64)
    row = np.zeros(states.shape, dtype=np.int64)
    todo = np.ones(states.shape, dtype=bool)
    for length in range(m, 0, -1):
        r = stats.table(length).find(states[todo] % stats.vocab_size**length)
        idx = np.flatnonzero(todo)[r >= 0]
        level[idx], row[idx] = length, r[r >= 0]
        todo[idx] = False
    return level, row  # unresolved states keep (0, 0): the unigram row


def _draw(stats: NGramStats, level: np.ndarray, row: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw from each (table, row) with uniforms u in [0, 1), on integer counts."""
    out = np.empty(level.shape, dtype=np.int64)
    for length in np.unique(level):
        sel = level == length
        t, r = stats.table(int(length)), row[sel]
        before = t.cum[t.start[r]] - t.cnt[t.start[r]]
        target = before + np.floor(u[sel] * t.total[r]).astype(np.int64)
        out[sel] = t.nxt[np.searchsorted(t.cum, target, side="right")]
    return out


def sample_sequences(
    stats: NGramStats,
    n_seqs: int,
    length: int,
    seed: int | np.random.Generator | None = 0,
    burn_in: int = 0,
) -> np.ndarray:
    """(n_seqs, length) int64 sequences of the order-``stats.order`` max-ent chain (see module doc).

    Vectorised over sequences, a Python loop over positions only. ``burn_in`` extra leading
    tokens are drawn and dropped (the start is already near-stationary: unigram frequencies).
    Measured: 1000 x 128 trigram tokens (V = 1000, TinyStories) in ~0.2 s CPU (0.5 s wall, loaded).
    """
    if n_seqs < 1 or length < 1 or burn_in < 0:
        raise ValueError(f"need n_seqs >= 1, length >= 1, burn_in >= 0; got {n_seqs}, {length}, {burn_in}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    total, V = length + burn_in, stats.vocab_size
    out = np.empty((n_seqs, total), dtype=np.int64)
    state = np.zeros(n_seqs, dtype=np.int64)  # code of the last min(t, order-1) tokens
    for t in range(total):
        m = min(t, stats.order - 1)
        level, row = _resolve(stats, state, m)
        out[:, t] = _draw(stats, level, row, rng.random(n_seqs))
        state = (state * V + out[:, t]) % V ** min(t + 1, stats.order - 1)
    return out[:, burn_in:]


def _expand(stats: NGramStats, states: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Back-off transitions of each state: (src index, next token, probability), and H per state."""
    level, row = _resolve(stats, states, m)
    src_l, nxt_l, p_l = [], [], []
    ent = np.empty(states.shape)
    for length in np.unique(level):
        sel = np.flatnonzero(level == length)
        t, r = stats.table(int(length)), row[sel]
        ent[sel] = t.ent[r]
        lens = t.start[r + 1] - t.start[r]
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        e = np.repeat(t.start[r], lens) + offs
        src_l.append(np.repeat(sel, lens))
        nxt_l.append(t.nxt[e])
        p_l.append(t.cnt[e] / np.repeat(t.total[r], lens))
    return np.concatenate(src_l), np.concatenate(nxt_l), np.concatenate(p_l), ent


def _closure(stats: NGramStats, seeds: np.ndarray) -> np.ndarray:
    """All full-length states reachable from ``seeds`` under the back-off chain (sorted codes)."""
    m, V = stats.order - 1, stats.vocab_size
    states, frontier = np.unique(seeds), np.unique(seeds)
    while frontier.size:
        src, nxt, _, _ = _expand(stats, frontier, m)
        new = np.setdiff1d(np.unique((frontier[src] * V + nxt) % V**m), states)
        states, frontier = np.union1d(states, new), new
    return states


@dataclass(frozen=True, eq=False)
class _Chain:
    states: np.ndarray  # (S,) int64 codes of the last order-1 tokens, sorted
    P: sp.csr_matrix  # (S, S) row-stochastic transition matrix
    ent: np.ndarray  # (S,) float64 H(next | state) in nats


def _chain(stats: NGramStats, seeds: np.ndarray) -> _Chain:
    m, V = stats.order - 1, stats.vocab_size
    states = _closure(stats, np.concatenate([stats.table(m).ctx, seeds]))
    src, nxt, p, ent = _expand(stats, states, m)
    dst = np.searchsorted(states, (states[src] * V + nxt) % V**m)
    P = sp.csr_matrix((p, (src, dst)), shape=(states.size, states.size))
    return _Chain(states, P, ent)


def stationary_distribution(
    stats: NGramStats, tol: float = 1e-13, max_iter: int = 20_000
) -> tuple[np.ndarray, np.ndarray, float]:
    """(state codes, pi, L1 residual |pi P - pi|) of the back-off chain (order >= 2).

    Lazy power iteration pi <- (pi + pi P) / 2 (aperiodic even if the chain is periodic), started
    from the empirical context frequencies.
    """
    if stats.order < 2:
        raise ValueError("a unigram model has no chain; its stationary distribution is the unigram")
    chain = _chain(stats, np.zeros(0, dtype=np.int64))
    ctx = stats.table(stats.order - 1)
    pi = np.zeros(chain.states.size)
    pi[np.searchsorted(chain.states, ctx.ctx)] = ctx.total / ctx.total.sum()
    PT = chain.P.T.tocsr()
    for _ in range(max_iter):
        new = 0.5 * (pi + PT @ pi)
        if np.abs(new - pi).sum() < tol:
            pi = new
            break
        pi = new
    return chain.states, pi / pi.sum(), float(np.abs(PT @ pi - pi).sum())


def _unigram_entropy(stats: NGramStats) -> float:
    return float(stats.table(0).ent[0])


def entropy_rate(stats: NGramStats, stationary: str = "exact") -> float:
    """Entropy rate in nats/token of the order-``stats.order`` back-off chain (module doc).

    ``stationary="exact"``: weights = exact stationary distribution; ``"empirical"``: weights =
    context frequencies in the counted stream (the plug-in conditional entropy).
    """
    if stats.order == 1:
        return _unigram_entropy(stats)
    if stationary == "empirical":
        t = stats.table(stats.order - 1)
        return float((t.total * t.ent).sum() / t.total.sum())
    if stationary != "exact":
        raise ValueError(f"stationary must be 'exact' or 'empirical', got {stationary!r}")
    states, pi, _ = stationary_distribution(stats)
    _, _, _, ent = _expand(stats, states, stats.order - 1)
    return float(pi @ ent)


def loss_floor(stats: NGramStats, length: int) -> np.ndarray:
    """(length,) exact optimal expected loss (nats) at each position of ``sample_sequences`` output.

    Position t costs H(x_t | x_<t) = E[H(Q(. | last min(t, order-1) tokens))]; position 0 is the
    unigram entropy and the tail tends to ``entropy_rate``. Its mean is the dotted line of the
    loss plots (the best loss reachable on these sequences).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    V, m_full = stats.vocab_size, stats.order - 1
    out = np.empty(length)
    codes, prob = np.zeros(1, dtype=np.int64), np.ones(1)  # distribution of the context state
    t = 0
    while t < length and t < m_full:  # warm-up: contexts shorter than order - 1
        src, nxt, p, ent = _expand(stats, codes, t)
        out[t] = prob @ ent
        codes, inv = np.unique((codes[src] * V + nxt) % V ** (t + 1), return_inverse=True)
        prob = np.bincount(inv, weights=prob[src] * p, minlength=codes.size).astype(np.float64, copy=False)
        t += 1
    if t < length:
        chain = _chain(stats, codes)
        dist = np.zeros(chain.states.size)
        dist[np.searchsorted(chain.states, codes)] = prob
        PT = chain.P.T.tocsr()
        for s in range(t, length):
            out[s] = dist @ chain.ent
            dist = PT @ dist
    return out
