"""When does a BERT trained on real text stop improving on each clone? (issue 12, training half).

Trains a small BERT on the real corpus of a ``dsb clone`` folder at a constant learning rate and,
at log-spaced checkpoints (``--per-octave`` per doubling of the step), scores it *per sequence* on
``--n`` real test windows and on the first ``--n`` sequences of every clone in the folder, so that
eval noise and a bootstrap clustered by MH chain can be computed afterwards (``analyse.py``).

It mirrors ``dsb run clones`` (Rende, Gerace, Laio, Goldt, NeurIPS 2024, "A distributional
simplicity bias in the learning dynamics of transformers"): the same ``Bert``, BERT 80/10/10
training masks, pure-[MASK] probes at 15 %, AdamW betas (0.9, 0.95), weight decay 0.01 on the
>= 2-D weights only, lr warm-up over ``--warmup`` steps then CONSTANT,
lr_t = lr * min(1, (t + 1) / warmup). The one difference: only the masked positions go through
the read-out, which gives the same loss (mean cross-entropy over masked positions) for less work.

How to run the pipeline (dsb clone -> sat_run.py -> sat_eval.py -> analyse.py): README.md in this folder.

Measured (TinyStories, gpt2 tokens top-1,000, T = 16, 2/3-body clones with 128 chains; BERT
2 layers x d 64, lr 1e-3 constant, 30,000 steps, batch 64; seeds 0 and 1): the loss on the
2-body clone stops improving at ~5.5k steps (5,312 / 5,793, then rises), on the 3-body clone at
~1e4 (12,634 / 9,742), and on real text it is still falling at 3e4. Cost: ~13 CPU-min per seed
at 1 thread (735 CPU-s for this script at the defaults, plus ``sat_eval.py``).

Output (``--out``, rewritten every 8 checkpoints so a partial run can be analysed): ``steps``
(C,), ``cpu`` (C,) CPU-seconds, ``train`` (C,) EMA of the training loss, ``names`` (P,) probe
names, ``counts`` (P, n) masked positions per sequence, ``sums`` (P, C, n) summed cross-entropy
(nats) per sequence, ``args`` (JSON of the arguments).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import load_probes  # this folder (on sys.path when run as a script)

from dsb_widgets.clones import windows
from dsb_widgets.engine.schedule import log_checkpoints
from dsb_widgets.models.bert import IGNORE, Bert, BertConfig, mask_tokens

EVAL_CHUNK = 1024  # sequences per forward pass when scoring probes
MASK_SEED = 99  # probe masks: probe i uses seed MASK_SEED + i

Probes = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (x, y), each (n, T); y = IGNORE where unmasked


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clones", required=True, help="folder written by `dsb clone`")
    ap.add_argument("--out", required=True, help="output .npz (rewritten as the run goes)")
    ap.add_argument("--data-dir", default=os.environ.get("DSB_DATA_DIR"),
                    help="local data folder holding the corpus (default: $DSB_DATA_DIR)")
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=64)
    ap.add_argument("--n", type=int, default=1280, help="probe sequences per probe set")
    ap.add_argument("--per-octave", type=int, default=8, help="checkpoints per doubling of the step")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--mask-prob", type=float, default=0.15)
    ap.add_argument("--mask-seed", type=int, default=MASK_SEED, help="probe i is masked with seed MASK_SEED + i")
    ap.add_argument("--save-dir", default=None, help="folder for step{N:06d}.pt state dicts (for sat_eval.py)")
    a = ap.parse_args(argv)
    if not a.data_dir:
        raise SystemExit("sat_run.py: error: no data folder: pass --data-dir or set $DSB_DATA_DIR")
    return a


def masked_ce_sums(model: Bert, x: torch.Tensor, y: torch.Tensor, chunk: int) -> np.ndarray:
    """Summed cross-entropy over the masked positions of each sequence: (n,) float64."""
    sums = np.zeros(x.shape[0])
    for i in range(0, x.shape[0], chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        sel = yb != IGNORE
        ce = F.cross_entropy(model.head(model.features(xb)[sel]), yb[sel], reduction="none")
        rows = torch.nonzero(sel)[:, 0]
        sums[i:i + chunk] = torch.zeros(xb.shape[0], dtype=torch.float64).index_add_(0, rows, ce.double()).numpy()
    return sums


@torch.no_grad()
def evaluate(model: Bert, probes: Probes) -> dict[str, np.ndarray]:
    model.eval()
    res = {k: masked_ce_sums(model, x, y, EVAL_CHUNK) for k, (x, y) in probes.items()}
    model.train()
    return res


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(1)
    if a.save_dir:
        os.makedirs(a.save_dir, exist_ok=True)
    cp = load_probes(a.clones, a.data_dir, a.n)
    tc, V, T, raw = cp.corpus, cp.vocab, cp.context, cp.raw
    probes: Probes = {
        k: mask_tokens(v, torch.Generator().manual_seed(a.mask_seed + i), V, p=a.mask_prob, random_frac=0.0,
                       keep_frac=0.0)
        for i, (k, v) in enumerate(raw.items())
    }
    counts = {k: (y != IGNORE).sum(1).numpy() for k, (_, y) in probes.items()}

    torch.manual_seed(a.seed)
    model = Bert(BertConfig(V, T, n_layer=a.n_layer, n_head=a.n_head, d_model=a.d_model))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))  # the engine's: decay on >= 2-D weights only
    marks = log_checkpoints(a.steps, a.per_octave)
    gen = torch.Generator().manual_seed(a.seed + 1)

    hist: dict[str, list[np.ndarray]] = {k: [] for k in probes}
    cpu: list[float] = []
    trl: list[float] = []
    ema: float | None = None
    t0 = time.process_time()
    for step in range(a.steps + 1):
        if step in marks:
            if a.save_dir:
                torch.save(model.state_dict(), f"{a.save_dir}/step{step:06d}.pt")
            r = evaluate(model, probes)
            for k in probes:
                hist[k].append(r[k])
            cpu.append(time.process_time() - t0)
            trl.append(ema if ema is not None else math.nan)
            if len(cpu) % 8 == 0 or step == a.steps:
                losses = " ".join(f"{k} {r[k].sum() / counts[k].sum():.3f}" for k in probes)
                print(step, f"cpu {cpu[-1]:.0f}s", losses, flush=True)
                np.savez(a.out, steps=np.array(marks[:len(cpu)]), cpu=np.array(cpu), train=np.array(trl),
                         names=np.array(list(probes)), counts=np.stack([counts[k] for k in probes]),
                         sums=np.stack([np.stack(hist[k]) for k in probes]), args=json.dumps(vars(a)))
        if step == a.steps:
            break
        for grp in opt.param_groups:
            grp["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
        x, y = mask_tokens(windows(tc.train, T, a.batch, gen), gen, V, p=a.mask_prob)
        sel = y != IGNORE
        loss = F.cross_entropy(model.head(model.features(x)[sel]), y[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = loss.item()
        ema = lv if ema is None else 0.99 * ema + 0.01 * lv
    print("done", f"cpu {time.process_time() - t0:.0f}s")


if __name__ == "__main__":
    main()
