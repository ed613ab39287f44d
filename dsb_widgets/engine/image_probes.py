"""Probe sets of the image experiment, built once per (data, probe, options, seed) and cached.

Probes (Belrose et al., ICML 2024; Refinetti, Ingrosso, Goldt, ICML 2023):

============= ===== ===============================================================
probe         order what it keeps
============= ===== ===============================================================
real          inf   held-out test images (everything)
maxent1       1     class means only: pixels independent, max-entropy density on [0, 1]
maxent2       2     class means and covariances: N(mu_y, Sigma_y) (not clamped, as Belrose)
maxent2_cube  2     class means and covariances on the pixel hypercube [0, 1]^d: samples
                    sigmoid(u) optimised to match them, with an entropy bonus (Belrose)
maxent3       3     + third moments in each class's top-k principal subspace (``maxent3.py``)
gauss_clone   2     Refinetti's Gaussian-mixture clone: N(mu_y, Sigma_y + ridge I), clamped
ot            2     test image of class a moved by Gaussian OT onto the mean/cov of class b
cqn           1     test image of class a moved by coordinatewise quantile normalisation onto b
shift         1     test image of class a shifted per pixel, inside [0, 1], onto b's mean
============= ===== ===============================================================

For the edits (``ot``, ``cqn``, ``shift``) b is drawn per image uniformly from the other classes;
``y`` is the source class a and ``target`` is b.

Caching (``dsb_widgets.probe_cache``): class statistics are stored per training-set content
hash, the ``-o ot_shrinkage=heldout`` weight per (training-set hash, selection rule
``ot_shrinkage.SPEC``; 67 CPU-s on Fashion-MNIST), and each probe set per (train and test content
hashes, probe, size, seed, the options that change it, for ``heldout`` OT the rule too, cache
version). Measured (1 thread, machine loaded, so wall >> CPU): Fashion-MNIST,
default probes, all hits 0.43 CPU-s (3.9 s wall) against ~12 min wall for the first build (OT
alone 20 CPU-s); CIFAR-10 ``real`` + ``ot``: miss 83.6 CPU-s (class statistics + rank-256 PPCA
OT, 1377 s wall), hit 2.1 CPU-s (mostly hashing the 600 MB training split); digits, all nine
probes: 50 s -> 0.14 s wall.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from dsb_widgets import probe_cache
from dsb_widgets.data.common import ImageData
from dsb_widgets.engine.task import Probe, probe_seed
from dsb_widgets.errors import ConfigError
from dsb_widgets.options import parse_options
from dsb_widgets.options_images import ImageOptions
from dsb_widgets.stats import ClassStats, Shrinkage

PROBE_ORDER = {"real": math.inf, "maxent1": 1.0, "maxent2": 2.0, "maxent2_cube": 2.0, "maxent3": 3.0,
               "gauss_clone": 2.0, "ot": 2.0, "cqn": 1.0, "shift": 1.0}
IMAGE_PROBES = tuple(PROBE_ORDER)
DEFAULT_PROBES = ("real", "maxent1", "maxent2", "maxent3", "gauss_clone", "ot", "cqn")
EDIT_PROBES = ("ot", "cqn", "shift")
OT_EXACT_MAX_DIM = 1024  # above: PPCA OT of rank OT_AUTO_RANK unless -o ot_rank says otherwise
OT_AUTO_RANK = 256
PROBE_OPTIONS = {  # the options that change each probe (part of its cache key)
    "maxent1": ("maxent1",), "maxent2": ("clamp_maxent2",), "maxent3": ("maxent3_k",),
    "maxent2_cube": ("cube_steps",), "ot": ("ot_shrinkage", "clamp_ot", "ot_rank"), "cqn": ("num_quantiles",),
    "shift": ("num_quantiles",),
}


def _balanced_labels(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """n labels, as equal per class as possible, in a random order."""
    y = torch.arange(n) % k
    return y[torch.randperm(n, generator=gen)]


def _subset(test: ImageData, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randperm(len(test), generator=gen)[: min(n, len(test))]
    return test.x[idx], test.y[idx]


def _other_class(y: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """For each label a, a class b != a drawn uniformly from the other k - 1."""
    shift = torch.randint(1, k, y.shape, generator=gen)
    return (y + shift) % k


def data_hash(data: ImageData) -> str:
    return probe_cache.tensor_hash(data.x, data.y)


def class_stats(train: ImageData, train_hash: str | None = None) -> ClassStats:
    """Per-class mean/covariance of ``train``, from the disk cache when present."""
    key = train_hash or data_hash(train)

    def build() -> dict[str, torch.Tensor]:
        st = ClassStats.fit(train.x, train.y, num_classes=train.num_classes)
        return {"counts": st.counts, "mean": st.mean, "m2": st._m2, "shape": torch.tensor(train.shape)}

    t = probe_cache.cached("class_stats", {"kind": "class_stats", "train": key}, build)
    st = ClassStats(int(t["counts"].numel()))
    st.counts, st.mean, st._m2 = t["counts"], t["mean"], t["m2"]
    st.image_shape = tuple(int(v) for v in t["shape"].tolist())
    return st


def clone_sampler(stats: ClassStats) -> Any:
    """Refinetti et al.'s Gaussian-mixture clone: per class and channel, tiny ridge (clamp on sampling)."""
    from dsb_widgets.maxent import REFINETTI_RIDGE, GaussianSampler

    return GaussianSampler.fit(stats, ridge=REFINETTI_RIDGE, per_channel=True)


