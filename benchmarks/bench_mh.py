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
- after, B:    the same, B chains batched;
- ref, B:      with ``--ref REV``: the fast path (``incremental.py`` and ``mh_sampler.py``) as it was at git
               revision REV, B chains, loaded from ``git show`` into throw-away modules, so that the gain of
               this revision over REV is measured side by side in the same run (``after,B / ref,B``).

Paths run interleaved, ``--rounds`` times (medians reported; the machine is shared). The ratio
``after, B / before, 1`` is the speed-up issue 17 asks for (>= 10x). Also printed: multiply-adds
per proposal and chain of both algorithms (``flops``), so the ratio splits into fewer operations
x faster operations. Model: the ``dsb clone`` sizes (V = 1,000 tokens, T = 16, d = 64, 4 heads,
softmax attention), untrained; acceptance per sweep of the after-B run is printed too. ``--gemm``
first prints the one-thread fp32 GEMM throughput of large square products and of the shapes the
fast path multiplies, the ceiling any speed-up runs into. Measured results are in ``RESULTS``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dsb_widgets.factored_attention import FactoredAttention, FactoredAttentionConfig, IncrementalConditionals
from dsb_widgets.mh_sampler import metropolis_hastings

RESULTS = """
Measured 2026-12-02 16:32-16:45 UTC on the 2-core machine shared with other jobs (load 8-13), B = 512,
pll energy, chain-tokens per CPU-second, medians of 3 interleaved rounds, two whole runs
(``--gemm --rounds 3 --ref d4012de``; ref = the fast path at the start of this session, same run):

L  before,1     prev inc,B    after,1      ref,B          after,B        after,B/before,1  ref,B/before,1  after/ref
1  1,439/1,510  10,466/10,373 3,169/3,240  18,371/19,099  21,817/22,946  15.2x / 15.2x   12.8x / 12.6x   1.19 / 1.20x
2  1,030/1,080   5,516/5,422  2,466/2,586  11,404/12,178  13,967/14,252  13.6x / 13.2x   11.1x / 11.3x   1.22 / 1.17x
3    739/808     1,429/1,387  1,402/1,545   3,597/3,608    4,727/4,498    6.4x /  5.6x    4.9x /  4.5x   1.31 / 1.25x
4    740/479       920/749    1,318/1,164   2,347/1,935    3,020/2,727    4.1x /  5.7x    3.2x /  4.0x   1.29 / 1.41x

MACs per chain-token before/after: 6.27M/0.96M, 11.51M/1.33M, 16.75M/6.24M, 22.00M/11.16M; sustained
GFLOP/s after,B: 42-44, 37-38, 56-59, 61-67 (before,1: 18-19, 24-25, 25-27, 21-33). Acceptance per
sweep (after,B) 0.977-0.981 at every depth (untrained model); fast path and generic loop give identical
chains (tests/test_mh_sampler.py). Two earlier whole runs of the intermediate revision 2512f1b (values-
first middle layers, 4 chains at a time) gave after/ref 1.19-1.21 / 1.23-1.27 / 1.33-1.34 / 1.21-1.27x.
The previous session measured 14.3-14.8 / 12.8-13.0 / 6.7-6.8 / 5.1x with the ref path on a quieter
machine: the baseline (one chain, small working set) suffers less from the load, so compare after/ref.

One-thread fp32 GEMM (torch.mm, out=), same runs: 1024^2 90.5/97.0 GFLOP/s, 2048^2 84.4/98.8 (125-160 on a quiet
machine in an earlier session); the fast path's shapes (blocks of 64, middle layers 8 at a time): middle values
(1920, 64) x (64, 64) 83.3/94.8, middle mixing (16, 16) x (16, 7680) 61.2/75.3, read-out (960, 64) x
(64, 1000) 83.0/95.0, last values (960, 256) x (256, 64) 88.3/94.7.

Quiet machine (2026-12-03 10:08-10:11 UTC, load average 0.0-0.1, nothing else running; ``--gemm --rounds 3
--skip-prev`` at eb18497, one whole run): before,1 2,193 / 1,480 / 1,070 / 819 and after,B 24,952 / 16,837 /
5,373 / 3,246 chain-tokens per CPU-s at L = 1 / 2 / 3 / 4: 11.4x / 11.4x / 5.0x / 4.0x, sustained 47.9 /
44.7 / 67.1 / 72.5 GFLOP/s (before,1: 27.5-36.0). GEMM peak 100.1 (1024^2) / 95.7 (2048^2) GFLOP/s, the
fast path's shapes 71.4-92.4. The one-chain baseline gains the most from the quiet (L = 3: 1,070/s vs
739-808 loaded), so the ratios are lower than under load, not higher as the extrapolation above assumed.
This is the measured ceiling: even at the whole 100 GFLOP/s peak with no other work, 6.24M MACs per
chain-token cap L = 3 at 8,013/s = 7.5x of 1,070, and 11.16M cap L = 4 at 4,480/s = 5.5x of 819.

>= 10x is reached for L = 1 and 2, NOT for L = 3 and 4 (FLOP argument in dsb_widgets/incremental.py:
at L = 3 10x of the baseline needs 92-101 GFLOP/s sustained under this load, the whole GEMM peak; at
L = 4 107-165). A profile of the L = 3 path: GEMMs 73% of the time, log_softmax 3.5%, the rest ~20
small copies, squares and gathers per block.
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


def load_revision(rev: str) -> tuple[ModuleType, ModuleType]:
    """``dsb_widgets/incremental.py`` and ``mh_sampler.py`` as they were at git revision ``rev``, as modules."""
    root = Path(__file__).resolve().parents[1]
    mods = []
    for name in ("incremental", "mh_sampler"):
        src = subprocess.run(["git", "show", f"{rev}:dsb_widgets/{name}.py"], cwd=root, check=True,
                             capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / f"ref_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"ref_{name}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


class RefFastPath:
    """The reference revision's fast path: ``begin`` builds its SiteChains (run by its own sampler)."""

    def __init__(self, model: FactoredAttention, incremental: ModuleType) -> None:
        self.model, self.incremental = model, incremental

    def begin(self, tokens: Tensor, energy: str = "pll") -> Any:
        return self.incremental.SiteChains(self.model, tokens, energy)


