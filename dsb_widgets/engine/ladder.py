"""Refinetti et al.'s clone ladder: train on clones that keep ever more of the data's statistics.

Refinetti, Ingrosso & Goldt (ICML 2023) train the same network on CIFAR-10 and on a *ladder* of
clones (Gaussian mixture -> WGAN samples -> cifar5m) and compare the test loss on real images:
the real-trained network follows the clone-trained one for a while, and leaves each rung later
the more statistics the rung keeps (Gaussian mixture ~50 SGD steps, cifar5m ~2,000). Our rungs,
all sampled fresh for every batch (``-o train_on=...``):

============== ==================================================================
rung           what the clone keeps, per class
============== ==================================================================
iso_clone      mean and one scalar variance tr(Sigma)/d: N(mu_y, s_y^2 I), clamped
gauss_clone    mean and covariance (Refinetti's Gaussian mixture, per channel), clamped
maxent3_clone  mean, covariance and top-k third moments (``maxent3.ThirdOrderSampler``), clamped
gmm_clone      a mixture of ``gmm_k`` Gaussians (k-means fit; ``gaussian_mixture.py``): mean and
               covariance exactly, plus the class's modes; more components keep more, clamped
real           everything
============== ==================================================================

``clone_ladder`` trains one network per rung plus the real-trained one (same initialisation and
batch seeds) and reports, per rung, the checkpoint from which the rung-trained network's
real-test loss differs from the real-trained one's by more than ``rel`` (10%) for good: the
*divergence step* (``divergence_step``; None = never left it). The DSB predicts the steps grow up
the ladder.

Measured (sklearn digits, MLP 256, SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, cosine over
1024 steps, 3 seeds, 6 checkpoints per octave; 2 loaded CPU cores, 842 s wall for the 4 runs):
divergence steps iso_clone 144, gauss_clone 228, maxent3_clone 323 (first 10% crossing = for
good, all three); final real-test loss 0.573 / 0.260 / 0.220 vs 0.196 trained on real data.
gmm_clone (session stop 25, same runs, 62 CPU-s for 7 on a quiet machine): k = 4 456, k = 16 and
64 never (final 0.197 / 0.197). Fashion-MNIST (convnet, lr 0.05): gauss 18, gmm k = 4 / 16 / 64 /
256 at 36 / 57 / 144 / 456 (``benchmarks/clone_ladder/README.md``).
With lr 0.05 the early fall is so steep that all three rungs cross 10% at the same checkpoint
(step 45): use a learning rate that resolves the early phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import xarray as xr

from dsb_widgets.data.common import ImageData
from dsb_widgets.stats import ClassStats

LADDER = ("iso_clone", "gauss_clone", "maxent3_clone", "gmm_clone")
BatchSampler = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class IsotropicSampler:
    """N(mu_y, s_y^2 I) with s_y^2 = tr(Sigma_y) / d: the class mean and total variance only."""

    mean: torch.Tensor  # (K, d) float64
    std: torch.Tensor  # (K,) float64

    @classmethod
    def fit(cls, stats: ClassStats) -> IsotropicSampler:
        return cls(stats.mean, stats.var.mean(1).sqrt())

    def sample(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(len(labels), self.mean.shape[1], generator=generator, dtype=torch.float64)
        return (self.mean[labels] + self.std[labels, None] * z).float()


def clone_batches(train_on: str, train: ImageData, stats: ClassStats, maxent3_k: int = 8,
                  gmm_k: int = 16) -> BatchSampler:
    """A ``sample_batch(generator, batch_size)`` drawing fresh clone images, labels by the class prior."""
    from dsb_widgets.engine.image_probes import clone_sampler
    from dsb_widgets.gaussian_mixture import GaussianMixtureSampler
    from dsb_widgets.maxent3 import ThirdOrderSampler

    if train_on == "iso_clone":
        sampler = IsotropicSampler.fit(stats)

        def draw(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return sampler.sample(y, generator=gen)
    elif train_on == "gauss_clone":
        gauss = clone_sampler(stats)

        def draw(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return gauss.sample(y, generator=gen)
    elif train_on == "maxent3_clone":
        third = ThirdOrderSampler.fit(stats, train.x, train.y, k=maxent3_k)

        def draw(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return third.sample(y, generator=gen)
    elif train_on == "gmm_clone":
        mixture = GaussianMixtureSampler.fit(train.x, train.y, k=gmm_k)

        def draw(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return mixture.sample(y, generator=gen)
    else:
        raise ValueError(f"unknown clone {train_on!r}; choose one of {', '.join(LADDER)}")
    prior = torch.bincount(train.y, minlength=train.num_classes).double()

    def sample_batch(gen: torch.Generator, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.multinomial(prior, bs, replacement=True, generator=gen)
        return draw(y, gen).clamp(0, 1).reshape(bs, *train.shape), y

    return sample_batch


def divergence_step(real: xr.Dataset, clone: xr.Dataset, probe: str = "real", rel: float = 0.1,
                    persistent: bool = True) -> int | None:
    """The checkpoint at which the seed-mean ``probe`` losses part by more than ``rel`` (relative
    to the smaller loss); None if they never do.

    ``persistent=True`` (default) takes the first checkpoint from which the gap *stays* above
    ``rel`` to the end of the run: during the steep early fall of the loss, two curves a few steps
    out of phase cross 10% and come back, which says nothing about what the nets learned.
    ``persistent=False`` takes the first crossing (step 0 ignored)."""
    la = real["loss"].sel(probe=probe).mean("seed").values
    lb = clone["loss"].sel(probe=probe).mean("seed").values
    apart = np.abs(la - lb) / np.minimum(la, lb) > rel
    apart[0] = False
    if not apart.any():
        return None
    if not persistent:
        return int(real.step.values[int(np.argmax(apart))])
    if not apart[-1]:
        return None
    together = np.nonzero(~apart)[0]
    return int(real.step.values[together[-1] + 1])


def clone_ladder(cfg: object, rungs: tuple[str, ...] = LADDER, rel: float = 0.1,
                 train_fn: Callable[..., object] | None = None,
                 variants: Mapping[str, Mapping[str, object]] | None = None,
                 ) -> tuple[dict[str, int | None], dict[str, xr.Dataset]]:
    """Train ``cfg`` (a RunConfig) on real data and on each rung; return the divergence step per
    rung and the results (key ``real`` and one per rung). Probes: ``real`` only (fast).

    ``variants`` adds labelled runs with their own options, e.g. ``{"gmm_clone_k64": {"train_on":
    "gmm_clone", "gmm_k": 64}}``: one real-trained reference for a whole sweep of a rung's dial."""
    from dsb_widgets.engine.loop import train

    run = train_fn or train
    base = cfg.replace(probes=("real",))  # type: ignore[attr-defined]
    runs: dict[str, Mapping[str, object]] = {"real": {"train_on": "real"}}
    runs.update({rung: {"train_on": rung} for rung in rungs})
    runs.update(variants or {})
    results = {label: run(base.replace(options={**dict(base.options), **opts})).dataset  # type: ignore[attr-defined]
               for label, opts in runs.items()}
    steps = {label: divergence_step(results["real"], results[label], rel=rel) for label in runs if label != "real"}
    return steps, results
