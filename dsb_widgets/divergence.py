"""Divergences between a language model's next-token distribution and n-gram predictors on real text.

Belrose et al. (ICML 2024, "Neural networks learn statistics of increasing complexity", Sec. 5,
code: EleutherAI/features-across-time) track, across Pythia checkpoints, how far the model's
next-token distribution q_t = softmax(logits_t) on real text is from the unigram and bigram
predictors p_t of the training corpus:

    KL(p || q)  = sum_v p(v) [log p(v) - log q(v)]                          (n-gram || model)
    JS(p, q)    = 1/2 KL(p || m) + 1/2 KL(q || m),   m = (p + q) / 2        (0 <= JS <= ln 2)

both in nats, averaged over every scored position t = 1..T of held-out windows x_0..x_T
(q_t conditions on x_<t). KL runs from the n-gram to the model: the n-gram predictor is sparse
(a context's continuations seen in training), the model's softmax has full support, so
KL(p || q) is finite while KL(q || p) is not. A model that has learned the unigram statistics
has a small KL(unigram || model) early on; as it learns to use context it moves away from the
unigram predictor towards the bigram one (KL to the bigram falls while KL to the unigram rises).

The n-gram predictor of order k is the back-off chain of :mod:`dsb_widgets.ngrams` (the same
one the probes sample from): p_t = p(x_t | x_{t-k+1..t-1}) from train counts; a context never
seen in training backs off to the next shorter one (trigram -> bigram -> unigram), and the
first positions use the context they have (min(t, k-1) tokens). Belrose's code used a uniform
row for unseen bigram contexts; back-off is the maximum-likelihood choice and never uniform.

The model's distribution is taken over the n-gram vocabulary (the tokenizer's V ids): logits
beyond V (Pythia pads its 50,277-token vocabulary to 50,304 rows) are dropped and the softmax
renormalised over V, as in the reference code (``logits[..., :d_vocab]``).

Cost: dense (rows, V) float64 chunks, ``rows = chunk_elems // V``, so memory stays bounded for
V = 50k; the arithmetic is O(positions x V), the same order as the model's own output layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dsb_widgets.ngrams import NGramStats, _resolve

DIVERGENCE_PROBES = ("kl_unigram", "kl_bigram", "kl_trigram", "js_unigram", "js_bigram", "js_trigram")
DIVERGENCE_ORDER = {name: float(["unigram", "bigram", "trigram"].index(name[3:]) + 1) for name in DIVERGENCE_PROBES}
_CHUNK_ELEMS = 1 << 22  # 4M float64 per dense chunk (32 MB)


def context_rows(stats: NGramStats, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back-off (context length, table row) of the predictor of x_t, t = 1..L-1, for each window.

    tokens: (N, L) ints. Returns two (N, L-1) int64 arrays: entry [i, t-1] says which
    conditional table ``stats.table(level)`` and which row of it predicts tokens[i, t].
    """
    x = np.asarray(tokens, dtype=np.int64)
    n, length = x.shape
    V = stats.vocab_size
    level = np.zeros((n, length - 1), dtype=np.int64)
    row = np.zeros((n, length - 1), dtype=np.int64)
    for t in range(1, length):
        m = min(t, stats.order - 1)
        state = np.zeros(n, dtype=np.int64)
        for j in range(t - m, t):
            state = state * V + x[:, j]
        level[:, t - 1], row[:, t - 1] = _resolve(stats, state, m)
    return level, row


def dense_probs(stats: NGramStats, level: np.ndarray, row: np.ndarray, vocab: int | None = None) -> np.ndarray:
    """(P, vocab) float64 predictor distributions of P positions given by (level, row) (1-D)."""
    vocab = stats.vocab_size if vocab is None else vocab
    out = np.zeros((level.size, vocab))
    for length in np.unique(level):
        sel = np.flatnonzero(level == length)
        t, r = stats.table(int(length)), row[sel]
        lens = t.start[r + 1] - t.start[r]
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        e = np.repeat(t.start[r], lens) + offs
        out[np.repeat(sel, lens), t.nxt[e]] = t.cnt[e] / np.repeat(t.total[r], lens)
    return out


def kl_from_logits(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, nats. p: (P, V) probabilities; logq: (P, V) log-probabilities."""
    return (torch.xlogy(p, p) - p * logq).sum(-1)


def js_from_logits(p: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence per row, nats (in [0, ln 2]). p, logq as in :func:`kl_from_logits`."""
    q = logq.exp()
    m = 0.5 * (p + q)
    logm = torch.log(m)  # m > 0 wherever q > 0, i.e. everywhere for a softmax
    kl_pm = (torch.xlogy(p, p) - p * logm).sum(-1)
    kl_qm = (q * (logq - logm)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


@dataclass
class DivergenceMeter:
    """Streaming means of KL(n-gram || model) and JS(n-gram, model) over real-text windows.

    ``stats``: order -> counts (order k used for the k-gram predictor; 1 = unigram). Feed
    ``update(windows, logits)`` with windows (N, T+1) and the model's logits (S, N, T, >=V) for
    inputs windows[:, :-1] (S seeds / models); ``means()`` gives name -> (S,) float64.
    """

    stats: dict[int, NGramStats]
    names: tuple[str, ...] = DIVERGENCE_PROBES
    chunk_elems: int = _CHUNK_ELEMS

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in DIVERGENCE_PROBES]
        if unknown:
            raise ValueError(f"unknown divergence probes {unknown}; choose from {DIVERGENCE_PROBES}")
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    @property
    def orders(self) -> list[int]:
        return sorted({int(DIVERGENCE_ORDER[n]) for n in self.names})

    def update(self, windows: torch.Tensor | np.ndarray, logits: torch.Tensor) -> None:
        w = np.asarray(windows.cpu() if isinstance(windows, torch.Tensor) else windows, dtype=np.int64)
        if logits.dim() == 3:
            logits = logits.unsqueeze(0)
        s, n, t, _ = logits.shape
        V = self.stats[self.orders[0]].vocab_size
        if logits.shape[-1] < V:
            raise ValueError(f"the model has {logits.shape[-1]} output logits but the n-gram vocabulary has {V} "
                             "tokens; evaluate it with the tokenizer it was trained with")
        if w.shape != (n, t + 1):
            raise ValueError(f"windows {w.shape} do not match logits for {n} x {t} positions (need (N, T+1))")
        flat = logits.reshape(s, n * t, logits.shape[-1])  # (S, P, V_model), a view
        rows = {k: context_rows(self.stats[k], w) for k in self.orders}  # k -> ((N, T), (N, T))
        step = max(1, self.chunk_elems // V)
        for lo in range(0, n * t, step):
            hi = min(n * t, lo + step)
            logq = torch.log_softmax(flat[:, lo:hi, :V].double(), dim=-1)  # (S, chunk, V)
            for k in self.orders:
                level, row = (a.reshape(-1)[lo:hi] for a in rows[k])
                p = torch.from_numpy(dense_probs(self.stats[k], level, row, V)).to(logq.device)  # (P, V)
                for kind, fn in (("kl", kl_from_logits), ("js", js_from_logits)):
                    name = f"{kind}_{['unigram', 'bigram', 'trigram'][k - 1]}"
                    if name in self.names:
                        val = torch.stack([fn(p, logq[i]).sum() for i in range(s)])  # (S,)
                        self._sums[name] = self._sums.get(name, 0) + val
        self._count += n * t

    def means(self) -> dict[str, np.ndarray]:
        if not self._count:
            raise ValueError("no positions were fed to the divergence meter")
        return {n: (self._sums[n] / self._count).cpu().numpy() for n in self.names}
