"""N-gram moments, max-ent samplers and exact entropy rates (Belrose et al. 2024, Sec. 5)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dsb_widgets.ngrams import (
    count_ngrams,
    entropy_rate,
    loss_floor,
    sample_sequences,
    stationary_distribution,
)

tokens_v3 = st.lists(st.integers(0, 2), min_size=4, max_size=30).map(lambda x: np.array(x, dtype=np.int64))


def _h(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _markov_tokens(V: int, n: int, succ: int, seed: int) -> np.ndarray:
    """A stream from a random sparse Markov chain: each state has ``succ`` possible successors."""
    rng = np.random.default_rng(seed)
    P = np.zeros((V, V))
    for a in range(V):
        P[a, rng.choice(V, succ, replace=False)] = rng.dirichlet(np.ones(succ))
    x = np.empty(n, dtype=np.int64)
    x[0] = 0
    u = rng.random(n)
    cdf = P.cumsum(1)
    for t in range(1, n):
        x[t] = min(np.searchsorted(cdf[x[t - 1]], u[t], side="right"), V - 1)
    return x


def _row_codes(seqs: np.ndarray, k: int, V: int) -> np.ndarray:
    """k-gram codes inside each row of (n, L) sequences (no n-gram straddles two rows)."""
    L = seqs.shape[1]
    code = np.zeros((seqs.shape[0], L - k + 1), dtype=np.int64)
    for i in range(k):
        code = code * V + seqs[:, i : L - k + 1 + i]
    return code.ravel()


@settings(max_examples=40, deadline=None)
@given(tokens_v3, st.integers(1, 3))
def test_ngram_frequencies_are_moments_of_one_hot_tokens(x: np.ndarray, k: int) -> None:
    stats = count_ngrams(x, 3, order=3)
    e = np.eye(3)[x]  # (n, V) one-hot
    n = len(x) - k + 1
    if k == 1:
        moment = e.mean(0)
    elif k == 2:
        moment = np.einsum("ta,tb->ab", e[:n], e[1 : n + 1]) / n
    else:
        moment = np.einsum("ta,tb,tc->abc", e[:n], e[1 : n + 1], e[2 : n + 2]) / n
    np.testing.assert_allclose(stats.dense(k), moment, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(tokens_v3)
def test_conditionals_normalise_over_the_next_token(x: np.ndarray) -> None:
    """p(c | a, b) = count(abc) / sum_c' count(abc'): the axis Belrose et al.'s code got wrong."""
    stats = count_ngrams(x, 3, order=3)
    tri = Counter(zip(x[:-2].tolist(), x[1:-1].tolist(), x[2:].tolist()))
    t = stats.table(2)
    for row, ctx in enumerate(t.ctx.tolist()):
        a, b = divmod(ctx, 3)
        entries = range(t.start[row], t.start[row + 1])
        denom = sum(v for (i, j, _), v in tri.items() if (i, j) == (a, b))
        assert t.total[row] == denom
        for e in entries:
            assert t.cnt[e] == tri[(a, b, int(t.nxt[e]))]
        p = t.cnt[t.start[row] : t.start[row + 1]] / t.total[row]
        assert abs(p.sum() - 1) < 1e-12
        assert abs(t.ent[row] - _h(p)) < 1e-12


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=200))
def test_unigram_entropy_rate_is_the_plugin_entropy(x: list[int]) -> None:
    stats = count_ngrams(np.array(x), 7, order=1)
    p = np.bincount(x, minlength=7) / len(x)
    assert entropy_rate(stats) == pytest.approx(_h(p), abs=1e-12)
    np.testing.assert_allclose(loss_floor(stats, 4), _h(p), atol=1e-12)


@pytest.mark.parametrize("close_loop", [True, False])
def test_two_state_chain_entropy_rate_closed_form(close_loop: bool) -> None:
    """Blocks 0^A 1^B: P(1|0) = n01/n0., P(0|1) = n10/n1.; pi_0 = P(0|1) / (P(1|0) + P(0|1))."""
    A, B, R = 4, 7, 50
    x = np.array(([0] * A + [1] * B) * R + ([0] if close_loop else []))
    stats = count_ngrams(x, 2, order=2)
    n01, n10 = R, R if close_loop else R - 1
    n0, n1 = R * A, R * B - (0 if close_loop else 1)  # counts as a bigram context
    p01, p10 = n01 / n0, n10 / n1
    pi0 = p10 / (p01 + p10)
    h0, h1 = _h(np.array([p01, 1 - p01])), _h(np.array([p10, 1 - p10]))
    assert entropy_rate(stats) == pytest.approx(pi0 * h0 + (1 - pi0) * h1, abs=1e-10)
    assert entropy_rate(stats, "empirical") == pytest.approx((n0 * h0 + n1 * h1) / (n0 + n1), abs=1e-12)
    if not close_loop:  # the stream ends in state 1: empirical weights are not stationary
        assert abs(entropy_rate(stats) - entropy_rate(stats, "empirical")) > 1e-5
    floor = loss_floor(stats, 400)
    assert floor[0] == pytest.approx(_h(np.bincount(x) / len(x)), abs=1e-12)
    assert floor[-1] == pytest.approx(entropy_rate(stats), abs=1e-9)


