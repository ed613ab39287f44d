"""Clones of a text corpus that keep token interactions up to a chosen order (Rende et al. 2024).

Rende, Gerace, Laio, Goldt, "A distributional simplicity bias in the learning dynamics of
transformers" (NeurIPS 2024), Sec. 3: train a masked LM made of L layers of factored attention
(:mod:`dsb_widgets.factored_attention`; its conditionals p(s_i | s_-i) hold interactions of at
most 2^(L-1)+1 bodies) on the corpus, then sample sequences from it with Metropolis-Hastings
(:mod:`dsb_widgets.mh_sampler`, Goyal et al. 2022), chains started at real test sentences. The
samples are the "(2^(L-1)+1)-body clone" of the corpus: L = 1, 2, 3, 4, 6 -> 2, 3, 5, 9, 33 bodies.

Pipeline (``dsb clone --corpus NAME_OR_FILE --layers 1 2 --out DIR``):

1. tokenise (``tokenize_corpus``; top-V vocabulary, the rest -> ``<unk>``), cut the token
   stream into windows of ``context`` tokens;
2. per L (in increasing order): train a factored model with AdamW (warm-up, cosine to 10%) on
   the exact pseudo-likelihood of EVERY site, each masked alone (``objective="pll"``; L >= 3 scores
   ``max_sites`` random sites per window, an unbiased estimate, because their copies cost T x a
   forward per layer), starting from the trained shallower model with the new x^2 branches
   switched off (``grow``; :meth:`FactoredAttention.grow_from`); record the test
   pseudo-likelihood learning curve. Each depth is one more training cycle (``steps`` steps), so
   the k-th depth has trained k x ``steps`` steps in all; the ``control`` trains the shallowest
   model on for the same cycles, so "deeper is better" is read against a model with the same
   total training, not against a shorter-trained one;
3. run ``chains`` MH chains (:class:`IncrementalConditionals`, all chains batched) from random
   test windows until the energy trace is stationary (split-R-hat < 1.05 over the last 2W
   sweeps and the last two window means within 2 s.e., W = max(``window``, ``window_tau`` x the
   energy's autocorrelation time); at most ``sweeps``; ``temperatures`` > 1: parallel tempering),
   keep the last window's states (every ``thin``-th); write ``DIR/clone_L{L}.pt`` (``tokens``
   int64 (N, T), ``energies`` the per-chain trace),
   ``DIR/model_L{L}.pt`` (the factored model's config and weights),
   ``DIR/vocab.json`` and ``DIR/provenance.json`` (model, layers, bodies, sweeps, stationarity
   check and criterion, acceptance and mean energy per sweep, energy-trace quantiles,
   chain-tokens/s, losses and learning curve, corpus, seed), rewritten after every order.

Measured at the CLI DEFAULTS (``dsb clone --corpus tinyshakespeare --layers 1 2 3``: V = 1,000
GPT-2 tokens, T = 16, d = 64, 4 softmax heads, AdamW lr 3e-3, batch 128, 1,500 steps per cycle,
every site scored at every depth; held-out PLL on 1,024 test windows, nats/token; Tiny
Shakespeare was not used while developing this; idle 2-core machine, ``--threads 2``: 1,068
CPU-s user + 165 s system, 10.9 min wall for training, controls and MH):

===========  ===========  =========  ========  =============================================
L (bodies)   total steps  train PLL  test PLL  control: 1 layer, same total steps (test PLL)
===========  ===========  =========  ========  =============================================
1 (2)        1,500        2.662      2.925     --
2 (3)        3,000        2.335      2.702     2.778
3 (5)        4,500        2.222      2.647     2.720
===========  ===========  =========  ========  =============================================

Test PLL falls strictly with depth, and each depth beats one layer trained for the same total
steps (by 0.076 and 0.073 nats): here depth, not extra training, lowers the loss (with the old
``max_sites`` = 4 at L = 3: 2.665, 0.055 below its control). TinyStories
(same settings, scratch script, 1,024 test windows): 2.339 / 2.018 / 1.992 for L = 1 / 2 / 3
(strictly falling), controls 2.090 (3,000 steps) and 1.980 (4,500 steps): with ``max_sites`` = 4
(the default until then: L >= 3 scored 4 random sites of 16 per window, an unbiased but noisy PLL
estimate) 3 layers did NOT beat their control (1.992, by 0.012 nats). Trained on every site (the
exact PLL, now the default ``max_sites`` = 0), the same 3-layer model reaches 1.895 (train 1.875),
0.086 below the control and 0.123 below 2 layers, at 351 vs 66 training CPU-s (idle machine, same
seeds and L = 2 starting point): the quarter-signal estimate was the cause. The train-test gap
grows with depth on Shakespeare's 300k train tokens (0.26 / 0.37 / 0.43).
``square_width`` (a wider quadratic form per layer) costs ~3x the CPU per L = 2 step and was not
measured to the end.

MH stationarity (measured; the tables and the history are in ``benchmarks/clone_stationarity/``):
plain MH (``--temperatures 1``, the old default) never passes: chains relax from text into a
condensed, multimodal region of the model's own distribution (``energy_gap`` in provenance.json =
chains' mean E_pll - held-out windows' mean E_pll, -13 to -29 nats; the PLL target and a lack of
coupling decay, ``--weight-decay``, were measured and are not the cause), with tau ~ 200 sweeps.
Parallel tempering over beta 1 .. 0.3 left the cold rungs slow (Shakespeare L = 1: tau 261 at
beta = 1, 2,087 sweeps per cold-hot-cold round trip); the default ladder, 8 rungs over beta 1 .. 0.5
(16 of 128 chains at beta = 1, W >= 100, at most 4,000 sweeps), cuts that to ~611 and passes, seed 0,
on TinyStories L = 1 / 2 / 3 after 500 / 400 / 800 sweeps (53 / 62 / 281 MH CPU-s) and Tiny
Shakespeare L = 1 after 2,500 (262 CPU-s); seed 1: TinyStories L = 3 after 300, Shakespeare NOT at
the cap (drift -3.0 s.e.). The criterion does not see a slow creep: TinyStories L = 1 run on to
3,000 sweeps still falls ~0.5 nats per 1,000 (22.2 -> 20.5).
The clone is the last window of the chains; provenance.json says whether they passed
(``stationarity`` with tau, W and every check; per-chain trace in ``clone_L{L}.pt['energies']``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from dsb_widgets.clone_files import PROVENANCE_FILE, VOCAB_FILE, CloneSet, load_clones
from dsb_widgets.coupling_decay import clone_optimizer, coupling_parameters
from dsb_widgets.factored_attention import (
    FactoredAttention,
    FactoredAttentionConfig,
    IncrementalConditionals,
    masked_lm_loss,
    n_bodies,
    pseudo_likelihood_loss,
    random_sites,
)
from dsb_widgets.mh_sampler import metropolis_hastings
from dsb_widgets.mh_tempering import geometric_ladder

__all__ = ["CloneConfig", "CloneSet", "make_clones", "load_clones", "windows", "train_factored", "test_pll",
           "coupling_parameters", "clone_optimizer"]

MAX_LAYERS = 7  # 65 bodies; deeper x^2 stacks are numerically unusable


@dataclass(frozen=True)
class CloneConfig:
    """Everything that defines a set of clones (saved in the provenance record)."""

    corpus: str
    layers: tuple[int, ...] = (1, 2)
    tokenizer: str = "gpt2"
    vocab_size: int = 1000
    context: int = 16
    steps: int = 1500  # factored-model training steps per L
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0  # AdamW decay of E, V, W (coupling_decay); 0: held-out PLL is best there (docstring)
    d_embed: int = 64
    n_heads: int = 4
    attention: str = "softmax"
    mask_rate: float = 0.15
    objective: str = "pll"  # L >= 2: "pll" (every site) | "single_site" (mask_rate of sites) | "mlm" (BERT)
    residual: bool = True  # h^l = h^(l-1) + Attn(h^(l-1)^2) (factored_attention docstring)
    square_width: int | None = None  # layers l >= 2 square m learned features of h (None: h itself)
    eval_windows: int = 1024  # held-out windows for the test pseudo-likelihood
    max_sites: int = 0  # objective pll, L >= 3: score this many random sites per window per step (0: every site)
    grow: bool = True  # start each L from the deepest trained L' < L, new branches off (residual only)
    control: bool = True  # with grow: also train the shallowest model for the same total steps as each L
    sweeps: int = 4000  # the most MH sweeps; with window > 0 chains stop once stationary
    burn_in: int = 10  # only with window = 0 (fixed length)
    window: int = 100  # smallest stationarity window W (mh_sampler.stationarity); 0 = run all sweeps
    window_tau: float = 20.0  # window W = max(window, window_tau * tau) (mh_sampler docstring); 0: fixed W
    temperatures: int = 8  # > 1: parallel tempering, chains split over a geometric ladder beta = 1 .. beta_min
    beta_min: float = 0.5  # 0.3 left the cold rungs too far apart (module docstring; benchmarks/clone_stationarity)
    thin: int = 1
    chains: int = 128
    seed: int = 0
    data_dir: str | None = None
    max_train_chars: int | None = None
    device: str = "cpu"  # "cpu" | "cuda" | "auto"

    def __post_init__(self) -> None:
        if not self.layers or any(not 1 <= L <= MAX_LAYERS for L in self.layers):
            raise ValueError(f"--layers must be integers in [1, {MAX_LAYERS}], e.g. --layers 1 2 3; got {self.layers}")
        if self.square_width is not None and self.square_width < 1:
            raise ValueError(f"--square-width must be a positive integer (or 0 for none); got {self.square_width}")
        for name in ("vocab_size", "context", "steps", "batch_size", "sweeps", "chains", "thin", "d_embed", "n_heads"):
            if getattr(self, name) < (2 if name in ("vocab_size", "context") else 1):
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag} is too small ({getattr(self, name)}); pass a positive value")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"--weight-decay must be >= 0 (0: off); got {self.weight_decay}")
        if self.max_sites < 0:
            raise ValueError(f"--max-sites must be >= 0 (0: every site); got {self.max_sites}")
        if self.objective not in ("pll", "single_site", "mlm"):
            raise ValueError(f"--objective must be pll, single_site or mlm, got {self.objective!r}")
        if not 0.0 < self.mask_rate <= 1.0:
            raise ValueError(f"--mask-rate must lie in (0, 1], got {self.mask_rate}")
        if self.window < 0 or self.window == 1 or 2 * self.window > self.sweeps:
            raise ValueError(f"--window must be 0 (off) or in [2, --sweeps / 2]; got {self.window}")
        if self.temperatures < 1 or self.chains % self.temperatures or not 0 < self.beta_min < 1:
            raise ValueError(f"--temperatures must divide --chains ({self.chains}) and --beta-min lie in (0, 1); "
                             f"got {self.temperatures}, {self.beta_min}")
        if self.window_tau < 0:
            raise ValueError(f"--window-tau must be >= 0 (0: a fixed --window); got {self.window_tau}")
        if self.window == 0 and not 0 <= self.burn_in < self.sweeps:
            raise ValueError(f"--burn-in must lie in [0, --sweeps) = [0, {self.sweeps}); got {self.burn_in}")


def windows(stream: np.ndarray, context: int, n: int | None, gen: torch.Generator) -> Tensor:
    """``n`` random windows (n, context) int64 of a token stream; n=None: all non-overlapping ones."""
    if stream.size < context + 1:
        raise ValueError(f"the text has {stream.size} tokens, fewer than --context {context} + 1; "
                         "give more text or a smaller --context")
    if n is None:
        k = stream.size // context
        return torch.from_numpy(stream[: k * context].astype(np.int64)).view(k, context)
    starts = torch.randint(0, stream.size - context + 1, (n,), generator=gen)
    idx = starts[:, None] + torch.arange(context)  # (n, T)
    return torch.from_numpy(stream.astype(np.int64))[idx]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no GPU is visible; pass --device cpu")
    return torch.device(name)


def test_pll(model: FactoredAttention, x: Tensor) -> float:
    """Mean -log p(s_t | s_-t) over all sites of the windows x (N, T), nats/token (no grad)."""
    with torch.no_grad():
        return float(pseudo_likelihood_loss(model, x, chunk=256))


def train_factored(train: np.ndarray, test: np.ndarray, L: int, cfg: CloneConfig, vocab: int,
                   progress: bool = True, init_from: FactoredAttention | None = None, stage: int = 0,
                   ) -> tuple[FactoredAttention, dict[str, Any]]:
    """Fit an L-layer factored MLM to random train windows for ``cfg.steps`` steps (one warm-up +
    cosine cycle); returns it and its losses (nats/token) with a learning curve (test
    pseudo-likelihood at ~12 log-spaced steps). ``init_from``: a trained model, shallower or as
    deep, to start from (:meth:`FactoredAttention.grow_from`); ``stage`` (0, 1, ...) numbers the
    training cycle, so a continued model draws fresh batches."""
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed + 101 * L + 1009 * stage)
    gen = torch.Generator().manual_seed(cfg.seed + 7 * L + 1013 * stage)
    fcfg = FactoredAttentionConfig(vocab_size=vocab, seq_len=cfg.context, n_layers=L, n_heads=cfg.n_heads,
                                   d_embed=cfg.d_embed, attention=cfg.attention,  # type: ignore[arg-type]
                                   residual=cfg.residual, square_width=cfg.square_width)
    dev = _device(cfg.device)
    model = FactoredAttention(fcfg)
    if init_from is not None:
        model.grow_from(init_from.cpu())
    model = model.to(dev)
    opt = clone_optimizer(model, cfg.lr, cfg.weight_decay)
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to 10%
        opt, lambda k: min(1.0, (k + 1) / warm) * (0.55 + 0.45 * np.cos(np.pi * min(k, cfg.steps) / cfg.steps)))
    held = windows(test, cfg.context, cfg.eval_windows, torch.Generator().manual_seed(cfg.seed + 1)).to(dev)
    marks = sorted({int(v) for v in np.geomspace(1, cfg.steps, 12).round()} | {0})
    curve: dict[int, float] = {}
    what = f"factored L={L} ({n_bodies(L)}-body)" + (f", cycle {stage + 1}" if stage else "")
    bar = tqdm(range(cfg.steps), desc=what, unit="step", disable=not progress)
    recent: list[float] = []
    k_sites = max(1, round(cfg.mask_rate * cfg.context))
    for step in bar:
        if step in marks:
            curve[step] = test_pll(model, held)
        x = windows(train, cfg.context, cfg.batch_size, gen).to(dev)
        n_seq, n_pos = x.shape  # (B, T)
        every_site = cfg.max_sites <= 0 or cfg.max_sites >= cfg.context
        if cfg.objective == "pll" and (L <= 2 or every_site) or L == 1:
            loss = pseudo_likelihood_loss(model, x)  # every site, each masked alone (exact PLL)
        elif cfg.objective == "pll":  # an unbiased estimate of the PLL gradient, T / max_sites x cheaper
            sites = random_sites(n_seq, n_pos, min(cfg.max_sites, cfg.context), gen).to(dev)
            loss = pseudo_likelihood_loss(model, x, sites)
        elif cfg.objective == "single_site":
            loss = pseudo_likelihood_loss(model, x, random_sites(n_seq, n_pos, k_sites, gen).to(dev))
        else:
            loss = masked_lm_loss(model, x, cfg.mask_rate, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"factored L={L} diverged (loss {float(loss)}); pass a smaller --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [float(loss.detach())])[-50:]
        bar.set_postfix(loss=f"{np.mean(recent):.3f}", refresh=False)
    model.eval()
    curve[cfg.steps] = test_pll(model, held)
    train_x = windows(train, cfg.context, cfg.eval_windows, torch.Generator().manual_seed(cfg.seed + 1)).to(dev)
    return model, {"train_loss": float(np.mean(recent)), "train_pll": test_pll(model, train_x),
                   "test_pll": curve[cfg.steps], "test_pll_curve": {str(k): v for k, v in curve.items()}}


def make_clones(cfg: CloneConfig, out: str | Path, progress: bool = True,
                on_sweep: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train one factored model per L in ``cfg.layers``, sample its clone, write files to ``out``.

    Returns the provenance record (also written to ``out/provenance.json``). ``on_sweep(L, stats)``
    receives the MH statistics of every sweep (acceptance_rate, tokens_per_second, ...).
    """
    from tqdm.auto import tqdm

    from dsb_widgets.data.text import tokenize_corpus

    out = Path(out)
    tc = tokenize_corpus(cfg.corpus, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
                         data_dir=cfg.data_dir, max_train_chars=cfg.max_train_chars)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {"tokenizer": cfg.tokenizer, "vocab_size": tc.vocab_size, "token_strings": tc.token_strings,
             "corpus": cfg.corpus, "source": tc.source, "bytes_per_token": tc.bytes_per_token}
    (out / VOCAB_FILE).write_text(json.dumps(vocab))
    prov: dict[str, Any] = {"config": asdict(cfg), "corpus": cfg.corpus, "source": tc.source,
                            "tokenizer": cfg.tokenizer, "vocab_size": tc.vocab_size, "context": cfg.context,
                            "seed": cfg.seed, "train_tokens": int(tc.train.size),
                            "test_tokens": int(tc.test.size), "orders": {}}
    trained: dict[int, FactoredAttention] = {}
    grow = cfg.grow and cfg.residual
    control: FactoredAttention | None = None  # the shallowest model, trained on as long as each deeper one
    for stage, L in enumerate(sorted(cfg.layers)):
        t0, c0 = time.perf_counter(), time.process_time()
        base = max((k for k in trained if k < L), default=None) if grow else None
        model, losses = train_factored(tc.train, tc.test, L, cfg, tc.vocab_size, progress,
                                       init_from=None if base is None else trained[base], stage=stage if grow else 0)
        trained[L] = model
        cycles = stage + 1 if grow else 1
        losses.update(grown_from_layers=base, total_steps=cycles * cfg.steps)
        t_train, cpu_train = time.perf_counter() - t0, time.process_time() - c0
        if grow and cfg.control and stage == 0:
            control = model
        elif grow and cfg.control and control is not None:  # same total steps, same cycles, one depth
            L0 = control.cfg.n_layers
            control, ctl = train_factored(tc.train, tc.test, L0, cfg, tc.vocab_size, progress, init_from=control,
                                          stage=stage)
            losses["control"] = {"layers": L0, "total_steps": cycles * cfg.steps, "test_pll": ctl["test_pll"],
                                 "train_pll": ctl["train_pll"]}
        init = windows(tc.test, cfg.context, cfg.chains, torch.Generator().manual_seed(cfg.seed + 13 * L))
        bar = tqdm(total=cfg.sweeps, desc=f"MH L={L}", unit="sweep", disable=not progress)

        def sweep_cb(row: dict[str, float], L: int = L, bar: Any = bar) -> None:
            bar.update(1)
            bar.set_postfix(acc=f"{row['acceptance_rate']:.3f}", tok_s=f"{row['tokens_per_second']:.0f}")
            if on_sweep is not None:
                on_sweep(L, row)

        dev = next(model.parameters()).device
        if dev.type == "cpu":
            gen: torch.Generator | None = torch.Generator().manual_seed(cfg.seed + 17 * L)
        else:  # the sampler draws on the chains' device: use its global generator, seeded
            torch.manual_seed(cfg.seed + 17 * L)
            gen = None
        c0 = time.process_time()
        res = metropolis_hastings(IncrementalConditionals(model), init.to(dev), n_sweeps=cfg.sweeps,
                                  burn_in=0 if cfg.window else cfg.burn_in, thin=cfg.thin, generator=gen,
                                  on_sweep=sweep_cb, until_stationary=cfg.window or None,
                                  window_tau=(cfg.window_tau or None) if cfg.window else None,
                                  betas=_ladder(cfg))
        cpu_sample = time.process_time() - c0
        bar.close()
        tokens = res.samples.reshape(-1, cfg.context).cpu()  # (S * chains, T)
        assert res.energies is not None
        torch.save({"tokens": tokens, "layers": L, "bodies": n_bodies(L), "init": init,
                    "energies": res.energies.cpu()}, out / f"clone_L{L}.pt")  # (sweeps + 1, chains) trace
        torch.save({"config": asdict(model.cfg), "state_dict": model.state_dict()}, out / f"model_L{L}.pt")
        kept = [r for r in res.stats if not r["burn_in"]]
        prov["orders"][str(L)] = {
            "file": f"clone_L{L}.pt", "model": "factored_attention", "model_file": f"model_L{L}.pt",
            "layers": L, "bodies": n_bodies(L),
            "model_config": asdict(model.cfg), "sweeps": len(res.stats), "max_sweeps": cfg.sweeps,
            "burn_in": len(res.stats) - len(kept), "thin": cfg.thin,
            "chains": cfg.chains, "chains_at_target": cfg.chains // cfg.temperatures, "betas": _ladder(cfg),
            "swap_rate_per_sweep": [r["swap_rate"] for r in res.stats] if cfg.temperatures > 1 else None,
            "tempering": res.tempering,  # swap rate per pair, tau / acceptance per temperature, round trips
            "n_sequences": int(tokens.shape[0]),
            "stationarity": res.stationarity,
            "stationarity_criterion": _criterion(cfg),
            "energy": "pll: E(s) = -sum_t log p(s_t | s_-t) (Goyal et al. 2022)",
            "energy_trace_file": f"clone_L{L}.pt['energies'] (sweeps + 1, chains at beta = 1)",
            "acceptance_rate": res.acceptance_rate,
            "acceptance_per_sweep": [r["acceptance_rate"] for r in res.stats],
            "change_rate_per_sweep": [r["change_rate"] for r in res.stats],
            "mean_energy_per_sweep": [r["mean_energy"] for r in res.stats],
            **_energy_gap(res.energies, res.samples.shape[0] * cfg.thin, cfg.context * losses["test_pll"]),
            "energy_trace_quantiles": {str(qq): res.energies.quantile(qq, dim=1).tolist() for qq in (0.1, 0.5, 0.9)},
            "chain_tokens_per_second": float(np.mean([r["tokens_per_second"] for r in kept])),
            "fraction_changed_from_init": float((res.final.cpu() != init[: res.final.shape[0]]).float().mean()),
            **losses, "train_seconds": t_train, "train_cpu_seconds": cpu_train,
            "sample_seconds": float(sum(r["seconds"] for r in res.stats)), "sample_cpu_seconds": cpu_sample,
        }
        (out / PROVENANCE_FILE).write_text(json.dumps(prov, indent=1))
    return prov