def flops(L: int, T: int, d: int, H: int, V: int) -> tuple[int, int]:
    """Multiply-adds per proposal and chain: (before, after) (see dsb_widgets/incremental.py).
    The fast path recomputes the P = T - 1 copies other than the resampled site's."""
    layer = T * T * H * d * d + T**3 * H * d  # one layer on T masked copies: values + mixing
    before = L * layer + T * d * V
    P = T - 1
    after = P * d * V  # read-out of the P conditionals
    if L >= 2:
        after += P * T * H * d + P * (H * T * d + H * d * d)  # copies' first layer, last layer at the own site
        after += (L - 2) * P * (T * H * d * d + H * T * T * d)  # middle layers, every position of every copy
    return before, after


def gemm_rates(reps: float = 2e9) -> None:
    """One-thread fp32 GFLOP/s of large square products and of the shapes SiteChains multiplies
    (blocks of n = 64 chains, middle layers 8 at a time; T = 16, P = 15 copies, d = 64, H = 4, V = 1000),
    matmul/mm with ``out=``."""
    n, k, T, P, d, H, V = 64, 8, 16, 15, 64, 4, 1000
    shapes = [("square 1024", 1024, 1024, 1024), ("square 2048", 2048, 2048, 2048),
              ("middle values W^h V^h (T P 8, d) x (d, d)", T * k * P, d, d),
              ("middle mixing A^h z (T, T) x (T, P 8 d)", T, T, k * P * d),
              ("read-out (P n, d) x (d, V)", P * n, d, V), ("last values (P n, H d) x (H d, d)", P * n, H * d, d)]
    for name, M, K, N in shapes:
        a, b, o = torch.randn(M, K), torch.randn(K, N), torch.empty(M, N)
        torch.mm(a, b, out=o)
        k = max(3, int(reps / (M * K * N)))
        c0 = time.process_time()
        for _ in range(k):
            torch.mm(a, b, out=o)
        print(f"  {name:44s} {2 * M * K * N * k / (time.process_time() - c0) / 1e9:6.1f} GFLOP/s", flush=True)


