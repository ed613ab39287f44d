"""Metropolis-Hastings throughput per depth: the batched fast path vs one chain at a time.

Run ``OMP_NUM_THREADS=1 python benchmarks/bench_mh.py`` (``--quick`` for a smoke run). For each
number of factored layers L it measures chain-tokens (chains x positions proposed) per CPU-second
(``time.process_time``, one torch thread, so other jobs on the machine do not count) of:

- before, 1:   the sampler as it was before issue 17: every proposal recomputes all T
               conditionals of the proposed sequence from scratch, each on its own masked copy
               through the whole network (kept below as the baseline), one chain at a time;
- prev inc, B: the previous incremental path (``start``/``propose``: rank-one update of the first
               layer, all (B, T, V) conditionals rebuilt and merged per proposal), B chains;
- after, 1:    the fast path (:class:`~dsb_widgets.incremental.SiteChains`, what ``dsb clone``
               runs), one chain;
- after, B:    the same, B chains batched.

Paths run interleaved, ``--rounds`` times (medians reported; the machine is shared). The ratio
``after, B / before, 1`` is the speed-up issue 17 asks for (>= 10x). Also printed: multiply-adds
per proposal and chain of both algorithms (``flops``), so the ratio splits into fewer operations
x faster operations. Model: the ``dsb clone`` sizes (V = 1,000 tokens, T = 16, d = 64, 4 heads,
softmax attention), untrained; acceptance per sweep of the after-B run is printed too.
Measured results are in ``RESULTS``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dsb_widgets.factored_attention import FactoredAttention, FactoredAttentionConfig, IncrementalConditionals
from dsb_widgets.mh_sampler import metropolis_hastings

RESULTS = """
Measured 2026-12-02 on the 2-core machine shared with ~6 other jobs (load 7-8), B = 512, pll
energy, chain-tokens per CPU-second, medians of 3 interleaved rounds; two whole runs (the
second after in-place buffers in the fast path):

L  before,1  prev inc,B  after,1  after,B  after,B / before,1   MACs before/after  FLOP ratio
1       881       5,497    2,316   12,757  14.5x  (run 1: 16.3x)     6.27M / 1.02M    6.1x
2       571       3,080    1,511    8,804  15.4x  (run 1: 10.7x)    11.51M / 1.42M    8.1x
3       435         989      926    2,216   5.1x  (run 1:  5.4x)    16.75M / 6.66M    2.5x
4       329         530      673    1,300   4.0x  (run 1:  3.7x)    22.00M / 11.90M   1.85x

Acceptance per sweep (after, B): 0.977-0.981 at every depth (untrained model); the fast path and
the generic loop give identical chains (tests/test_mh_sampler.py), so acceptance is unchanged.

