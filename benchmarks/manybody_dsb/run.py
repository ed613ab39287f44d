"""The DSB stage of the many-body ladder (Rende, Gerace, Laio, Goldt, NeurIPS 2024; issue 12) at
the ladder's full default size, in stages that save as they go (results: README.md here):

    python benchmarks/manybody_dsb/run.py probes --out DIR          # data, factored models, MH clones
    python benchmarks/manybody_dsb/run.py bert --out DIR --seed 0   # a BERT on the true data, checkpoints
    python benchmarks/manybody_dsb/run.py eval --out DIR            # every checkpoint on every probe
    python benchmarks/manybody_dsb/run.py report --out DIR          # saturation steps, ordering, distances

``bert`` needs only the true data (regenerated exactly, :func:`~dsb_widgets.manybody_dsb.ladder_data`),
so the BERT seeds can train while the clones are sampled; ``eval`` scores whatever checkpoints
exist (a run stopped part-way gives shorter curves). ``--small``: a toy instance (L=10, q=5) to
measure CPU-s first. One call does all of it: :func:`dsb_widgets.manybody_dsb.ladder_dsb`.
Set OMP_NUM_THREADS=1; ``--threads`` sets torch's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from dsb_widgets.manybody_dsb import (
    LadderProbes,
    assemble_dsb,
    curves_dataset,
    ladder_data,
    ladder_probes,
    log_marks,
    masked_probes,
    probe_losses,
    train_bert,
)
from dsb_widgets.models.bert import Bert, BertConfig

SMALL: dict[str, Any] = dict(L=10, q=5, n_train=2000, n_bert_train=8000, steps=100, d_embed=16, n_heads=2,
                             chains=128, burn_in=20, clone_chains=64, max_sweeps=80, n_probe=1024)
FULL: dict[str, Any] = {}  # ladder_probes' defaults: the ladder's (L=20, q=10, 25,600 sequences for the factored
# models) plus 102,400 BERT training sequences, 256 clone chains, <= 120 MH sweeps, 4,096 sequences per probe
DATA_KEYS = ("L", "q", "clone_chains", "n_probe", "beta2", "g3", "g4", "chains", "burn_in")
BERT_DEFAULTS = dict(n_train=25_600, n_bert_train=102_400, L=20, q=10)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bert_stage(a: argparse.Namespace, kw: dict[str, Any]) -> None:
    """Train one BERT seed on the true data, saving its weights at every checkpoint."""
    t0 = cpu_s()
    sizes = {**BERT_DEFAULTS, **kw}
    _, parts, _ = ladder_data(0, n_fit=max(sizes["n_train"], sizes["n_bert_train"]),
                              **{k: v for k, v in kw.items() if k in DATA_KEYS})
    train = parts["fit"][: sizes["n_bert_train"]]
    real = masked_probes({"real": parts["real"]}, sizes["q"], seed=a.seed)
    ck = a.out / f"ckpt_seed{a.seed}"
    ck.mkdir(exist_ok=True)
    log = (a.out / f"real_seed{a.seed}.txt").open("a")

    def on_mark(step: int, model: Any) -> None:
        torch.save(model.state_dict(), ck / f"{step}.pt")
        print(step, f"{probe_losses(model, real)['real']:.5f}", file=log, flush=True)

    cpu = train_bert(train, sizes["q"], on_mark, steps=a.steps, per_octave=a.per_octave, seed=a.seed, progress=True)
    (ck / "done.json").write_text(json.dumps({"train_cpu_s": cpu, "cpu_s": cpu_s() - t0, "steps": a.steps,
                                              "per_octave": a.per_octave, "n_bert_train": int(train.shape[0])}))
    print(f"BERT seed {a.seed}: {cpu_s() - t0:.0f} CPU-s ({cpu:.0f} training)", flush=True)


def eval_stage(a: argparse.Namespace, lp: LadderProbes) -> None:
    """Score every saved checkpoint of every seed on every probe -> bert_seed<s>.json (checkpoints
    scored before are read from ckpt_seed<s>/evals.json, so this can run while the BERTs train)."""
    for ck in sorted(a.out.glob("ckpt_seed*")):
        seed = int(ck.name.removeprefix("ckpt_seed"))
        t0 = cpu_s()
        masked = masked_probes(lp.probes, lp.q, seed=seed)  # "real" first: the same masks as bert_stage's
        live = a.out / f"real_seed{seed}.txt"  # the real probe, scored while training
        real = dict(line.split() for line in live.read_text().splitlines()) if live.is_file() else {}
        masked = {p: xy for p, xy in masked.items() if not (p == "real" and real)}
        cache = ck / "evals.json"
        evals: dict[str, dict[str, float]] = json.loads(cache.read_text()) if cache.is_file() else {}
        marks = []
        model = Bert(BertConfig(lp.q, int(lp.bert_train.shape[1])))
        for m in log_marks(a.steps, a.per_octave):
            if str(m) not in evals:
                if not (ck / f"{m}.pt").is_file() or (real and str(m) not in real):
                    break  # not written yet (the weights are saved just before the real loss)
                model.load_state_dict(torch.load(ck / f"{m}.pt", weights_only=True))
                evals[str(m)] = probe_losses(model, masked) | ({"real": float(real[str(m)])} if real else {})
                cache.write_text(json.dumps(evals))
            marks.append(m)
        curves = {p: [evals[str(m)][p] for m in marks] for p in lp.probes}
        done = json.loads((ck / "done.json").read_text()) if (ck / "done.json").is_file() else {}
        ds = curves_dataset(curves, marks, bert_seed=seed, bert_steps=a.steps, per_octave=a.per_octave,
                            cpu_s=float(done.get("train_cpu_s", np.nan)), finished=int(bool(done)))
        (a.out / f"bert_seed{seed}.json").write_text(json.dumps(ds.to_dict(data="list")))
        print(f"seed {seed}: {len(marks)} checkpoints up to step {marks[-1]}, this eval {cpu_s() - t0:.0f} CPU-s",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["probes", "bert", "eval", "report"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="BERT seed (stage bert); the ladder's seed is 0")
    ap.add_argument("--steps", type=int, default=32_768, help="BERT steps")
    ap.add_argument("--per-octave", type=int, default=6)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    kw = SMALL if a.small else FULL
    if a.stage == "probes":
        t0 = cpu_s()
        lp = ladder_probes(0, progress=True, **kw)
        torch.save(dataclasses.asdict(lp), a.out / "probes.pt")
        print(f"probes: {cpu_s() - t0:.0f} CPU-s {lp.cpu_s}\ntrue loss {lp.true_loss}\nmodel loss {lp.model_loss}"
              f"\ntv {lp.tv}\n{lp.diagnostics}", flush=True)
    elif a.stage == "bert":
        bert_stage(a, kw)
    else:
        lp = LadderProbes(**torch.load(a.out / "probes.pt", weights_only=True))
        if a.stage == "eval":
            eval_stage(a, lp)
        else:
            berts = [xr.Dataset.from_dict(json.loads(p.read_text())) for p in sorted(a.out.glob("bert_seed*.json"))]
            report(assemble_dsb(lp, berts))


def report(ds: Any) -> None:
    steps = ds.step.values
    cols = [0] + [i for i in range(len(steps)) if steps[i] in (256, 1024, 4096, 16384)] + [len(steps) - 1]
    print("probe    " + " ".join(f"{int(steps[i]):>7}" for i in cols) + "  saturation step per seed / seed-mean")
    for j, p in enumerate(ds.probe.values):
        m = ds.loss.mean("seed").values[j]
        sat = []
        for i, s in enumerate(ds.seed.values):
            st = int(ds.saturation_step.values[i, j])
            sat.append(f"s{s}: {st}" if ds.plateau.values[i, j] else f"s{s}: still falling ({st})")
        st = int(ds.mean_saturation_step.values[j])
        sat.append(f"mean: {st}" if ds.mean_plateau.values[j] else f"mean: still falling ({st})")
        print(f"{p:<8} " + " ".join(f"{m[i]:7.4f}" for i in cols) + "  " + "; ".join(sat))
        print(f"{'':<8} min {m.min():.4f} at step {int(steps[m.argmin()])}")
    print("noise (curve_noise):", {p: np.round(ds.noise.sel(probe=p).values, 4).tolist() for p in ds.probe.values})
    print("ordered:", {k: v for k, v in ds.attrs.items() if k.startswith("ordered")})
    print("exact true-Hamiltonian conditional loss:", dict(zip(ds.data.values, np.round(ds.true_loss.values, 4))))
    for m in ds.layers.values:
        print(f"factored {m} PLL:", dict(zip(ds.data.values, np.round(ds.model_loss.sel(layers=m).values, 4))))
    for o in ds.order.values:
        tv = np.round(ds.tv.sel(order=o).values, 4)
        print(f"mean TV of {o}-site marginals to real:", dict(zip(ds.data.values, tv)))
    print({k: v for k, v in ds.attrs.items() if k.startswith(("clone_", "cpu_s", "sampler"))})


if __name__ == "__main__":
    main()