def as_options(options: ImageOptions | Mapping[str, Any] | None) -> ImageOptions:
    """The typed options (a mapping, e.g. ``cfg.options``, is validated by the schema)."""
    if isinstance(options, ImageOptions):
        return options
    return parse_options(ImageOptions, options or {}, experiment="images")


def _synthetic(name: str, stats: Callable[[], ClassStats], train: ImageData, y: torch.Tensor,
               gen: torch.Generator, options: ImageOptions) -> torch.Tensor:
    from dsb_widgets.maxent import ExponentialMaxEnt, GaussianSampler, IndependentMarginals, hypercube_maxent2
    from dsb_widgets.maxent3 import ThirdOrderSampler

    if name == "maxent1":
        if options.maxent1 == "marginals":
            return IndependentMarginals.fit(train.x, train.y).sample(y, generator=gen)
        return ExponentialMaxEnt.fit(stats()).sample(y, generator=gen)
    if name == "maxent2":
        return GaussianSampler.fit(stats()).sample(y, generator=gen, clamp=bool(options.clamp_maxent2))
    if name == "maxent2_cube":
        return hypercube_maxent2(stats(), y, generator=gen, steps=int(options.cube_steps))
    if name == "maxent3":
        k = int(options.maxent3_k)
        return ThirdOrderSampler.fit(stats(), train.x, train.y, k=k).sample(y, generator=gen)
    return clone_sampler(stats()).sample(y, generator=gen, clamp=True)


def _ot_rank(d: int, options: ImageOptions) -> int:
    return options.ot_rank if options.ot_rank > 0 else (0 if d <= OT_EXACT_MAX_DIM else OT_AUTO_RANK)


def ot_shrinkage_weight(train: ImageData, stats: ClassStats, options: ImageOptions,
                        train_hash: str | None = None) -> Shrinkage:
    """The OT probe's shrinkage: ``-o ot_shrinkage`` as given, or for ``heldout`` the weight that
    :func:`dsb_widgets.ot_shrinkage.heldout_shrinkage` selects on ``train`` (cached per training
    set and selection rule, ~60 CPU-s on Fashion-MNIST)."""
    shrink = options.shrinkage
    if shrink != "heldout":
        return shrink
    from dsb_widgets.ot_shrinkage import SPEC, heldout_shrinkage

    d = stats.dim
    if 0 < _ot_rank(d, options) < d:
        raise ConfigError(f"-o ot_shrinkage=heldout needs exact OT maps (d <= {OT_EXACT_MAX_DIM}, here {d}); "
                          "pass -o ot_shrinkage=optimal (PPCA maps) or -o ot_rank=0")

    def build() -> dict[str, torch.Tensor]:
        choice = heldout_shrinkage(train.x, train.y, stats)
        return {"weight": torch.tensor(choice.weight, dtype=torch.float64), "grid": torch.tensor(choice.grid),
                "errors": torch.tensor(choice.errors)}

    t = probe_cache.cached("ot_shrinkage", {"kind": "ot_shrinkage", "train": train_hash or data_hash(train),
                                            "rule": SPEC}, build)
    return float(t["weight"])