def _energy_gap(trace: Tensor, kept: int, heldout: float) -> dict[str, float]:
    """Generative consistency: the chains' mean E_pll over the ``kept`` last sweeps (the clone's) minus
    the held-out windows' mean E_pll under the same model (= context x test PLL). A model whose own
    distribution resembles the data has samples near the data's energy; a large negative gap means
    the chains condensed into sequences the model finds far more predictable than real text."""
    chain = float(trace[-max(kept, 1):].double().mean())
    return {"heldout_energy_mean": heldout, "chain_energy_mean": chain, "energy_gap": chain - heldout}


def _ladder(cfg: CloneConfig) -> list[float] | None:
    """Inverse temperatures 1 = beta_0 > ... > beta_(K-1) = beta_min, geometric (None: plain MH)."""
    return geometric_ladder(cfg.temperatures, cfg.beta_min)


def _criterion(cfg: CloneConfig) -> str:
    if not cfg.window:
        return f"off (fixed {cfg.sweeps} sweeps, burn-in {cfg.burn_in})"
    w = (f"W = max({cfg.window}, ceil({cfg.window_tau:g} tau)), tau = integrated autocorrelation time of the "
         "trace's second half at each check" if cfg.window_tau else f"W = {cfg.window}")
    return ("split-R-hat of the per-chain energy over the last 2W sweeps < 1.05 and |mean energy of the last W "
            f"sweeps - the W before| < 2 s.e.; {w}; checked every {cfg.window} sweeps; samples = the last W sweeps")
