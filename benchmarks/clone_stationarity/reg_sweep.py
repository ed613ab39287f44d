"""Does regularising the factored models' couplings make their MH clones stationary? (issue 12)

For each weight decay (``--wd``, AdamW on the coupling-carrying weights,
:func:`dsb_widgets.clones.coupling_parameters`) train the ``dsb clone`` factored models at depths
``--layers`` (grown, as ``dsb clone`` does), then run MH (PLL target, the ``dsb clone`` stationarity
criterion) and print one JSON line per (wd, L):

- test_pll: held-out pseudo-likelihood (nats/token) -- the ONLY number a regulariser strength may be
  chosen by;
- e_data: mean E_pll = -sum_t log p(s_t | s_-t) of held-out windows under the same model; e_chain:
  the chains' mean E_pll over the last window; gap = e_chain - e_data (a generative-consistency check:
  a model's samples should sit near the data's energy level);
- tau, W, R-hat, drift / s.e., stationary, sweeps, acceptance; CPU-s of training and sampling.

Run ``OMP_NUM_THREADS=1 python benchmarks/clone_stationarity/reg_sweep.py --corpus tinystories
--layers 1 --wd 0 0.1 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch

from dsb_widgets.clones import CloneConfig, _ladder, train_factored, windows
from dsb_widgets.data.text import tokenize_corpus
from dsb_widgets.factored_attention import FactoredAttention, IncrementalConditionals
from dsb_widgets.mh_sampler import metropolis_hastings


def e_pll(model: FactoredAttention, x: torch.Tensor) -> torch.Tensor:
    """E_pll of each window (N,)."""
    with torch.no_grad():
        lp = model.conditionals(x, chunk=256)
        return -lp.gather(2, x[..., None])[..., 0].sum(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="tinystories")
    ap.add_argument("--layers", type=int, nargs="+", default=[1])
    ap.add_argument("--wd", type=float, nargs="+", default=[0.0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--sweeps", type=int, default=800)
    ap.add_argument("--temperatures", type=int, default=1)
    ap.add_argument("--vocab-size", type=int, default=1000)
    ap.add_argument("--eval-windows", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-trace", help="folder: save each run's per-chain energy trace (S + 1, chains) there")
    ap.add_argument("--mh-layers", type=int, nargs="*", help="run MH only at these depths (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    base = CloneConfig(corpus=a.corpus, layers=tuple(a.layers), steps=a.steps, chains=a.chains,
                       sweeps=max(a.sweeps, 20), temperatures=a.temperatures, vocab_size=a.vocab_size,
                       eval_windows=a.eval_windows,
                       seed=a.seed, data_dir=os.environ.get("DSB_DATA_DIR"))
    tc = tokenize_corpus(base.corpus, tokenizer=base.tokenizer, vocab_size=base.vocab_size, data_dir=base.data_dir)
    held = windows(tc.test, base.context, base.eval_windows, torch.Generator().manual_seed(base.seed + 1))
    for wd in a.wd:
        cfg = replace(base, weight_decay=wd)
        prev = None
        for stage, L in enumerate(sorted(a.layers)):
            c0 = time.process_time()
            model, losses = train_factored(tc.train, tc.test, L, cfg, tc.vocab_size, progress=False,
                                           init_from=prev, stage=stage)
            prev = model
            cpu_train = time.process_time() - c0
            e_data = e_pll(model, held)
            if a.sweeps == 0 or (a.mh_layers is not None and L not in a.mh_layers):  # held-out PLL only
                print(json.dumps({"corpus": a.corpus, "L": L, "wd": wd, "steps": a.steps,
                                  "train_pll": losses["train_pll"],
                                  "test_pll": losses["test_pll"], "e_data": float(e_data.mean()),
                                  "cpu_train": cpu_train}), flush=True)
                continue
            init = windows(tc.test, cfg.context, cfg.chains, torch.Generator().manual_seed(cfg.seed + 13 * L))
            c0 = time.process_time()
            res = metropolis_hastings(IncrementalConditionals(model), init, n_sweeps=cfg.sweeps,
                                      generator=torch.Generator().manual_seed(cfg.seed + 17 * L),
                                      until_stationary=cfg.window, window_tau=cfg.window_tau, betas=_ladder(cfg),
                                      on_sweep=lambda r: None if int(r["sweep"]) % 100 else print(
                                          f"  sweep {int(r['sweep'])} E {r['mean_energy']:.2f} "
                                          f"acc {r['acceptance_rate']:.3f}", flush=True))
            cpu_mh = time.process_time() - c0
            assert res.energies is not None and res.stationarity is not None
            st = res.stationarity
            tr = res.energies.double()  # (S + 1, chains at beta = 1)
            W = int(st["window"])
            fin = res.final
            distinct = float(np.mean([len(set(r.tolist())) for r in fin]))
            row = {"corpus": a.corpus, "L": L, "wd": wd, "steps": a.steps, "chains": a.chains,
                   "temperatures": a.temperatures, "train_pll": losses["train_pll"], "test_pll": losses["test_pll"],
                   "e_data": float(e_data.mean()), "e_data_sd": float(e_data.std()),
                   "e_chain": float(tr[-W:].mean()), "gap": float(tr[-W:].mean() - e_data.mean()),
                   "e_at": {str(k): float(tr[k].mean()) for k in (0, 50, 100, 200, 400, 800, 1600, 3200)
                            if k < tr.shape[0]},
                   "sweeps": len(res.stats), "stationary": st["stationary"], "tau": st.get("tau"), "W": W,
                   "rhat": st["rhat"], "drift_z": st["drift"] / max(st["drift_se"], 1e-12),
                   "acceptance": res.acceptance_rate, "distinct_tokens_final": distinct,
                   "cpu_train": cpu_train, "cpu_mh": cpu_mh,
                   "sample": " | ".join("".join(tc.token_strings[t] for t in fin[i].tolist()) for i in range(3))}
            print(json.dumps(row), flush=True)
            if a.save_trace:
                os.makedirs(a.save_trace, exist_ok=True)
                torch.save({"row": row, "energies": res.energies, "history": st.get("history")},
                           os.path.join(a.save_trace, f"{a.corpus}_L{L}_wd{wd:g}_K{a.temperatures}.pt"))


if __name__ == "__main__":
    main()