def throughput(fn: Any, B: int, T: int, V: int, sweeps: int, sampler: Any = metropolis_hastings,
               ) -> tuple[float, list[float]]:
    init = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(0))
    c0 = time.process_time()
    res = sampler(fn, init, n_sweeps=sweeps, generator=torch.Generator().manual_seed(1))
    cpu = time.process_time() - c0
    return B * T * sweeps / cpu, [r["acceptance_rate"] for r in res.stats]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--chains", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--skip-prev", action="store_true", help="skip the slow 'prev inc, B' column")
    ap.add_argument("--gemm", action="store_true", help="first print one-thread GEMM GFLOP/s (peak and our shapes)")
    ap.add_argument("--ref", default=None, help="git revision whose fast path runs side by side (column ref,B)")
    ap.add_argument("--sweeps", type=int, default=2, help="sweeps per batched run")
    a = ap.parse_args()
    ref = load_revision(a.ref) if a.ref else None
    torch.set_num_threads(1)
    if a.gemm:
        print("one-thread fp32 GEMM throughput (torch.mm, out=):")
        gemm_rates(2e8 if a.quick else 2e9)
    V, T, d, H = (200, 8, 16, 2) if a.quick else (1000, 16, 64, 4)
    B, rounds = (32, 1) if a.quick else (a.chains, a.rounds)
    print(f"V={V} T={T} d={d} heads={H}; chain-tokens per CPU-second (median of {rounds} interleaved rounds), "
          f"1 torch thread; B={B} chains")
    print(f"{'L':>2} {'before,1':>9} {'prev inc,B':>10} {'after,1':>9} {'ref,B':>9} {'after,B':>9} "
          f"{'after,B/before,1':>17} {'ref,B/before,1':>15} {'after/ref':>9} "
          f"{'MACs before/after':>19} {'GFLOP/s before/after':>21}  acceptance per sweep (after,B)")
    for L in a.layers:
        torch.manual_seed(L)
        model = FactoredAttention(FactoredAttentionConfig(V, T, n_layers=L, n_heads=H, d_embed=d,
                                                          attention="softmax")).eval()
        inc = IncrementalConditionals(model)
        got: dict[str, list[float]] = {"b1": [], "pB": [], "a1": [], "rB": [], "aB": []}
        with torch.no_grad():
            got["pB"].append(float("nan") if a.skip_prev else throughput(PreviousIncremental(inc), B, T, V, 1)[0])
            for _ in range(rounds):
                got["b1"].append(throughput(before_conditionals(model), 1, T, V, 16)[0])
                got["a1"].append(throughput(inc, 1, T, V, 16)[0])
                if ref is not None:
                    rfn = RefFastPath(model, ref[0])
                    got["rB"].append(throughput(rfn, B, T, V, a.sweeps, ref[1].metropolis_hastings)[0])
                aB, acc = throughput(inc, B, T, V, a.sweeps)
                got["aB"].append(aB)
        m = {k: statistics.median(v) if v else float("nan") for k, v in got.items()}
        fb, fa = flops(L, T, d, H, V)
        print(f"{L:>2} {m['b1']:>9,.0f} {m['pB']:>10,.0f} {m['a1']:>9,.0f} {m['rB']:>9,.0f} {m['aB']:>9,.0f} "
              f"{m['aB'] / m['b1']:>16.1f}x {m['rB'] / m['b1']:>14.1f}x {m['aB'] / m['rB']:>8.2f}x "
              f"{fb / 1e6:>8.2f}M/{fa / 1e6:.2f}M "
              f"{2 * fb * m['b1'] / 1e9:>10.1f}/{2 * fa * m['aB'] / 1e9:<10.1f}  "
              + " ".join(f"{x:.3f}" for x in acc), flush=True)


if __name__ == "__main__":
    main()