def _dense_backoff_chain(x: np.ndarray, V: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: Q over all V^(k-1) states with plain-Python back-off, and per-state entropy."""
    counts = [Counter(tuple(x[i : i + m + 1].tolist()) for i in range(len(x) - m)) for m in range(k)]

    def cond(ctx: tuple[int, ...]) -> np.ndarray:
        for m in range(len(ctx), -1, -1):
            c = ctx[len(ctx) - m :]
            row = np.array([counts[m].get(c + (v,), 0) for v in range(V)], dtype=float)
            if row.sum() > 0:
                return row / row.sum()
        raise AssertionError("unigram row is never empty")

    states = list(itertools.product(range(V), repeat=k - 1))
    Q = np.zeros((len(states), len(states)))
    H = np.zeros(len(states))
    for i, s in enumerate(states):
        q = cond(s)
        H[i] = _h(q)
        for v in range(V):
            Q[i, states.index(s[1:] + (v,))] += q[v]
    return Q, H


@settings(max_examples=25, deadline=None)
@given(tokens_v3, st.sampled_from([2, 3]))
@example(
    x=np.array([1, 1, 1, 0]),
    k=2,
)  # a failure hypothesis found during development
def test_entropy_rate_and_loss_floor_match_a_dense_back_off_oracle(x: np.ndarray, k: int) -> None:
    V = 3
    stats = count_ngrams(x, V, order=k)
    Q, H = _dense_backoff_chain(x, V, k)
    # stationary distribution reached from the empirical context frequencies (lazy chain)
    ctx = Counter(tuple(x[i : i + k - 1].tolist()) for i in range(len(x) - k + 1))
    states = list(itertools.product(range(V), repeat=k - 1))
    pi0 = np.array([ctx.get(s, 0) for s in states], dtype=float)
    M = 0.5 * (np.eye(len(states)) + Q)
    for _ in range(24):  # M^(2^24); more squarings let float drift in the row sums grow
        M = M @ M
    pi = pi0 / pi0.sum() @ M
    pi /= pi.sum()
    assert entropy_rate(stats) == pytest.approx(float(pi @ H), abs=1e-9)
    # per-position floor: x_0 ~ unigram, x_1 | x_0 ~ bigram back-off, then the chain
    p1 = np.bincount(x, minlength=V) / len(x)
    if k == 2:
        dist, expected = p1, [_h(p1)]
    else:
        Q2, H2 = _dense_backoff_chain(x, V, 2)
        dist = (p1[:, None] * Q2).ravel()  # pairs (a, b), a * V + b
        expected = [_h(p1), float(p1 @ H2)]
    for _ in range(6 - len(expected)):
        expected.append(float(dist @ H))
        dist = dist @ Q
    np.testing.assert_allclose(loss_floor(stats, 6), expected, atol=1e-10)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_sampled_sequences_reproduce_the_source_ngram_frequencies(order: int) -> None:
    V = 12
    x = _markov_tokens(V, 60_000, succ=3, seed=1)
    stats = count_ngrams(x, V, order=order)
    seqs = sample_sequences(stats, 400, 400, seed=2)
    assert seqs.shape == (400, 400) and seqs.dtype == np.int64
    for k in range(1, order + 1):
        codes, freq = stats.frequencies(k)
        got = np.bincount(_row_codes(seqs, k, V), minlength=V**k) / (seqs.shape[0] * (400 - k + 1))
        want = np.zeros(V**k)
        want[codes] = freq
        tv = 0.5 * np.abs(got - want).sum()
        # sampling noise of N = 160k correlated draws over K cells; measured TV 0.002-0.009,
        # 0.25-0.3 sqrt(K / N) with these seeds
        assert tv < 0.75 * np.sqrt(len(codes) / seqs.size), (k, tv)
        assert np.all(got[want == 0] == 0), "sampled an n-gram the source never had"
    if order >= 2:  # a unigram sampler would miss the bigram structure by far
        iid = count_ngrams(x, V, order=1)
        seq1 = sample_sequences(iid, 400, 400, seed=2)
        got2 = np.bincount(_row_codes(seq1, 2, V), minlength=V * V) / (400 * 399)
        want2 = np.zeros(V * V)
        want2[stats.frequencies(2)[0]] = stats.frequencies(2)[1]
        assert 0.5 * np.abs(got2 - want2).sum() > 0.3


def test_sampler_is_reproducible_and_respects_burn_in() -> None:
    stats = count_ngrams(_markov_tokens(5, 2000, 2, 0), 5, order=3)
    a = sample_sequences(stats, 8, 20, seed=3)
    assert np.array_equal(a, sample_sequences(stats, 8, 20, seed=np.random.default_rng(3)))
    b = sample_sequences(stats, 8, 20, seed=3, burn_in=5)
    assert b.shape == (8, 20)
    assert np.array_equal(b[:, :15], a[:, 5:]), "burn-in drops the first tokens of the same draw"


def test_back_off_on_unseen_contexts() -> None:
    """Stream 0 1 0 1 0 1 2: token 2 is never followed, so after it the chain backs off."""
    x = np.array([0, 1, 0, 1, 0, 1, 2])
    uni = np.bincount(x) / len(x)  # 3/7, 3/7, 1/7
    for order in (2, 3):
        stats = count_ngrams(x, 3, order=order)
        s = sample_sequences(stats, 4000, 30, seed=0)
        prev, nxt = s[:, :-1].ravel(), s[:, 1:].ravel()
        after2 = np.bincount(nxt[prev == 2], minlength=3) / np.count_nonzero(prev == 2)
        assert np.count_nonzero(prev == 2) > 2000
        if order == 2:  # bigram context 2 unseen -> unigram
            np.testing.assert_allclose(after2, uni, atol=0.03)
        else:  # context (1, 2) unseen -> bigram on 2 unseen -> unigram
            ctx12 = (s[:, :-2] == 1) & (s[:, 1:-1] == 2)
            after12 = np.bincount(s[:, 2:][ctx12], minlength=3) / ctx12.sum()
            np.testing.assert_allclose(after12, uni, atol=0.03)
            ctx21 = (s[:, :-2] == 2) & (s[:, 1:-1] == 1)  # (2, 1) unseen -> bigram on 1
            after21 = np.bincount(s[:, 2:][ctx21], minlength=3) / ctx21.sum()
            np.testing.assert_allclose(after21, [2 / 3, 0, 1 / 3], atol=0.04)
        states, pi, resid = stationary_distribution(stats)
        assert resid < 1e-10 and pi.sum() == pytest.approx(1.0)
    # exact 3-state bigram chain: 0 -> 1; 1 -> 0 (2/3), 2 (1/3); 2 -> unigram
    Q = np.array([[0, 1, 0], [2 / 3, 0, 1 / 3], uni])
    w, v = np.linalg.eig(Q.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    H = np.array([0.0, _h(Q[1]), _h(uni)])
    assert entropy_rate(count_ngrams(x, 3, order=2)) == pytest.approx(float(pi @ H), abs=1e-10)


@pytest.mark.parametrize(
    "tokens, V, order, match",
    [
        (np.array([], dtype=np.int64), 3, 2, "non-empty"),
        (np.zeros((2, 3), dtype=np.int64), 3, 2, "1-D"),
        (np.array([0, 3]), 3, 2, r"\[0, vocab_size=3\)"),
        (np.array([0, -1]), 3, 2, r"\[0, vocab_size=3\)"),
        (np.array([0, 1]), 3, 4, "order must be 1, 2 or 3"),
        (np.array([0, 1]), 3, 3, "at least 3 tokens"),
        (np.array([0, 1, 2]), 3_000_000, 3, "overflows int64"),
    ],
)
def test_bad_input_raises_clear_errors(tokens: np.ndarray, V: int, order: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        count_ngrams(tokens, V, order=order)


def test_sampler_and_floor_reject_bad_sizes() -> None:
    stats = count_ngrams(np.array([0, 1, 0]), 2, order=2)
    with pytest.raises(ValueError, match="n_seqs >= 1"):
        sample_sequences(stats, 0, 5)
    with pytest.raises(ValueError, match="length must be >= 1"):
        loss_floor(stats, 0)
    with pytest.raises(ValueError, match="'exact' or 'empirical'"):
        entropy_rate(stats, "stationary")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=300), st.integers(1, 3))
def test_dense_bincount_counting_equals_np_unique(x: list[int], k: int) -> None:
    """count_codes' dense path (bincount over V^k) == its sparse path (np.unique), keys and counts;
    and count_ngrams gives the same statistics with the dense path switched off."""
    import dsb_widgets.ngrams as ng

    V = 7
    code = np.asarray(x, dtype=np.int64)
    if code.size >= k:
        n = code.size - k + 1
        code = sum(code[i:i + n] * V ** (k - 1 - i) for i in range(k))
    dense = ng.count_codes(code, V**k, dense_max=10**9)
    sparse = ng.count_codes(code, V**k, dense_max=0)
    u, c = np.unique(code, return_counts=True)
    for got in (dense, sparse):
        assert np.array_equal(got[0], u) and np.array_equal(got[1], c) and got[1].dtype == np.int64
    if len(x) >= 3:
        a = ng.count_ngrams(np.asarray(x), V, order=3)
        old, ng.DENSE_MAX_CELLS = ng.DENSE_MAX_CELLS, 0
        try:
            b = ng.count_ngrams(np.asarray(x), V, order=3)
        finally:
            ng.DENSE_MAX_CELLS = old
        assert all(np.array_equal(p, q) for p, q in zip(a.keys + a.counts, b.keys + b.counts))