def _edit(name: str, stats: Callable[[], ClassStats], train: ImageData, x: torch.Tensor, y: torch.Tensor,
          b: torch.Tensor, gen: torch.Generator, options: ImageOptions, shrink: Shrinkage = None) -> torch.Tensor:
    from dsb_widgets.quantile import QuantileNormalizer

    if name == "ot":  # shrink: the resolved ``ot_shrinkage_weight``
        from dsb_widgets.gaussian_ot import GaussianOT

        d = x[0].numel()
        rank = _ot_rank(d, options)
        if 0 < rank < d:  # CIFAR-sized: exact OT between PPCA covariances (lowrank_ot.py)
            from dsb_widgets.lowrank_ot import LowRankOT

            out = LowRankOT.fit(stats(), rank, shrinkage=shrink).transport(x, y, b)
            return out.clamp(0, 1) if options.clamp_ot else out
        ot = GaussianOT.fit(stats(), shrinkage=shrink)  # None: raw (pseudo-inverse) covariances
        return ot.transport(x, y, b, clamp=options.clamp_ot)
    qn = QuantileNormalizer.fit(train.x, train.y, num_quantiles=int(options.num_quantiles))
    if name == "cqn":
        return qn.transform(x, y, b, generator=gen)
    from dsb_widgets.mean_shift import BoundedShift

    return BoundedShift.fit(qn).transform(x, y, b)


def build_image_probes(train: ImageData, test: ImageData, names: tuple[str, ...], n: int,
                       seed: int, options: ImageOptions | Mapping[str, Any] | None = None) -> list[Probe]:
    """The probe sets ``names`` with ``n`` examples each, deterministic in ``seed`` and cached.

    Each probe draws from its own generator seeded by ``(seed, name)`` (``probe_seed``), so a
    probe's data does not depend on which other probes are built or in what order.
    """
    options = as_options(options)
    k = train.num_classes
    hashes = {"train": data_hash(train), "test": data_hash(test)}
    memo: dict[str, ClassStats] = {}

    def stats() -> ClassStats:
        if "s" not in memo:
            memo["s"] = class_stats(train, hashes["train"])
        return memo["s"]

    probes: list[Probe] = []
    for name in names:
        if name not in PROBE_ORDER:
            raise ValueError(f"unknown image probe {name!r}; choose from {', '.join(IMAGE_PROBES)}")
        pseed = probe_seed(seed, name)
        prov = {"kind": "image_probe", "probe": name, "n": int(n), "seed": int(seed), "probe_seed": pseed,
                **hashes, "options": {o: getattr(options, o) for o in PROBE_OPTIONS.get(name, ())}}
        if name == "ot" and options.shrinkage == "heldout":  # the selection rule is part of the key
            from dsb_widgets.ot_shrinkage import SPEC

            prov["ot_shrinkage_rule"] = SPEC

        def build(name: str = name, pseed: int = pseed) -> dict[str, torch.Tensor]:
            gen = torch.Generator().manual_seed(pseed)
            if name == "real":
                x, y = _subset(test, n, gen)
                return {"x": x, "y": y}
            if name in EDIT_PROBES:
                x, y = _subset(test, n, gen)
                b = _other_class(y, k, gen)
                shrink = ot_shrinkage_weight(train, stats(), options, hashes["train"]) if name == "ot" else None
                edited = _edit(name, stats, train, x, y, b, gen, options, shrink)
                return {"x": edited.float().reshape(x.shape), "y": y, "target": b}
            y = _balanced_labels(n, k, gen)
            x = _synthetic(name, stats, train, y, gen, options)
            return {"x": x.float().reshape(len(y), *train.shape), "y": y}

        t = probe_cache.cached(f"probe-{name}", prov, build)
        desc = ("held-out test images" if name == "real" else
                f"test images of class a moved onto class b ({name})" if name in EDIT_PROBES else
                f"{name} samples from training-set class statistics")
        probes.append(Probe(name, PROBE_ORDER[name], t["x"], t["y"], target=t.get("target"), description=desc))
    return probes
