"""Score saved BERT checkpoints per sequence on real text and every clone (issue 12, eval half).

Loads every ``step*.pt`` state dict that ``sat_run.py --save-dir`` wrote and scores it, per
sequence, on ``--n`` real test windows and the first ``--n`` sequences of every clone now in the
``dsb clone`` folder (pure-[MASK] probes at ``--mask-prob``, no random or kept tokens; real windows
and masks drawn exactly as in ``sat_run.py``, so with ``--masks 1`` the probes are the same).
``--masks`` > 1 scores ``--masks`` independent maskings of each sequence and sums them, to shrink
the eval noise. This is how the issue-12 3-body curve was measured: the BERT runs trained while
the 3-body clone was still sampling, and this script scored their checkpoints afterwards
(Rende, Gerace, Laio, Goldt, NeurIPS 2024: a BERT trained on real text learns the low-order
clones first).

How to run the pipeline (dsb clone -> sat_run.py -> sat_eval.py -> analyse.py): README.md in this folder.

Measured (TinyStories, gpt2 tokens top-1,000, T = 16, 2/3-body clones with 128 chains; BERT
2 layers x d 64, lr 1e-3 constant, 30,000 steps; seeds 0 and 1): the 2-body clone stops
improving at ~5.5k steps (5,312 / 5,793), the 3-body clone at ~1e4 (12,634 / 9,742), real text
is still falling at 3e4. Cost: ~13 CPU-min per seed at 1 thread, most of it training
(``sat_run.py``: 735 CPU-s); this script prints its own CPU-seconds (``eval cpu``).

Output (``--out`` .npz): ``steps`` (C,), ``names`` (P,), ``sums`` (P, C, n) summed
cross-entropy (nats) per sequence over all its maskings, ``counts`` (P, n) masked positions per
sequence over all its maskings, ``pll`` (JSON: each clone's test pseudo-log-likelihood from the
clone provenance). The same layout as ``sat_run.py``'s, which ``analyse.py`` reads.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import load_probes  # this folder (on sys.path when run as a script)

from dsb_widgets.models.bert import IGNORE, Bert, BertConfig, mask_tokens

EVAL_CHUNK = 2048  # sequences per forward pass
PROBE_SEED = 1234  # real test windows (as sat_run.py)
MASK_SEED = 99  # masking r of probe i uses seed MASK_SEED + i + 1000 r (r = 0: sat_run.py's masks)

Probes = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (x, y), each (masks * n, T)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clones", required=True, help="folder written by `dsb clone`")
    ap.add_argument("--ckpts", required=True, help="folder of step*.pt files from sat_run.py --save-dir")
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--n", type=int, default=1280, help="probe sequences per probe set")
    ap.add_argument("--data-dir", default=os.environ.get("DSB_DATA_DIR"),
                    help="local data folder holding the corpus (default: $DSB_DATA_DIR)")
    ap.add_argument("--mask-prob", type=float, default=0.15)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--masks", type=int, default=1, help="independent maskings per sequence")
    a = ap.parse_args(argv)
    if not a.data_dir:
        raise SystemExit("sat_eval.py: error: no data folder: pass --data-dir or set $DSB_DATA_DIR")
    return a


def masked_ce_sums(model: Bert, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the masked positions of each row of x: (rows,) float64."""
    tot = torch.zeros(x.shape[0], dtype=torch.float64)
    for i in range(0, x.shape[0], EVAL_CHUNK):
        xb, yb = x[i:i + EVAL_CHUNK], y[i:i + EVAL_CHUNK]
        sel = yb != IGNORE
        ce = F.cross_entropy(model.head(model.features(xb)[sel]), yb[sel], reduction="none")
        rows = torch.nonzero(sel)[:, 0]
        tot[i:i + EVAL_CHUNK] = torch.zeros(xb.shape[0], dtype=torch.float64).index_add_(0, rows, ce.double())
    return tot


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.process_time()
    cp = load_probes(a.clones, a.data_dir, a.n)
    V, T, raw = cp.vocab, cp.context, cp.raw
    probes: Probes = {}
    for i, (k, v) in enumerate(raw.items()):
        masked = [mask_tokens(v, torch.Generator().manual_seed(MASK_SEED + i + 1000 * r), V, p=a.mask_prob,
                              random_frac=0.0, keep_frac=0.0) for r in range(a.masks)]
        xs, ys = zip(*masked)
        probes[k] = (torch.cat(xs), torch.cat(ys))  # sequence j's r-th masking is row r * n + j

    model = Bert(BertConfig(V, T, n_layer=a.n_layer, n_head=a.n_head, d_model=a.d_model)).eval()
    files = sorted(glob.glob(f"{a.ckpts}/step*.pt"))
    steps = [int(f.split("step")[-1][:-3]) for f in files]
    sums = np.zeros((len(probes), len(files), a.n))
    counts = np.stack([(y != IGNORE).sum(1).view(a.masks, a.n).sum(0).numpy() for _, y in probes.values()])
    with torch.no_grad():
        for c, f in enumerate(files):
            model.load_state_dict(torch.load(f, weights_only=True))
            for pi, (x, y) in enumerate(probes.values()):
                sums[pi, c] = masked_ce_sums(model, x, y).view(a.masks, a.n).sum(0).numpy()
    pll = json.dumps(cp.test_pll)
    np.savez(a.out, steps=np.array(steps), names=np.array(list(probes)), sums=sums, counts=counts, pll=pll)
    print("eval cpu", time.process_time() - t0)


if __name__ == "__main__":
    main()
