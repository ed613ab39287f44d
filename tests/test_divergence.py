"""KL / JS between n-gram predictors and model distributions, against a brute-force numpy oracle."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from dsb_widgets.divergence import (
    DIVERGENCE_PROBES,
    DivergenceMeter,
    context_rows,
    dense_probs,
    js_from_logits,
    kl_from_logits,
)
from dsb_widgets.ngrams import count_ngrams


def _oracle_predictor(stream: list[int], V: int, order: int, context: tuple[int, ...]) -> np.ndarray:
    """p(. | context) with back-off, from plain Counters of the stream (no shared code)."""
    for m in range(min(len(context), order - 1), 0, -1):
        ctx = tuple(context[len(context) - m:])
        follow = Counter(stream[i + m] for i in range(len(stream) - m) if tuple(stream[i:i + m]) == ctx)
        if follow:
            p = np.zeros(V)
            for tok, c in follow.items():
                p[tok] = c
            return p / p.sum()
    p = np.bincount(stream, minlength=V).astype(float)
    return p / p.sum()


def _oracle(stream: list[int], V: int, windows: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Mean KL(p || q) and JS over positions 1..T of each window; logits (N, T, V)."""
    out: dict[str, list[float]] = {n: [] for n in DIVERGENCE_PROBES}
    for i in range(windows.shape[0]):
        for t in range(1, windows.shape[1]):
            z = logits[i, t - 1] - logits[i, t - 1].max()
            q = np.exp(z) / np.exp(z).sum()
            for k, name in ((1, "unigram"), (2, "bigram"), (3, "trigram")):
                p = _oracle_predictor(stream, V, k, tuple(windows[i, :t]))
                out[f"kl_{name}"].append(float(rel_entr(p, q).sum()))
                out[f"js_{name}"].append(float(jensenshannon(p, q) ** 2))  # natural log by default
    return {n: float(np.mean(v)) for n, v in out.items()}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 7), n=st.integers(1, 4), length=st.integers(2, 6))
def test_meter_matches_bruteforce(seed: int, V: int, n: int, length: int) -> None:
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, V, size=60).tolist()
    stats = {k: count_ngrams(np.array(stream), V, order=k) for k in (1, 2, 3)}
    windows = rng.integers(0, V, size=(n, length))  # includes contexts never seen (back-off)
    logits = rng.normal(size=(n, length - 1, V + 2)) * 2  # 2 padded logits beyond the vocabulary
    meter = DivergenceMeter(stats, chunk_elems=V * 3)  # several chunks per batch
    meter.update(torch.from_numpy(windows), torch.from_numpy(logits))
    got = meter.means()
    want = _oracle(stream, V, windows, logits[..., :V])
    for name in DIVERGENCE_PROBES:
        assert got[name].shape == (1,)
        assert got[name][0] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name


def test_context_rows_follow_backoff() -> None:
    stream = np.array([0, 1, 2, 0, 1, 3, 0, 1, 2])
    stats = count_ngrams(stream, 5, order=3)
    windows = np.array([[0, 1, 2, 4], [4, 4, 1, 0]])
    level, row = context_rows(stats, windows)
    # window 0: t=1 context (0) seen -> 1; t=2 (0,1) seen -> 2; t=3 (1,2) seen -> 2
    # window 1: t=1 (4) unseen -> 0; t=2 (4,4) and (4) unseen -> 0; t=3 (4,1): (1) seen -> 1
    assert level.tolist() == [[1, 2, 2], [0, 0, 1]]
    p = dense_probs(stats, level.reshape(-1), row.reshape(-1))
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[1], [0, 0, 2 / 3, 1 / 3, 0])  # after (0, 1): 2 twice, 3 once
    np.testing.assert_allclose(p[3], np.bincount(stream, minlength=5) / stream.size)  # unigram back-off


def test_zero_when_the_model_is_the_predictor_and_bounds() -> None:
    rng = np.random.default_rng(0)
    V = 6
    stream = rng.integers(0, V, size=500)
    stats = {1: count_ngrams(stream, V, order=1)}
    windows = rng.integers(0, V, size=(3, 8))
    uni = np.bincount(stream, minlength=V) / stream.size  # every token seen: full support
    logits = torch.from_numpy(np.broadcast_to(np.log(uni), (3, 7, V)).copy())
    meter = DivergenceMeter(stats, names=("kl_unigram", "js_unigram"))
    meter.update(windows, logits)
    m = meter.means()
    assert abs(m["kl_unigram"][0]) < 1e-12 and abs(m["js_unigram"][0]) < 1e-12


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 50))
def test_kl_nonnegative_js_bounded(seed: int, V: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V, 0.3), size=4)
    p[rng.random(p.shape) < 0.5] = 0.0  # sparse n-gram rows
    p[:, 0] += 1e-3
    p /= p.sum(1, keepdims=True)
    logq = torch.log_softmax(torch.from_numpy(rng.normal(size=(4, V)) * 5), -1)
    kl = kl_from_logits(torch.from_numpy(p), logq).numpy()
    js = js_from_logits(torch.from_numpy(p), logq).numpy()
    assert np.all(kl >= -1e-12)
    assert np.all(js >= -1e-12) and np.all(js <= math.log(2) + 1e-12)
    # disjoint supports reach ln 2
    p2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    far = torch.tensor([[-80.0, 0.0]], dtype=torch.float64).log_softmax(-1)
    assert js_from_logits(p2, far).item() == pytest.approx(math.log(2), abs=1e-9)


def test_meter_stacks_seeds_and_rejects_small_models() -> None:
    rng = np.random.default_rng(1)
    V = 5
    stats = {k: count_ngrams(rng.integers(0, V, 200), V, order=k) for k in (1, 2, 3)}
    windows = rng.integers(0, V, size=(2, 5))
    logits = torch.from_numpy(rng.normal(size=(3, 2, 4, V)))  # 3 models
    meter = DivergenceMeter(stats)
    meter.update(windows, logits)
    both = meter.means()
    for s in range(3):
        single = DivergenceMeter(stats)
        single.update(windows, logits[s])
        for name, val in single.means().items():
            assert both[name][s] == pytest.approx(val[0], rel=1e-12)
    with pytest.raises(ValueError, match="tokenizer it was trained with"):
        DivergenceMeter(stats).update(windows, logits[..., :3])
