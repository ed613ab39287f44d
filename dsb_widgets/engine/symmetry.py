"""The symmetry experiment: does a transformer learn S_n-symmetric targets first?

Lavie, Gur-Ari & Ringel (ICML 2024) predict, from the infinite-width (GP) limit, that a
transformer learns functions in the trivial (permutation-symmetric) sector of S_n, acting on the
n context positions, with fewer samples than functions in the other isotypic sectors. Only the
paper's abstract-level claims are verified for this project (``../shared/NOTES.md``): this
experiment is our design from them, not a reproduction of the paper's figures.

One run trains K output heads at once on the same contexts (multi-output regression, MSE), one
head per sector target of :mod:`dsb_widgets.sn_sectors` (unit variance each, orthogonal token
directions, so the heads differ only in how they use positions); each sector is one probe:

================ ===== ==========================================================
probe            order held-out MSE of the head fitting ...
================ ===== ==========================================================
``trivial``      0     ``sum_i f(x_i) / sqrt n``: the symmetric sector
``standard``     1     ``sum_i a_i f(x_i)``, ``sum a = 0``: the (n-1, 1) sector
``trivial_pair`` 0     the symmetric two-body function ``sum_{i!=j} f(x_i) f(x_j)`` (scaled)
``pair``         2     ``sum_{i!=j} B_ij f(x_i) f(x_j)``, zero row sums: the (n-2, 2) sector
================ ===== ==========================================================

``order`` is the sector's rank (boxes below the first row of its Young diagram). One shared
run (rather than one run per sector) measures every sector under the same optimiser, seed and
batches; the heads share the trunk, which is what a transformer fitting a mixed target does.
``trivial`` vs ``standard`` (both one-body) and ``trivial_pair`` vs ``pair`` (both two-body)
isolate the sector from the interaction order. Targets are noiseless, so the floor is 0 and the
relative loss is the held-out MSE over its step-0 value. ``--model mlp`` is the control: an MLP
on the flattened context has no S_n bias (it learns ``trivial`` and ``standard`` equally fast).

Training data: a fresh batch of contexts every step (``-o train_size=0``, online) or a fixed set
of P contexts (``-o train_size=P``, the sample-complexity sweep, ``examples/sweep_symmetry.yaml``).
Measured (defaults: d = 8, linear feature, transformer 2 x 64, AdamW lr 1e-3, batch 64, 1024
steps, online data, probe_size 1024; 3 seeds; 2 shared CPU cores at load average 15-30, so the
wall times are upper bounds). First checkpoint at which the held-out loss is half its step-0
value (``symmetry_bias.steps_to_fraction``), seeds 0/1/2:

============ ================= ================= =====================
probe        n = 8             n = 16            n = 8, ``--model mlp``
============ ================= ================= =====================
trivial      3 / 3 / 3         4 / 5 / 4         16 / 16 / 16
standard     128 / 161 / 161   406 / 256 / 406   16 / 16 / 16
trivial_pair never (0.98)      never             203 / 203 / 161
pair         never (0.95)      never             256 / 256 / 256
============ ================= ================= =====================

n = 8 transformer: trivial 0.995 -> 0.181 at step 6 -> 0.001 at 1024; standard flat at ~1.05
until step ~100, then 0.112 at 203, 0.002 at 1024 (wall 1436 s on the loaded machine). The
MLP control learns both one-body sectors at the same rate, as its rotation invariance implies,
and the two-body ones by step ~250; the transformer does not fit the two-body targets in 1024
steps (held-out loss stays at the variance): mean pooling after LayerNorm makes products of
token features hard to reach, a departure from "symmetric first" that is about body order.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from dsb_widgets.engine.task import ConfigError, Experiment, Probe, RunConfig, Task, register_experiment, required
from dsb_widgets.models.seq_transformer import SEQ_MODELS, SeqConfig, make_seq_model
from dsb_widgets.options import parse_options
from dsb_widgets.options_symmetry import SymmetryOptions
from dsb_widgets.sn_sectors import BODY, SECTOR_RANK, SECTORS, SectorTargets, feature_map, min_context, sector_columns

PROBE_SEED_OFFSET = 7_777  # probe contexts come from seed + this; a fixed training set from seed


def symmetry_options(cfg: RunConfig) -> SymmetryOptions:
    return parse_options(SymmetryOptions, cfg.options, experiment="symmetry")


def make_targets(cfg: RunConfig) -> SectorTargets:
    o = symmetry_options(cfg)
    return SectorTargets.make(o.context, o.dim, tuple(cfg.probes), seed=cfg.seed, feature=o.feature)  # type: ignore[arg-type]


def _contexts(targets: SectorTargets, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.random.default_rng(seed).standard_normal((count, targets.n, targets.d))
    return torch.from_numpy(x).float(), torch.from_numpy(targets(x)).float()  # (N, n, d), (N, K)


def device_targets(targets: SectorTargets, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``targets`` as a torch function on ``device``: contexts (B, n, d) float64 -> (B, K) float64.

    The same formula as ``SectorTargets.__call__`` (:func:`sector_columns`), with the directions and
    coefficients copied to the device once; after the float32 cast the targets equal the NumPy ones
    bitwise on CPU (tested), so online runs draw batches with no host round trip (issue 17)."""
    w = torch.as_tensor(targets.directions, dtype=torch.float64, device=device)  # (K, d)
    coeffs = [torch.as_tensor(c, dtype=torch.float64, device=device) for c in targets.coeffs]
    phi = feature_map(targets.feature)

    def fn(x: torch.Tensor) -> torch.Tensor:
        f = phi(torch.einsum("bnd,kd->bkn", x, w))  # (B, K, n)
        return torch.stack(sector_columns(f, coeffs, torch.einsum), dim=1)

    return fn


