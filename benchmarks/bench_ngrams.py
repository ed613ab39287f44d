"""n-gram counting: np.unique (before) vs count_codes' dense bincount where V^k fits (after).

    python benchmarks/bench_ngrams.py --tokens 2000000 --vocab 1000

Random Zipf-like token streams; for k = 2 and 3 times ``np.unique(code, return_counts=True)``
and :func:`dsb_widgets.ngrams.count_codes` (dense bincount where V^k fits, else the same
np.unique), checks they agree and prints the ratio. Measured, never asserted by tests.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dsb_widgets.ngrams import count_codes


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--vocab", type=int, nargs="+", default=[256, 1000, 5000])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{args.tokens:,} tokens; CPU seconds (best of 3)")
    print(f"{'V':>6}{'k':>3}{'V^k':>16}{'np.unique':>11}{'count_codes':>13}{'speed-up':>10}  path")
    for V in args.vocab:
        p = 1.0 / np.arange(1, V + 1)
        x = rng.choice(V, size=args.tokens, p=p / p.sum()).astype(np.int64)
        for k in (2, 3):
            n = x.size - k + 1
            code = sum(x[i:i + n] * V ** (k - 1 - i) for i in range(k))
            ref = np.unique(code, return_counts=True)
            got = count_codes(code, V**k)
            assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1])
            t_u = best_of(lambda c=code: np.unique(c, return_counts=True))
            t_c = best_of(lambda c=code, m=V**k: count_codes(c, m))
            dense = V**k <= 2**24 and V**k <= 16 * code.size
            path = "dense" if dense else "unique"
            print(f"{V:>6}{k:>3}{V**k:>16,}{t_u:>11.3f}{t_c:>13.3f}{t_u / t_c:>9.2f}x  {path}")


if __name__ == "__main__":
    main()
