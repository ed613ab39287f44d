"""Parsers and command functions of ``dsb clone`` and ``dsb sweep`` (the CLI layer).

Building these parsers imports nothing heavy: ``dsb --help`` and argument errors answer in a
fraction of a second. Each command function imports its method module (torch, xarray, dask)
only when it runs. The clone defaults are listed here (:data:`CLONE_DEFAULTS`) for the help
text; ``tests/test_cli_startup.py`` checks they equal :class:`dsb_widgets.clones.CloneConfig`'s.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dsb_widgets.errors import ConfigError

# Same values as dsb_widgets.clones.CloneConfig's defaults (a test keeps them equal).
CLONE_DEFAULTS: dict[str, Any] = {
    "layers": (1, 2), "tokenizer": "gpt2", "vocab_size": 1000, "context": 16, "steps": 1500,
    "batch_size": 128, "lr": 3e-3, "weight_decay": 0.0, "d_embed": 64, "n_heads": 4, "attention": "softmax",
    "mask_rate": 0.15, "objective": "pll", "residual": True, "square_width": None, "eval_windows": 1024,
    "max_sites": 0, "grow": True, "control": True,
    "sweeps": 4000, "burn_in": 10, "window": 100, "window_tau": 20.0, "temperatures": 8, "beta_min": 0.5, "thin": 1,
    "chains": 128, "seed": 0, "data_dir": None, "max_train_chars": None, "device": "cpu",
}


def add_threads_argument(p: argparse.ArgumentParser, what: str = "each run") -> None:
    """``--threads N``: torch CPU threads for ``what`` (default: automatic, see dsb_widgets.threads)."""
    p.add_argument("--threads", type=int, help=f"CPU threads for {what} (default: cores / concurrent runs, "
                   "1 for models too small to gain from more)")


def add_clone_parser(sub: Any) -> None:
    """The ``dsb clone`` subcommand."""
    d = CLONE_DEFAULTS
    p = sub.add_parser("clone", help="make (2^(L-1)+1)-body clones of a text corpus (Rende et al. 2024)")
    p.add_argument("--corpus", required=True, help="tinystories | wikitext2 | tinyshakespeare | path to text")
    p.add_argument("--layers", type=int, nargs="+", default=list(d["layers"]),
                   help="factored layers L (one clone each)")
    p.add_argument("--out", required=True, help="output folder (clone_L{L}.pt, vocab.json, provenance.json)")
    p.add_argument("--tokenizer", default=d["tokenizer"], help="gpt2 | char")
    p.add_argument("--vocab-size", type=int, default=d["vocab_size"], help="keep the top-V tokens (incl. <unk>)")
    p.add_argument("--context", type=int, default=d["context"], help="sequence length T")
    p.add_argument("--steps", type=int, default=d["steps"], help="training steps per factored model")
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="AdamW decay of the coupling-carrying weights (E, V, read-out; clones.coupling_parameters)")
    p.add_argument("--d-embed", type=int, default=d["d_embed"])
    p.add_argument("--heads", type=int, default=d["n_heads"])
    p.add_argument("--attention", choices=["softmax", "free"], default=d["attention"])
    p.add_argument("--objective", choices=["pll", "single_site", "mlm"], default=d["objective"],
                   help="L >= 2 training: every site masked alone (pll; or --max-sites random sites at L >= 3), "
                   "--mask-rate of the sites (single_site) or BERT-style (mlm)")
    p.add_argument("--max-sites", type=int, default=d["max_sites"],
                   help="pll, L >= 3: random sites scored per window per step (default 0: every site, the exact "
                   "PLL; e.g. 4 is ~4x cheaper but trains 3 layers worse)")
    p.add_argument("--no-grow", dest="grow", action="store_false",
                   help="train every L from scratch instead of from the trained shallower model")
    p.add_argument("--no-control", dest="control", action="store_false",
                   help="skip the control: the shallowest model trained on for as many steps as each grown one")
    p.add_argument("--square-width", type=int, default=d["square_width"],
                   help="layers l >= 2 square this many learned features of h, Attn((h U)^2) (0: h itself)")
    p.add_argument("--no-residual", dest="residual", action="store_false",
                   help="the plain x^2 chain instead of h + Attn(h^2) (factored_attention docstring)")
    p.add_argument("--mask-rate", type=float, default=d["mask_rate"], help="fraction of sites scored per sequence")
    p.add_argument("--sweeps", type=int, default=d["sweeps"], help="most MH sweeps (one proposal per position each)")
    p.add_argument("--window", type=int, default=d["window"],
                   help="stop once the energy trace is stationary over 2 windows of W sweeps (0: run all --sweeps); "
                   "the smallest W, see --window-tau")
    p.add_argument("--window-tau", type=float, default=d["window_tau"],
                   help="W = max(--window, this x the energy's autocorrelation time, measured as the chains run); "
                   "split-R-hat needs W >> tau (0: a fixed W)")
    p.add_argument("--temperatures", type=int, default=d["temperatures"],
                   help="parallel tempering: split --chains over K temperatures, beta = 1 .. --beta-min (geometric); "
                   "the clone is the beta = 1 chains (1: plain MH)")
    p.add_argument("--beta-min", type=float, default=d["beta_min"], help="hottest inverse temperature")
    p.add_argument("--burn-in", type=int, default=d["burn_in"], help="sweeps dropped before keeping samples")
    p.add_argument("--thin", type=int, default=d["thin"], help="keep every n-th sweep after burn-in")
    p.add_argument("--chains", type=int, default=d["chains"], help="parallel MH chains (from real test windows)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--data-dir", help="local data folder (else $DSB_DATA_DIR, else the hub)")
    p.add_argument("--max-train-chars", type=int, help="train on the head of the corpus only")
    p.add_argument("--device", default=d["device"], help="cpu | cuda | auto")
    add_threads_argument(p, "training and sampling")
    p.set_defaults(func=cmd_clone)


def cmd_clone(args: argparse.Namespace) -> int:
    from dsb_widgets.threads import apply_threads, auto_threads, check_threads

    check_threads(args.threads)
    from dsb_widgets.clones import CloneConfig, make_clones

    try:
        cfg = CloneConfig(corpus=args.corpus, layers=tuple(args.layers), tokenizer=args.tokenizer,
                          vocab_size=args.vocab_size, context=args.context, steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          d_embed=args.d_embed, n_heads=args.heads,
                          attention=args.attention, objective=args.objective, mask_rate=args.mask_rate,
                          max_sites=args.max_sites, residual=args.residual, window=args.window,
                          window_tau=args.window_tau, temperatures=args.temperatures, beta_min=args.beta_min,
                          grow=args.grow,
                          control=args.control, square_width=args.square_width or None,
                          sweeps=args.sweeps, burn_in=args.burn_in, thin=args.thin, chains=args.chains,
                          seed=args.seed, data_dir=args.data_dir, max_train_chars=args.max_train_chars,
                          device=args.device)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    apply_threads(args.threads or auto_threads())
    prov = make_clones(cfg, args.out, progress=True)
    print(f"\n{'L':>3}{'bodies':>8}{'steps':>7}{'train pll':>10}{'test pll':>10}{'control':>9}{'cpu-s':>7}"
          f"{'sweeps':>7}{'tau':>6}{'W':>5}{'R-hat':>7}{'accept':>8}{'moved':>7}")
    for L, r in prov["orders"].items():
        ctl = f"{r['control']['test_pll']:>9.3f}" if "control" in r else f"{'-':>9}"
        st = r["stationarity"] or {}
        print(f"{L:>3}{r['bodies']:>8}{r['total_steps']:>7}{r['train_pll']:>10.3f}{r['test_pll']:>10.3f}{ctl}"
              f"{r['train_cpu_seconds']:>7.0f}{r['sweeps']:>7}{st.get('tau', float('nan')):>6.1f}"
              f"{st.get('window', 0):>5}{st.get('rhat', float('nan')):>7.2f}"
              f"{r['acceptance_rate']:>8.3f}{r['fraction_changed_from_init']:>7.2f}")
    if any("control" in r for r in prov["orders"].values()):
        print("control: the shallowest model trained on for the same total steps (held-out pll, nats/token)")
    moving = [L for L, r in prov["orders"].items() if r["stationarity"] and not r["stationarity"]["stationary"]]
    if moving:
        print(f"MH NOT stationary for L = {', '.join(moving)} after --sweeps {cfg.sweeps} (split-R-hat >= 1.05 or a "
              "drifting energy; trace in provenance.json): the clone is the last window, not an equilibrium sample")
    print(f"\nclones: {args.out}  (next: dsb run clones --corpus {args.corpus} --clones {args.out})")
    return 0


def add_sweep_parser(sub: Any) -> None:
    """The ``dsb sweep`` subcommand."""
    p = sub.add_parser("sweep", help="run a grid of runs on Dask; merged into one xarray result",
                       description="Expand CONFIG.yaml's grid into runs, train them on a Dask "
                       "cluster (default: an embedded LocalCluster), merge into OUT_DIR/sweep.nc.")
    p.add_argument("config", help="sweep YAML with base:, grid:, out_dir: (see examples/sweep_digits.yaml)")
    p.add_argument("--out-dir", help="where runs/, sweep.nc and failures.json go (overrides out_dir:)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786 "
                   "(default: an embedded LocalCluster)")
    p.add_argument("--workers", type=int, help="LocalCluster workers (default: one per GPU, else min(4, cores))")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / workers)")
    p.add_argument("--retries", type=int, help="Dask retries of a failed or lost run (default 2)")
    p.add_argument("--dashboard-address", default="127.0.0.1:8787", help="LocalCluster dashboard (default "
                   "127.0.0.1:8787, this machine only; e.g. 0.0.0.0:8787 to expose it)")
    p.add_argument("--list", action="store_true", help="list the runs and whether they are finished; train nothing")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from dsb_widgets.threads import check_threads

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {args.workers})")
    check_threads(args.threads)
    from dsb_widgets.sweep import expand, is_finished, load_sweep, run_path, run_sweep

    sweep = load_sweep(args.config, args.out_dir)
    if args.list:
        for r in expand(sweep):
            state = "finished" if is_finished(run_path(sweep.out_dir, r.key), r.config) else "todo"
            print(f"{state:<9} {r.key}  {r.label()}")
        return 0
    res = run_sweep(sweep, scheduler=args.scheduler, n_workers=args.workers, retries=args.retries,
                    threads=args.threads, dashboard_address=args.dashboard_address)
    retried = {k: n for k, n in res.attempts.items() if n > 1}
    print(f"\n{len(res.runs)} runs: {len(res.skipped)} skipped (finished earlier), {len(res.finished)} trained, "
          f"{len(res.failed)} failed, {len(retried)} retried; {res.wall_s:.1f}s")
    for key, err in res.failed.items():
        print(f"  failed {key}: {err}")
    if res.failed:
        print(f"  errors and tracebacks: {sweep.out_dir / 'failures.json'}; rerun the same command to retry")
    if res.path is None or res.dataset is None:
        print("nothing finished to merge")
    else:
        axes = json.loads(res.dataset.attrs["axes"])
        print(f"merged: {res.path}  dims {dict(res.dataset.sizes)} (grid axes {axes}); "
              f"xarray.open_dataset(path, engine='scipy')")
    return 1 if res.failed else 0