def build_symmetry_probes(targets: SectorTargets, size: int, seed: int) -> list[Probe]:
    """One probe per sector on shared held-out contexts; y (N, K) is NaN outside its own head."""
    x, y = _contexts(targets, size, seed + PROBE_SEED_OFFSET)
    probes = []
    for k, name in enumerate(targets.sectors):
        yk = torch.full_like(y, float("nan"))
        yk[:, k] = y[:, k]
        probes.append(Probe(name, float(SECTOR_RANK[name]), x, yk, floor=0.0,
                            description=f"held-out MSE of the {name} head (S_n rank {SECTOR_RANK[name]}, "
                                        f"{BODY[name]}-body, unit variance)"))
    return probes


def build_symmetry_task(cfg: RunConfig) -> Task:
    o = symmetry_options(cfg)
    targets = make_targets(cfg)
    probes = build_symmetry_probes(targets, required(cfg.probe_size, "probe_size"), cfg.seed)
    scfg = SeqConfig(context=o.context, dim=o.dim, outputs=len(targets.sectors), n_layer=o.n_layer,
                     n_head=o.n_head, d_model=o.d_model, pos_std=o.pos_std, width=o.width)
    if o.train_size > 0:  # the fixed set lives on the run's device, indices drawn there (no sync per step)
        from dsb_widgets.engine.task import pick_device

        dev = pick_device(cfg.device)
        x_all, y_all = (t.to(dev) for t in _contexts(targets, o.train_size, cfg.seed))

        def sample_batch(gen: torch.Generator, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(o.train_size, (bs,), generator=gen, device=gen.device).to(dev, non_blocking=True)
            return x_all[idx], y_all[idx]
    else:  # online: fresh contexts drawn on the generator's device, targets computed there too
        fns: dict[torch.device, Callable[[torch.Tensor], torch.Tensor]] = {}

        def sample_batch(gen: torch.Generator, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(bs, o.context, o.dim, generator=gen, dtype=torch.float64, device=gen.device)
            fn = fns.setdefault(x.device, device_targets(targets, x.device))
            return x.float(), fn(x).float()

    return Task(make_model=lambda seed: make_seq_model(str(cfg.model), scfg), sample_batch=sample_batch,
                probes=probes, loss="mse", device_sampling=True,
                info={"units": "mse", "context": o.context, "train_size": o.train_size, "feature": o.feature})


def _validate(cfg: RunConfig) -> None:
    o = symmetry_options(cfg)
    probes = required(cfg.probes, "probes")
    for p in probes:
        if o.context < min_context(p):
            raise ConfigError(f"sector {p!r} needs --context >= {min_context(p)} (got {o.context}); "
                              f"raise --context or pass --probes without {p}")
    top = max(SECTORS.index(p) for p in probes)
    if o.dim <= top:
        raise ConfigError(f"--probes {' '.join(probes)} need -o dim >= {top + 1} (got {o.dim})")


register_experiment(Experiment(
    name="symmetry",
    build=build_symmetry_task,
    defaults={"dataset": "gaussian", "model": "transformer", "steps": 1024, "batch_size": 64,
              "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "warmup": 0, "per_octave": 3,
              "probe_size": 1024},
    models=SEQ_MODELS,
    probes=SECTORS,
    datasets=("gaussian",),
    description="transformer regression on S_n sector targets (Lavie et al. 2024): loss by symmetry sector",
    validate=_validate,
    options=SymmetryOptions,
))
