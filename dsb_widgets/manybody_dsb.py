"""The distributional simplicity bias on the many-body ladder (Rende, Gerace, Laio, Goldt,
NeurIPS 2024, Sec. 4 and Fig. 3, on the synthetic data of Fig. 2).

1. Clones: Metropolis-Hastings samples (:func:`dsb_widgets.mh_sampler.metropolis_hastings`, the
   pseudo-likelihood energy of Goyal et al. 2022, many chains started from held-out sequences as
   in the paper, run until the energy trace is stationary) of the trained 1-, 2-, 3-layer factored
   models: data whose interactions stop at 2, 3, 5 bodies (:func:`factored_clones`).
2. A standard BERT-style encoder (:class:`dsb_widgets.models.bert.Bert`, masked-LM loss, BERT's
   80/10/10 masking, AdamW with warm-up and a CONSTANT rate so that no decay fakes a plateau) is
   trained on the ladder's true training data and scored at log-spaced steps on the held-out true
   data and on each clone (pure [MASK] at ``mask_prob`` of the positions, fixed per probe).
3. Per probe, the step after which its loss stops improving
   (:func:`dsb_widgets.saturation.saturation_step`): the low-order clones should saturate first.

Measured on a TOY ladder (``ladder(L=10, q=5, n_train=2000, n_test=1000, steps=200, chains=128,
burn_in=20, ref_iters=20, d_embed=16, n_heads=2, bert_steps=16384, bert_probe=128)``, seed 0,
296 CPU-s of which BERT 275; factored 1.337 / 1.048 / 1.028 vs references 1.321 / 1.080 / 0.993,
true 0.927; clone MH R-hat 1.04 / 1.12 / 1.14): saturation steps 2-body 108 (minimum 1.40 near
step 256, then the loss RISES to 1.79), 3-body 4,096, 5-body 4,871, real 3,444, all plateaus
observed. 2-body clearly first; 3- vs 5-body are one checkpoint apart (4 per octave), not
resolved; real text saturates early because 2,000 training sequences are overfitted.

Measured at FULL size (:func:`ladder_dsb` defaults: the ladder's L=20, q=10, factored models on
25,600 sequences, BERT on 102,400, 4,096 sequences per probe, 32,768 BERT steps, 6 checkpoints
per octave; ``benchmarks/manybody_dsb``, BERT seed 0, 378 + 733 CPU-s): 2-body saturates at
8,192 (minimum 2.061 at 9,195, then RISES to 2.372 > log q); 3-body 20,643 by the rule but not
an octave before the end (minimum 1.966 at 26,008); 5-body (1.801) and real (1.969) still
falling at 32,768 -- consistent with the DSB as far as resolved, the 3 < 5 < real order not
shown. The clones are not increasingly faithful copies of the data: the true Hamiltonian's
exact conditional loss on them is 3.23 / 2.31 / 1.19 nats (real 1.50; log q = 2.30), each
factored model scores its own clone better than real data (cold PLL target), and the 5-body
clone is the farthest from the data in 1- and 2-site marginals (:func:`marginal_tv`); the 5-body
MH chains did not pass the adaptive stationarity check in 120 sweeps (R-hat 1.05 over the
second half).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["factored_clones", "bert_on_clones", "ladder_dsb"]


def factored_clones(models: dict[int, Any], init: Tensor, *, max_sweeps: int = 60, window: int = 10,
                    window_tau: float | None = None, seed: int = 0) -> dict[int, tuple[Tensor, dict[str, Any]]]:
    """MH clones of each factored model (``models``: layers -> FactoredAttention), chains started
    from ``init`` (B, L), run until :func:`~dsb_widgets.mh_sampler.stationarity` holds over two
    windows of ``window`` sweeps (at most ``max_sweeps``; ``window_tau``: the adaptive window
    max(window, window_tau * tau) of :mod:`dsb_widgets.mh_stationarity`). Returns, per depth, the
    states of the last window of sweeps (W * B, L) and diagnostics (sweeps, acceptance,
    stationarity, R-hat of the energy over the last two windows, window W, tau; split-R-hat and tau
    of the energy over the run's second half)."""
    from dsb_widgets.factored_attention import IncrementalConditionals
    from dsb_widgets.mh_sampler import metropolis_hastings
    from dsb_widgets.mh_stationarity import autocorr_time, split_rhat

    out: dict[int, tuple[Tensor, dict[str, Any]]] = {}
    for n, model in sorted(models.items()):
        res = metropolis_hastings(IncrementalConditionals(model), init, n_sweeps=max_sweeps,
                                  generator=torch.Generator().manual_seed(seed + 17 * n), until_stationary=window,
                                  window_tau=window_tau)
        st = res.stationarity or {}
        diag = {"sweeps": len(res.stats), "acceptance": res.acceptance_rate,
                "stationary": bool(st.get("stationary", False)), "rhat": float(st.get("rhat", math.nan)),
                "window": float(st.get("window", window)), "tau": float(st.get("tau", math.nan))}
        if res.energies is not None:  # the whole run's second half (defined even when 2W > the run)
            half = res.energies[res.energies.shape[0] // 2 :]
            diag.update(rhat_half=split_rhat(half), tau_half=autocorr_time(half), sweeps_half=float(half.shape[0]))
        out[n] = (res.samples.reshape(-1, init.shape[1]).clone(), diag)
    return out


def _probe(x: Tensor, q: int, p: float, seed: int) -> tuple[Tensor, Tensor]:
    from dsb_widgets.models.bert import mask_tokens

    return mask_tokens(x, torch.Generator().manual_seed(seed), q, p=p, random_frac=0.0, keep_frac=0.0)


def masked_probes(probes: dict[str, Tensor], q: int, mask_prob: float = 0.15,
                  seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """Every probe masked once (pure [MASK] at ``mask_prob`` of the positions, fixed by ``seed``)."""
    return {name: _probe(x, q, mask_prob, seed + 101 + i) for i, (name, x) in enumerate(probes.items())}


@torch.no_grad()
def probe_losses(model: Any, masked: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Masked-LM loss (nats per masked token) of a BERT on each masked probe; only masked positions
    go through the read-out (:meth:`Bert.features`)."""
    from dsb_widgets.models.bert import IGNORE

    was = model.training
    model.eval()
    out = {}
    for name, (x, y) in masked.items():
        sel = y != IGNORE
        out[name] = float(F.cross_entropy(model.head(model.features(x)[sel]), y[sel]))
    model.train(was)
    return out


def log_marks(steps: int, per_octave: int) -> list[int]:
    """Checkpoints 0, ``steps`` and ~``per_octave`` log-spaced steps per octave in between."""
    n_marks = int(per_octave * math.log2(max(steps, 2))) + 1
    return sorted({0, steps} | {int(v) for v in np.geomspace(1, steps, n_marks).round()})


def train_bert(train: Tensor, q: int, on_mark: Callable[[int, Any], None], *, steps: int = 3000, batch: int = 64,
               lr: float = 1e-3, warmup: int = 64, n_layer: int = 2, n_head: int = 2, d_model: int = 64,
               mask_prob: float = 0.15, per_octave: int = 4, seed: int = 0, progress: bool = False) -> float:
    """Train a BERT (:class:`~dsb_widgets.models.bert.Bert`, BERT's 80/10/10 masking, AdamW wd 0.01,
    ``warmup`` linear warm-up steps then a CONSTANT rate) on ``train`` (N, L) and call
    ``on_mark(step, model)`` at every :func:`log_marks` checkpoint. Returns the training CPU-s
    (callbacks excluded)."""
    from tqdm.auto import tqdm

    from dsb_widgets.models.bert import IGNORE, Bert, BertConfig, mask_tokens

    torch.manual_seed(seed)
    model = Bert(BertConfig(q, train.shape[1], n_layer=n_layer, n_head=n_head, d_model=d_model))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / warmup))
    marks = set(log_marks(steps, per_octave))
    gen = torch.Generator().manual_seed(seed + 1)
    cpu = 0.0
    bar = tqdm(total=steps, disable=not progress, desc=f"BERT seed {seed}", mininterval=30)
    for step in range(steps + 1):
        if step in marks:
            on_mark(step, model)
        if step == steps:
            break
        t0 = time.process_time()
        idx = torch.randint(train.shape[0], (batch,), generator=gen)
        x, y = mask_tokens(train[idx], gen, q, p=mask_prob)
        sel = y != IGNORE
        loss = F.cross_entropy(model.head(model.features(x)[sel]), y[sel])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        cpu += time.process_time() - t0
        bar.update()
    bar.close()
    return cpu


def curves_dataset(curves: dict[str, list[float]], marks: list[int], k: float = 3.0, **attrs: Any) -> Any:
    """Probe loss curves (name -> loss at ``marks``) -> ``xarray.Dataset`` with ``loss`` (probe,
    step), ``saturation_step``, ``plateau``, ``noise`` (probe) (:mod:`dsb_widgets.saturation`'
    fixed rule). Curves may be shorter than ``marks`` (a run read back part-way): all are cut to
    the shortest."""
    import xarray as xr

    from dsb_widgets.saturation import curve_noise, plateau_observed, saturation_step

    n = min(len(c) for c in curves.values())
    st = np.array(marks[:n])
    loss = np.array([c[:n] for c in curves.values()])
    sat = [saturation_step(st, row, k=k) for row in loss]
    return xr.Dataset({"loss": (("probe", "step"), loss), "saturation_step": (("probe",), np.array(sat)),
                       "plateau": (("probe",), np.array([plateau_observed(st, s) for s in sat])),
                       "noise": (("probe",), np.array([curve_noise(row) for row in loss]))},
                      coords={"probe": list(curves), "step": st},
                      attrs={"units": "nats per masked token", "saturation_k": k, **attrs})


def bert_on_clones(train: Tensor, probes: dict[str, Tensor], q: int, *, steps: int = 3000, batch: int = 64,
                   lr: float = 1e-3, warmup: int = 64, n_layer: int = 2, n_head: int = 2, d_model: int = 64,
                   mask_prob: float = 0.15, per_octave: int = 4, seed: int = 0, k: float = 3.0,
                   progress: bool = False) -> Any:
    """Train a BERT on ``train`` (N, L) (:func:`train_bert`) and score it on every probe (name ->
    (n, L) sequences, :func:`masked_probes`, :func:`probe_losses`) at log-spaced steps. Returns an
    ``xarray.Dataset`` (:func:`curves_dataset`): ``loss`` (probe, step) in nats per masked token,
    ``saturation_step`` (probe) (:func:`~dsb_widgets.saturation.saturation_step`: no later
    checkpoint lower by more than ``k`` s.d. of a checkpoint difference) and ``plateau`` (probe;
    :func:`~dsb_widgets.saturation.plateau_observed`: the run went on an octave past that step;
    False = still falling at the end)."""
    masked = masked_probes(probes, q, mask_prob, seed)
    curves: dict[str, list[float]] = {name: [] for name in probes}

    def on_mark(step: int, model: Any) -> None:
        for name, v in probe_losses(model, masked).items():
            curves[name].append(v)

    cpu = train_bert(train, q, on_mark, steps=steps, batch=batch, lr=lr, warmup=warmup, n_layer=n_layer,
                     n_head=n_head, d_model=d_model, mask_prob=mask_prob, per_octave=per_octave, seed=seed,
                     progress=progress)
    return curves_dataset(curves, log_marks(steps, per_octave), k, mask_prob=mask_prob, bert_steps=steps,
                          bert_lr=lr, bert_batch=batch, bert_size=f"{n_layer}x{d_model}", bert_seed=seed,
                          per_octave=per_octave, cpu_s=cpu)


PROBE_ORDER = ("2-body", "3-body", "5-body", "real")  # increasing interaction order


def marginal_tv(x: Tensor, ref: Tensor, q: int, k: int) -> float:
    """Mean total-variation distance between the empirical k-site marginals of ``x`` and ``ref``
    (both (n, L)): over all pairs i < j for k = 2, over contiguous windows i..i+k-1 otherwise (the
    sites the ladder's 3- and 4-body terms couple). 0 for equal samples, 1 for disjoint supports;
    finite samples give a positive floor (measure it with a second sample of the same law)."""
    L = x.shape[1]
    sites = ([(i, j) for i in range(L) for j in range(i + 1, L)] if k == 2
             else [tuple(range(i, i + k)) for i in range(L - k + 1)])
    tv = []
    for s in sites:
        w = q ** torch.arange(len(s) - 1, -1, -1)
        cx = torch.bincount((x[:, list(s)] * w).sum(1), minlength=q ** len(s)).double() / x.shape[0]
        cr = torch.bincount((ref[:, list(s)] * w).sum(1), minlength=q ** len(s)).double() / ref.shape[0]
        tv.append(0.5 * float((cx - cr).abs().sum()))
    return float(np.mean(tv))


def saturation_ordered(steps: dict[str, int], plateau: dict[str, bool], names: tuple[str, ...] = PROBE_ORDER) -> bool:
    """Do the probes saturate in order of interaction order? A probe that is still falling at the
    end (no observed plateau) counts as infinitely late; the steps of ``names`` must increase
    STRICTLY (two probes still falling, or saturating at the same checkpoint, are not ordered)."""
    key = [float(steps[n]) if plateau[n] else math.inf for n in names]
    return all(a < b for a, b in zip(key[:-1], key[1:], strict=True))


@dataclass(frozen=True)
class LadderProbes:
    """The ladder's DSB inputs (:func:`ladder_probes`): ``bert_train`` (N, L) true sequences,
    ``probes`` name -> (n, L) (real held-out data and each clone), ``baseline`` (n, L) a second
    held-out real sample (finite-sample floor of :func:`marginal_tv`), ``true_loss`` (probe -> the
    generating Hamiltonian's exact conditional loss on it), ``model_loss`` ("N layers" -> probe ->
    pseudo-likelihood loss of that factored model), ``tv`` ("k" -> probe -> :func:`marginal_tv`
    to the real probe), ``diagnostics`` and ``cpu_s``."""

    q: int
    bert_train: Tensor
    probes: dict[str, Tensor]
    baseline: Tensor
    true_loss: dict[str, float]
    model_loss: dict[str, dict[str, float]]
    tv: dict[str, dict[str, float]]
    diagnostics: dict[str, float]
    cpu_s: dict[str, float]


def ladder_data(seed: int = 0, *, L: int = 20, q: int = 10, n_fit: int = 102_400, clone_chains: int = 256,
                n_probe: int = 4096, beta2: float = 0.5, g3: float = 0.6, g4: float = 0.8, chains: int = 512,
                burn_in: int = 60) -> tuple[Any, dict[str, Tensor], dict[str, float]]:
    """The ladder's Hamiltonian (:func:`~dsb_widgets.manybody.random_manybody`, same ``seed`` as
    :func:`~dsb_widgets.manybody.ladder`) and one heat-bath sample of it, shuffled and split into
    ``fit`` (n_fit, L: training data), ``init`` (clone chain starts), ``real`` and ``baseline``
    (n_probe each, held out); deterministic in its arguments. Also the sampler's diagnostics."""
    from dsb_widgets.manybody import random_manybody, sample

    truth = random_manybody(L, q, beta2, g3, g4, seed)
    data, diag = sample(truth, n_fit + clone_chains + 2 * n_probe, seed=seed + 1, chains=chains, burn_in=burn_in)
    data = data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed + 2))]
    cuts = np.cumsum([0, n_fit, clone_chains, n_probe, n_probe])
    parts = {name: data[cuts[i] : cuts[i + 1]] for i, name in enumerate(("fit", "init", "real", "baseline"))}
    return truth, parts, {f"sampler_{k}": float(v) for k, v in diag.items()}


def ladder_probes(seed: int = 0, *, L: int = 20, q: int = 10, n_train: int = 25_600, n_bert_train: int = 102_400,
                  beta2: float = 0.5, g3: float = 0.6, g4: float = 0.8, layers: tuple[int, ...] = (1, 2, 3),
                  steps: int = 600, lr: float = 0.01, d_embed: int | None = 32, n_heads: int = 4,
                  chains: int = 512, burn_in: int = 60, clone_chains: int = 256, max_sweeps: int = 120,
                  window: int = 10, window_tau: float | None = 20.0, n_probe: int = 4096,
                  progress: bool = False) -> LadderProbes:
    """Sample the ladder's Hamiltonian (:func:`~dsb_widgets.manybody.ladder`'s, same seed), train
    the factored models on the first ``n_train`` sequences (Adam, grown depth by depth, as the
    ladder), MH-clone them from ``clone_chains`` held-out starts (:func:`factored_clones`), and
    keep ``n_probe`` sequences per probe; the BERT gets the first ``n_bert_train`` sequences (a
    superset of the factored models' data, larger so that it does not overfit)."""
    from dsb_widgets.factored_attention import n_bodies, pseudo_likelihood_loss
    from dsb_widgets.manybody import train_factored

    cpu: dict[str, float] = {}
    t0 = time.process_time()
    truth, parts, diag = ladder_data(seed, L=L, q=q, n_fit=max(n_train, n_bert_train), clone_chains=clone_chains,
                                     n_probe=n_probe, beta2=beta2, g3=g3, g4=g4, chains=chains, burn_in=burn_in)
    data, init, real, baseline = parts["fit"], parts["init"], parts["real"], parts["baseline"]
    cpu["sample"] = time.process_time() - t0
    models: dict[int, Any] = {}
    prev = None
    for n in sorted(layers):
        t0 = time.process_time()
        prev, curve = train_factored(data[:n_train], baseline, q, n, steps, 256, lr, "adam", d_embed, n_heads, seed,
                                     init_from=prev)
        models[n] = prev.requires_grad_(False)
        cpu[f"factored_{n}"] = time.process_time() - t0
        if progress:
            print(f"{n} layers: held-out PLL {curve[steps]:.4f} ({cpu[f'factored_{n}']:.0f} CPU-s)", flush=True)
    t0 = time.process_time()
    clones = factored_clones(models, init, max_sweeps=max_sweeps, window=window, window_tau=window_tau, seed=seed)
    cpu["clones"] = time.process_time() - t0
    probes = {"real": real}
    g = torch.Generator().manual_seed(seed + 5)
    for n, (c, d) in clones.items():
        probes[f"{n_bodies(n)}-body"] = c[torch.randperm(c.shape[0], generator=g)[:n_probe]]
        diag.update({f"clone_{n_bodies(n)}body_{k}": float(v) for k, v in d.items()})
        if progress:
            print(f"{n_bodies(n)}-body clone: {d}", flush=True)
    named = {**probes, "baseline": baseline}
    with torch.no_grad():
        true_loss = {p: truth.conditional_loss(x) for p, x in named.items()}
        model_loss = {f"{n} layers": {p: float(pseudo_likelihood_loss(m, x, chunk=2048)) for p, x in named.items()}
                      for n, m in models.items()}
    tv = {str(k): {p: marginal_tv(x, real, q, k) for p, x in named.items()} for k in (1, 2, 3, 4)}
    return LadderProbes(q, data[:n_bert_train], probes, baseline, true_loss, model_loss, tv,
                        {k: float(v) for k, v in diag.items()}, cpu)


def assemble_dsb(lp: LadderProbes, berts: list[Any], k: float = 3.0) -> Any:
    """One ``xarray.Dataset`` from :func:`ladder_probes` and one :func:`bert_on_clones` result per
    seed: ``loss`` (seed, probe, step), ``saturation_step`` / ``plateau`` / ``noise`` (seed, probe),
    the same of the seed-mean curve (``mean_saturation_step``, ``mean_plateau``), ``true_loss``
    (probe), ``model_loss`` (layers, probe), ``tv`` (order, probe); attrs ``ordered_seed<s>`` and
    ``ordered_mean`` (:func:`saturation_ordered`, 1/0), diagnostics, CPU seconds."""
    import xarray as xr

    from dsb_widgets.saturation import plateau_observed, saturation_step

    names = [p for p in PROBE_ORDER if p in lp.probes]
    n = min(b.step.size for b in berts)  # seeds read back part-way: their common checkpoints
    berts = [curves_dataset({p: b.loss.sel(probe=p).values[:n].tolist() for p in names},
                            [int(v) for v in b.step.values[:n]], k, **b.attrs) for b in berts]
    loss = np.stack([b.loss.values for b in berts])  # (S, P, C)
    steps = np.asarray(berts[0].step.values)
    mean = loss.mean(0)
    msat = [saturation_step(steps, row, k=k) for row in mean]
    mplat = [plateau_observed(steps, s) for s in msat]
    seeds = [int(b.attrs["bert_seed"]) for b in berts]
    cols = ["real", *[p for p in names if p != "real"], "baseline"]
    ds = xr.Dataset(
        {"loss": (("seed", "probe", "step"), loss),
         "saturation_step": (("seed", "probe"), np.stack([b.saturation_step.values for b in berts])),
         "plateau": (("seed", "probe"), np.stack([b.plateau.values for b in berts])),
         "noise": (("seed", "probe"), np.stack([b.noise.values for b in berts])),
         "mean_saturation_step": (("probe",), np.array(msat)), "mean_plateau": (("probe",), np.array(mplat)),
         "true_loss": (("data",), np.array([lp.true_loss[p] for p in cols])),
         "model_loss": (("layers", "data"), np.array([[lp.model_loss[m][p] for p in cols] for m in lp.model_loss])),
         "tv": (("order", "data"), np.array([[lp.tv[o][p] for p in cols] for o in lp.tv]))},
        coords={"seed": seeds, "probe": names, "step": steps, "data": cols, "layers": list(lp.model_loss),
                "order": [int(o) for o in lp.tv]},
        attrs={**{kk: v for kk, v in berts[0].attrs.items() if kk not in ("units", "bert_seed", "saturation_k")},
               "saturation_k": k,
               "units": "nats per masked token (loss); nats per site (true_loss, model_loss)", "q": lp.q,
               "L": int(lp.bert_train.shape[1]), "n_bert_train": int(lp.bert_train.shape[0]),
               "n_probe": int(lp.probes["real"].shape[0]),
               "paper": "Rende, Gerace, Laio, Goldt (NeurIPS 2024), Fig. 2 data, Sec. 4 test",
               **lp.diagnostics, **{f"cpu_s_{kk}": v for kk, v in lp.cpu_s.items()},
               **{f"cpu_s_bert_seed{s}": float(b.attrs["cpu_s"]) for s, b in zip(seeds, berts, strict=True)}})
    if set(PROBE_ORDER) <= set(names):
        for i, s in enumerate(seeds):
            ds.attrs[f"ordered_seed{s}"] = int(saturation_ordered(
                {p: int(ds.saturation_step.values[i, j]) for j, p in enumerate(names)},
                {p: bool(ds.plateau.values[i, j]) for j, p in enumerate(names)}))
        ds.attrs["ordered_mean"] = int(saturation_ordered(dict(zip(names, map(int, msat), strict=True)),
                                                          dict(zip(names, mplat, strict=True))))
    return ds


def ladder_dsb(seed: int = 0, *, bert_seeds: tuple[int, ...] = (0,), bert_steps: int = 32_768, per_octave: int = 8,
               k: float = 3.0, progress: bool = False, **probe_kwargs: Any) -> Any:
    """The DSB on the many-body ladder end to end: :func:`ladder_probes` (``probe_kwargs``), then a
    BERT per seed in ``bert_seeds`` (:func:`bert_on_clones`, its defaults: 2 x 64, AdamW lr 1e-3,
    64 warm-up steps then constant) for ``bert_steps`` with ``per_octave`` checkpoints per octave,
    assembled by :func:`assemble_dsb`."""
    lp = ladder_probes(seed, progress=progress, **probe_kwargs)
    berts = [bert_on_clones(lp.bert_train, lp.probes, lp.q, steps=bert_steps, per_octave=per_octave, seed=s, k=k,
                            progress=progress) for s in bert_seeds]
    return assemble_dsb(lp, berts, k=k)