>= 10x is reached for L = 1 and 2, NOT for L = 3 and 4, and cannot be with an exact PLL energy on
this CPU: every proposal needs the T conditionals of the proposed sequence, i.e. T masked copies.
After one layer the change at site t reaches every position of every copy (A1 is dense), and the
x^2 input of layer 2 then differs by 2 h_k * delta_k + delta_k^2, a different vector for each of
the T^2 (copy, position) pairs, each of which must go through V (d x H d): T^2 H d^2 + H T^3 d
MACs per middle layer, exactly what recomputing costs. Only the first layer (linear: rank-H
update) and the last (needed at each copy's own site only) get cheaper, so the FLOP ratio is
2.5x (L = 3) and 1.85x (L = 4). 10x then needs the fast path to run 4x / 5.4x more FLOP/s than the
one-chain baseline (14-18 GFLOP/s): 58-72 / 78-97 GFLOP/s sustained, at or above this machine's
one-thread sgemm peak (50-70 GFLOP/s under load, ~90 idle); measured 30-36 GFLOP/s (the middle
layer's mixing over T = 16 positions is a K = 16 or M = 16 product, ~25-35 GFLOP/s).
"""


def before_conditionals(model: FactoredAttention):  # the replaced implementation, as a baseline
    """B*T masked copies, each through every layer; only the masked position read out."""

    def fn(tokens: Tensor) -> Tensor:
        B, T = tokens.shape
        rows = tokens.repeat_interleave(T, dim=0)  # (B*T, T)
        pos = torch.arange(T).repeat(B)
        n = torch.arange(B * T)
        rows[n, pos] = model.cfg.mask_id
        x = model.embed(rows)
        h = model.layers[0](x)
        for k in range(1, len(model.layers)):
            h = h + model.layers[k](h * h)  # the residual x^2 layer (bench model: square_width None)
        return F.log_softmax(model._head(h[n, pos], pos), -1).view(B, T, -1)

    return fn


class PreviousIncremental:
    """The previous session's path: the start/propose protocol only (no ``begin``)."""

    def __init__(self, inc: IncrementalConditionals) -> None:
        self.start, self.propose = inc.start, inc.propose


def flops(L: int, T: int, d: int, H: int, V: int) -> tuple[int, int]:
    """Multiply-adds per proposal and chain: (before, after) (see dsb_widgets/incremental.py)."""
    layer = T * T * H * d * d + T**3 * H * d  # one layer on T masked copies: values + mixing
    before = L * layer + T * d * V
    after = T * d * V + (0 if L == 1 else T * T * H * d + T * (H * T * d + H * d * d) + (L - 2) * layer)
    return before, after


def throughput(fn: Any, B: int, T: int, V: int, sweeps: int) -> tuple[float, list[float]]:
    init = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(0))
    c0 = time.process_time()
    res = metropolis_hastings(fn, init, n_sweeps=sweeps, generator=torch.Generator().manual_seed(1))
    cpu = time.process_time() - c0
    return B * T * sweeps / cpu, [r["acceptance_rate"] for r in res.stats]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--chains", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--skip-prev", action="store_true", help="skip the slow 'prev inc, B' column")
    a = ap.parse_args()
    torch.set_num_threads(1)
    V, T, d, H = (200, 8, 16, 2) if a.quick else (1000, 16, 64, 4)
    B, rounds = (32, 1) if a.quick else (a.chains, a.rounds)
    print(f"V={V} T={T} d={d} heads={H}; chain-tokens per CPU-second (median of {rounds} interleaved rounds), "
          f"1 torch thread; B={B} chains")
    print(f"{'L':>2} {'before,1':>9} {'prev inc,B':>10} {'after,1':>9} {'after,B':>9} {'after,B/before,1':>17} "
          f"{'MACs before/after':>19} {'GFLOP/s before/after':>21}  acceptance per sweep (after,B)")
    for L in a.layers:
        torch.manual_seed(L)
        model = FactoredAttention(FactoredAttentionConfig(V, T, n_layers=L, n_heads=H, d_embed=d,
                                                          attention="softmax")).eval()
        inc = IncrementalConditionals(model)
        got: dict[str, list[float]] = {"b1": [], "pB": [], "a1": [], "aB": []}
        with torch.no_grad():
            got["pB"].append(float("nan") if a.skip_prev else throughput(PreviousIncremental(inc), B, T, V, 1)[0])
            for _ in range(rounds):
                got["b1"].append(throughput(before_conditionals(model), 1, T, V, 8)[0])
                got["a1"].append(throughput(inc, 1, T, V, 8)[0])
                aB, acc = throughput(inc, B, T, V, 2)
                got["aB"].append(aB)
        m = {k: statistics.median(v) for k, v in got.items()}
        fb, fa = flops(L, T, d, H, V)
        print(f"{L:>2} {m['b1']:>9,.0f} {m['pB']:>10,.0f} {m['a1']:>9,.0f} {m['aB']:>9,.0f} "
              f"{m['aB'] / m['b1']:>16.1f}x {fb / 1e6:>8.2f}M/{fa / 1e6:.2f}M "
              f"{2 * fb * m['b1'] / 1e9:>10.1f}/{2 * fa * m['aB'] / 1e9:<10.1f}  "
              + " ".join(f"{x:.3f}" for x in acc), flush=True)


if __name__ == "__main__":
    main()
