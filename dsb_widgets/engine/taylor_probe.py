"""Taylor predictions of the probe loss, recorded by the engine next to the measured probes.

Belrose et al. (ICML 2024, Sec. 2) expand the expected loss of a classifier around the class mean:

    E_{x ~ p(x|y)}[L(f(x), y)] = L(mu_y) + 1/2 tr(H_y Sigma_y) + O(third and higher central moments)
                               =: T0_y + T2_y + ...,    H_y = d^2 L(f(x), y)/dx^2 at x = mu_y.

With ``dsb run images -o taylor=true`` the engine records, at every checkpoint and per seed,

=========== ====== ================================================================
extra probe order  value
=========== ====== ================================================================
taylor0     1      sum_y w_y T0_y: the loss predicted from the class means alone
taylor2     2      sum_y w_y (T0_y + T2_y): predicted from class means and covariances
taylor4     2      sum_y w_y (T0_y + T2_y + T4_y), T4 = 1/24 E[D^4 L[x - mu]^4] under
                   N(mu_y, Sigma_y) (Monte Carlo), only with ``-o taylor_order=4``
taylorJ_cK  J      per-class term T0 + ... + TJ of class K (``-o taylor_per_class=true``)
=========== ====== ================================================================

("order" is, as for every probe, the order of the data statistics the number depends on.)
The expansion is taken with exactly the Gaussians the ``maxent2`` probe samples from
(``GaussianSampler.fit(ClassStats)``: unbiased class covariance, no shrinkage, PSD-clipped) and
the class weights w_y of that probe's labels (balanced), so ``taylor2`` predicts the
``maxent2`` loss up to (a) the truncation error of the expansion (the Gaussian's fourth and higher
moments, measured by ``taylor4``) and (b) ``maxent2``'s own Monte-Carlo error (its 1000 samples).
If ``-o clamp_maxent2=true`` clips the probe to [0, 1] the two no longer match (the clip changes
the moments). ``-o taylor_weights=prior`` weights classes by the training class prior instead,
``uniform`` equally. The real-data loss also depends on higher moments; where it falls below
``taylor2`` the network uses statistics beyond the covariance (the DSB in one picture).

The class statistics and the eigendecompositions of the covariances (``CovFactor``) are
computed once in :func:`attach_taylor`. Per checkpoint and seed, order 2 with the exact
estimator (d <= 1024) is one batch of K x d Hessian quadratic forms v^T H v by nested jvp for all
classes at once; otherwise (``-o taylor_method=topk`` / ``hutchinson`` with ``-o taylor_samples=N``
for large inputs, or ``taylor_order=4``) ``class_taylor_expansion`` runs class by class.

Measured, default image run (``dsb run images -o taylor=true``: digits, MLP 64-256-256-10, 1 seed,
4096 AdamW steps, 35 checkpoints; this 2-core CPU, 1 thread, timed side by side in one process):
Taylor terms 0.045 s per checkpoint (all 10 classes; 0.24 s class by class), all six probes
0.045 s, one training step 0.008 s, so the Taylor terms are ~5% of the run (35 x 0.045 s of
~35 s). The first call in a process also pays a one-off 3-7 s import inside ``torch.func.jvp``.
Gap ``maxent2 - taylor2`` (nats; maxent2 = 1000 samples): +0.0005 at step 0, +0.007 at step 4,
+0.038 at step 16 (order 2 carries ~20% of maxent2 - taylor0), +0.068 at step 64, +0.061 at
256, +0.037 at 1024 and +0.069 at 4096, where taylor0 = taylor2 = 0.0000 (means classified
with certainty, softmax flat there) but maxent2 = 0.069: late, the Gaussian's loss comes
from samples across decision boundaries and ReLU kinks, which no expansion at mu sees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp

from dsb_widgets.data.common import ImageData
from dsb_widgets.engine.task import ConfigError, Task
from dsb_widgets.options_images import TAYLOR_METHODS, TAYLOR_ORDERS, TAYLOR_WEIGHTS, ImageOptions
from dsb_widgets.taylor import CovFactor, class_taylor_expansion

log = logging.getLogger(__name__)

METHODS = TAYLOR_METHODS  # the choices live with the typed image options
WEIGHTS = TAYLOR_WEIGHTS
ORDERS = TAYLOR_ORDERS
EXACT_MAX_DIM = 1024  # as dsb_widgets.taylor.taylor_expansion(method="auto")
CHUNK = 2048  # rows per nested-jvp batch

@dataclass(frozen=True)
class TaylorSettings:
    """The ``taylor_*`` run options (``-o taylor_method=exact`` etc.), validated."""

    order: int = 2  # 2: taylor0, taylor2; 4: also taylor4 (Gaussian T4 by Monte Carlo)
    method: str = "auto"  # order-2 estimator of dsb_widgets.taylor.taylor_expansion
    n_samples: int = 128  # Hutchinson probes (topk/hutchinson) and T4 Monte-Carlo draws
    per_class: bool = False  # also record taylorJ_cK for every class K
    weights: str = "maxent2"  # class weights: the maxent2 probe's labels, train prior, uniform
    seed: int = 0  # probe directions are fixed across checkpoints (common random numbers)

    @classmethod
    def from_options(cls, opts: Any) -> TaylorSettings:
        """From the typed :class:`~dsb_widgets.options_images.ImageOptions` (or a mapping)."""
        if not isinstance(opts, Mapping):
            opts = {k: getattr(opts, k) for k in ("taylor_order", "taylor_method", "taylor_samples",
                                                  "taylor_per_class", "taylor_weights", "taylor_seed")}
        s = cls(
            order=int(opts.get("taylor_order", 2)),
            method=str(opts.get("taylor_method", "auto")),
            n_samples=int(opts.get("taylor_samples", 128)),
            per_class=_as_bool(opts.get("taylor_per_class", False)),
            weights=str(opts.get("taylor_weights", "maxent2")),
            seed=int(opts.get("taylor_seed", 0)),
        )
        if s.order not in ORDERS:
            raise ConfigError(f"taylor_order must be 2 or 4 (got {s.order}); pass -o taylor_order=2")
        if s.method not in METHODS:
            raise ConfigError(f"unknown taylor_method {s.method!r}; pass -o taylor_method= one of {', '.join(METHODS)}")
        if s.weights not in WEIGHTS:
            raise ConfigError(
                f"unknown taylor_weights {s.weights!r}; pass -o taylor_weights= one of {', '.join(WEIGHTS)}"
            )
        if s.n_samples < 2:
            raise ConfigError(f"taylor_samples must be >= 2 (got {s.n_samples}); pass -o taylor_samples=128")
        return s

    @property
    def term_orders(self) -> tuple[int, ...]:
        """Partial sums recorded: (0, 2) or (0, 2, 4)."""
        return (0, 2) if self.order == 2 else (0, 2, 4)


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"expected true/false, got {v!r}; pass e.g. -o taylor_per_class=true")
    return bool(v)


STAT_ORDER = {0: 1.0, 2: 2.0, 4: 2.0}  # order of the data statistics each partial sum uses


@dataclass
class TaylorMeasure:
    """The engine's ``Task.measure``: stack -> {name: (S,)} Taylor predictions of the loss.

    means (K, d) and factors (K CovFactors) are the maxent2 Gaussians; weights (K,) sum to 1.
    ``seconds`` holds the wall time of every call; ``per_class`` the (S, K, len(term_orders))
    partial sums T0, T0+T2[, T0+T2+T4] of every call (for notebooks), in call order.
    """

    means: Tensor  # (K, d) float32
    factors: list[CovFactor]
    weights: Tensor  # (K,) float64
    input_shape: tuple[int, ...]
    settings: TaylorSettings
    seconds: list[float] = field(default_factory=list)
    per_class: list[Tensor] = field(default_factory=list)
    _on: dict[str, tuple[Tensor, list[CovFactor]]] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    def extra_probes(self) -> dict[str, float]:
        """name -> order of every quantity this measurement returns (``Task.extra_probes``)."""
        names = {f"taylor{j}": STAT_ORDER[j] for j in self.settings.term_orders}
        if self.settings.per_class:
            for j in self.settings.term_orders:
                names.update({f"taylor{j}_c{k}": STAT_ORDER[j] for k in range(self.num_classes)})
        return names

    def _stats_on(self, device: torch.device) -> tuple[Tensor, list[CovFactor]]:
        key = str(device)
        if key not in self._on:
            self._on[key] = (
                self.means.to(device),
                [CovFactor(f.eigvals.to(device), f.eigvecs.to(device)) for f in self.factors],
            )
        return self._on[key]

    @property
    def batched(self) -> bool:
        """Order 2 with the exact estimator: all classes' quadratic forms in one nested-jvp batch."""
        method, d = self.settings.method, self.means.shape[1]
        exact = method == "exact" or (method == "auto" and d <= EXACT_MAX_DIM)
        return self.settings.order == 2 and exact

    def class_terms(self, model: nn.Module) -> Tensor:
        """(K, len(term_orders)) partial sums per class for one model (T0, T0+T2[, ...+T4])."""
        device = next(model.parameters()).device
        means, factors = self._stats_on(device)
        s = self.settings
        if self.batched:
            return self._class_terms_batched(model, means, factors)
        res = class_taylor_expansion(
            model, means, factors, input_shape=self.input_shape, order=s.order,
            method=s.method, n_samples=s.n_samples, seed=s.seed,
        )  # fmt: skip
        terms = torch.stack([torch.stack([r.terms[j] for j in range(s.order + 1)]) for r in res])  # (K, order+1)
        partial = terms.detach().double().cumsum(1)  # T0, T0+T1, T0+T1+T2, ... (float64: T4 can be < eps32 * T0)
        return partial[:, list(s.term_orders)].cpu()

    def _class_terms_batched(self, model: nn.Module, means: Tensor, factors: list[CovFactor]) -> Tensor:
        """Same numbers as class_taylor_expansion(method="exact", order=2), one batch for all classes.

        Rows r = (class y, eigenpair i): x_r = mu_y, v_r = sqrt(lam_i) u_i, label y; the loss treats
        rows independently, so D^2 L[v_r, v_r] per row is class y's quadratic form. Measured on the
        digits MLP (1 thread): 0.03 s for all 10 classes vs 0.24 s class by class.
        """
        k = self.num_classes
        dirs = [(f.eigvecs * f.eigvals.sqrt()).T[f.eigvals > 0] for f in factors]  # K x (d_y', d)
        cls = torch.cat([torch.full((len(v),), y, device=means.device) for y, v in enumerate(dirs)])  # (R,)
        v = torch.cat(dirs)  # (R, d)
        shape = self.input_shape
        was_training = model.training
        model.eval()
        try:
            def loss_of(labels: Tensor) -> Callable[[Tensor], Tensor]:
                return lambda x: F.cross_entropy(model(x.view(-1, *shape)), labels, reduction="none")

            with torch.no_grad():
                t0 = loss_of(torch.arange(k, device=means.device))(means)  # (K,)
                q = []
                for rows in torch.arange(len(v), device=v.device).split(CHUNK):
                    f = loss_of(cls[rows])
                    vr = v[rows]
                    first = lambda x, f=f, vr=vr: jvp(f, (x,), (vr,))[1]  # noqa: E731
                    q.append(jvp(first, (means[cls[rows]],), (vr,))[1])  # (b,) = v^T H v
        finally:
            model.train(was_training)
        t2 = torch.zeros(k, dtype=torch.float64, device=means.device).index_add_(0, cls, torch.cat(q).double()) / 2
        return torch.stack([t0.double(), t0.double() + t2], 1).cpu()  # (K, 2)

    def __call__(self, stack: nn.Module) -> dict[str, Tensor]:
        t0 = time.perf_counter()
        size = int(getattr(stack, "size", 1))
        member = getattr(stack, "member", None)  # a ModelStack's seeds, else the model itself
        members = [member(i) for i in range(size)] if member is not None else [stack]
        per = torch.stack([self.class_terms(m) for m in members])  # (S, K, J)
        self.per_class.append(per)
        out = {f"taylor{j}": (per[:, :, i] * self.weights).sum(1) for i, j in enumerate(self.settings.term_orders)}
        if self.settings.per_class:
            for i, j in enumerate(self.settings.term_orders):
                out.update({f"taylor{j}_c{k}": per[:, k, i] for k in range(self.num_classes)})
        self.seconds.append(time.perf_counter() - t0)
        log.info("taylor terms: %.3f s for %d seed(s)", self.seconds[-1], size)
        return out


