"""Why does parallel tempering not mix, and which ladder does? (issue 12)

Loads the factored models a ``dsb clone`` run saved (``DIR/model_L{L}.pt``), starts chains from the
same test windows ``dsb clone`` uses, and runs MH with the ``dsb clone`` stationarity criterion
(unchanged: split-R-hat < 1.05 and drift < 2 s.e. over W = max(10, 20 tau)) under a given ladder.
Prints one JSON line per run: pass/fail, sweeps, tau, W, R-hat, drift, MH acceptance, MH CPU-s, and the
ladder diagnostics of :class:`dsb_widgets.mh_tempering.Ladder` (swap rate per adjacent pair, tau and
acceptance per temperature, round trips).

    OMP_NUM_THREADS=1 DSB_DATA_DIR=../shared/data python benchmarks/clone_stationarity/ladder_diag.py \
        --dir /tmp/ts --corpus tinystories --layers 3 --chains 128 --temperatures 8 --beta-min 0.3 \
        --sweeps 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from dsb_widgets.clones import CloneConfig, windows
from dsb_widgets.data.text import tokenize_corpus
from dsb_widgets.factored_attention import FactoredAttention, FactoredAttentionConfig, IncrementalConditionals
from dsb_widgets.mh_sampler import metropolis_hastings
from dsb_widgets.mh_tempering import geometric_ladder


def load_model(path: str) -> FactoredAttention:
    rec = torch.load(path, weights_only=True)
    model = FactoredAttention(FactoredAttentionConfig(**rec["config"]))
    model.load_state_dict(rec["state_dict"])
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="a dsb clone output folder (model_L{L}.pt)")
    ap.add_argument("--corpus", default="tinystories")
    ap.add_argument("--layers", type=int, nargs="+", default=[1])
    ap.add_argument("--chains", type=int, default=128)
    ap.add_argument("--temperatures", type=int, default=8)
    ap.add_argument("--beta-min", type=float, default=0.3)
    ap.add_argument("--swap-rounds", type=int, default=1)
    ap.add_argument("--tempered-proposals", action="store_true")
    ap.add_argument("--sweeps", type=int, default=2000)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = CloneConfig(corpus=a.corpus, seed=a.seed, data_dir=os.environ.get("DSB_DATA_DIR"))
    tc = tokenize_corpus(cfg.corpus, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size, data_dir=cfg.data_dir)
    for L in a.layers:
        model = load_model(os.path.join(a.dir, f"model_L{L}.pt"))
        init = windows(tc.test, cfg.context, a.chains, torch.Generator().manual_seed(cfg.seed + 13 * L))
        gen = torch.Generator().manual_seed(cfg.seed + 17 * L)
        c0 = time.process_time()

        def progress(row: dict[str, float], c0: float = c0, L: int = L) -> None:  # one stderr line per 100 sweeps
            if int(row["sweep"]) % 100 == 99:
                print(f"L={L} sweep {int(row['sweep']) + 1} E {row['mean_energy']:.2f} "
                      f"cpu {time.process_time() - c0:.0f}", file=sys.stderr, flush=True)

        res = metropolis_hastings(IncrementalConditionals(model), init, n_sweeps=a.sweeps, generator=gen,
                                  on_sweep=progress,
                                  until_stationary=a.window, window_tau=20.0,
                                  betas=geometric_ladder(a.temperatures, a.beta_min), swap_rounds=a.swap_rounds,
                                  tempered_proposals=a.tempered_proposals)
        cpu = time.process_time() - c0
        st = res.stationarity or {}
        out = {"tag": a.tag, "corpus": a.corpus, "L": L, "chains": a.chains, "K": a.temperatures,
               "beta_min": a.beta_min, "swap_rounds": a.swap_rounds, "tempered_proposals": a.tempered_proposals,
               "seed": a.seed, "stationary": st.get("stationary"), "sweeps": len(res.stats),
               "tau": st.get("tau"), "W": st.get("window"), "rhat": st.get("rhat"),
               "drift_z": st.get("drift", float("nan")) / max(st.get("drift_se", float("nan")), 1e-12),
               "acceptance": res.acceptance_rate, "mh_cpu_s": cpu, "cpu_per_sweep": cpu / len(res.stats),
               "e_last": float(res.energies[-50:].double().mean()) if res.energies is not None else None,
               "history": [(h["sweeps"], round(h["tau"], 1), round(h["rhat"], 3)) for h in st.get("history", [])][-8:],
               "ladder": res.tempering}
        print(json.dumps(out), flush=True)
        if res.energies is not None and os.environ.get("LADDER_TRACE_DIR"):
            torch.save(res.energies, os.path.join(os.environ["LADDER_TRACE_DIR"], f"trace_{a.tag}_L{L}.pt"))


if __name__ == "__main__":
    main()