def maxent2_gaussians(train: ImageData) -> tuple[Tensor, Tensor]:
    """(K, d) means and (K, d, d) covariances, float64, of the maxent2 probe's N(mu_y, Sigma_y)."""
    from dsb_widgets.maxent import GaussianSampler
    from dsb_widgets.stats import ClassStats

    sampler = GaussianSampler.fit(ClassStats.fit(train.x, train.y, num_classes=train.num_classes))
    return sampler.mean, sampler.cov


def class_weights(kind: str, task: Task | None, train: ImageData) -> Tensor:
    """(K,) float64 weights summing to 1 (see TaylorSettings.weights)."""
    k = train.num_classes
    if kind == "maxent2" and task is not None:
        probe = next((p for p in task.probes if p.name == "maxent2"), None)
        if probe is not None:
            counts = torch.bincount(probe.y.long(), minlength=k).double()
            return counts / counts.sum()
        kind = "prior"  # no maxent2 probe in this run: fall back to the class prior
    if kind == "uniform":
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    counts = torch.bincount(train.y.long(), minlength=k).double()
    return counts / counts.sum()


def make_taylor_measure(train: ImageData, opts: ImageOptions | Mapping[str, Any],
                        task: Task | None = None) -> TaylorMeasure:
    """Class Gaussians, their eigendecompositions (once) and weights -> a TaylorMeasure."""
    settings = TaylorSettings.from_options(opts)
    means, covs = maxent2_gaussians(train)
    factors = []
    for c in covs:  # eigh in float64, used in float32 like the model
        f = CovFactor.from_cov(c)
        factors.append(CovFactor(f.eigvals.float(), f.eigvecs.float()))
    weights = class_weights(settings.weights, task, train)
    return TaylorMeasure(means.float(), factors, weights, tuple(train.shape), settings)


def attach_taylor(task: Task, train: ImageData, opts: ImageOptions | Mapping[str, Any]) -> TaylorMeasure:
    """Make the engine record taylor0/taylor2 (see module docstring) at every checkpoint.

    Sets ``task.measure`` and ``task.extra_probes``; raises ConfigError on bad ``taylor_*`` options
    or if the task already has another measurement.
    """
    if task.measure is not None:
        raise ConfigError("this task already records extra measurements; drop -o taylor=true")
    measure = make_taylor_measure(train, opts, task)
    task.measure = measure
    task.extra_probes = {**dict(task.extra_probes), **measure.extra_probes()}
    return measure
