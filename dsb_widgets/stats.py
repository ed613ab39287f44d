"""Per-class first and second moments of images, accumulated in float64 in one streaming pass.

These are the statistics every order-1 / order-2 probe of Belrose et al. (ICML 2024, "Neural
networks learn statistics of increasing complexity") is built from: the class mean mu_y (order 1)
and the class covariance Sigma_y (order 2) of flattened images.

Streaming: ``update(x, y)`` merges a batch into the running moments with the pairwise formula of
Chan, Golub & LeVeque (1979): for two groups a, b with n, mean m and centred scatter M2,

    n = n_a + n_b,  delta = m_b - m_a,  m = m_a + delta * n_b / n,
    M2 = M2_a + M2_b + delta delta^T * n_a n_b / n,

so the result equals the two-pass estimate up to float64 round-off regardless of batching. The
per-batch work is one (n_c, d) x (n_c, d) matmul per class present in the batch; nothing loops
over pixels.

Measured on this 2-core CPU (torch 2.13, 1 thread, float64; see ``benchmarks/bench_stats_ot.py``
if present, else the report of the issue "Spine"): fitting Fashion-MNIST train (60,000 x 784) takes
about 2.5 s, CIFAR-10 train (50,000 x 3072) about 40 s.
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any, Callable, Concatenate, Generic, Literal, ParamSpec, TypeVar

import torch
from torch import Tensor

Shrinkage = float | Literal["optimal"] | None


def _as_flat(x: Tensor) -> Tensor:
    """(N, ...) -> (N, d) float64."""
    if x.ndim < 2:
        raise ValueError(f"x must be (N, d) or (N, C, H, W), got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _check_labels(y: Tensor, n: int) -> Tensor:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must be a 1-D label tensor of length {n}, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}; cast with y.long()")
    if n and int(y.min()) < 0:
        raise ValueError("y has negative labels; class labels must be 0..K-1")
    return y.long()


def linear_shrinkage(cov: Tensor, n: Tensor | int, weight: float | Literal["optimal"]) -> Tensor:
    """Shrink covariances toward the scaled identity T = tr(S)/d * I, batched over leading dims.

    Returns (1 - s) S + s T. With ``weight="optimal"`` the weight is the distribution-free
    Frobenius-optimal linear shrinkage of Bodnar, Gupta & Parolya (2014, arXiv:1308.2608), the
    estimator Belrose et al. use for their order-2 probes (via concept-erasure):
    s = tr(S)^2 / (n ||S - T||_F^2), clipped to [0, 1].

    cov: (..., d, d); n: sample size per matrix, broadcastable to cov.shape[:-2].
    """
    d = cov.shape[-1]
    tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)  # (...)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    target = tr[..., None, None] / d * eye  # (..., d, d)
    if weight == "optimal":
        n_t = torch.as_tensor(n, dtype=cov.dtype, device=cov.device)
        dist = (cov - target).pow(2).sum((-2, -1))  # ||S - T||_F^2
        s = (tr.pow(2) / (n_t * dist).clamp_min(torch.finfo(cov.dtype).tiny)).clamp(0.0, 1.0)
    else:
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"shrinkage weight must lie in [0, 1], got {weight}")
        s = torch.full_like(tr, float(weight))
    s = s[..., None, None]
    return (1 - s) * cov + s * target


C = TypeVar("C")
P = ParamSpec("P")
R = TypeVar("R")


class fitmethod(Generic[C, P, R]):
    """The package's one ``fit`` convention (concept-erasure's): ``Class.fit(x, y, **settings)`` is a
    classmethod returning a NEW fitted instance; ``fit`` never mutates anything. (Streaming
    accumulation is ``update``, which does mutate, as concept-erasure's ``LeaceFitter.update``.)

    Called on an instance, ``ClassStats.fit(x, y, num_classes=10)``, the instance's settings
    (``_fit_settings()``) are passed as defaults and a new instance is returned, the instance
    itself is left as it was, so the old spelling means the same thing.
    """

    def __init__(self, func: Callable[Concatenate[type[C], P], R]) -> None:
        self.func = func
        functools.update_wrapper(self, func)  # type: ignore[arg-type]  # typeshed: wrapper must be a callable

    def __get__(self, obj: C | None, cls: type[C]) -> Callable[P, R]:
        if obj is None:
            return types.MethodType(self.func, cls)
        settings: dict[str, Any] = obj._fit_settings()  # type: ignore[attr-defined]  # every fitmethod class has it

        @functools.wraps(self.func)
        def bound(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.func(cls, *args, **{**settings, **kwargs})

        return bound


class ClassStats:
    """Streaming per-class count, mean (K, d) and covariance (K, d, d) of flattened images.

    ``ClassStats.fit(x, y, num_classes=K)`` (a new fitted instance) or repeated ``update(x, y)``
    on batches of one instance; x is (N, d) or
    (N, C, H, W) (the image shape is kept in ``image_shape`` so samplers can un-flatten).
    Labels beyond the current ``num_classes`` grow the tables. Accumulation is float64 on
    ``device`` whatever the input dtype/device.

    ``cov`` is the unbiased sample covariance (divides by n_c - 1). For d > n_c it is singular;
    ``covariance(shrinkage=...)`` returns a shrunk, positive-definite estimate (see
    ``linear_shrinkage``). Everything downstream (Gaussian OT, Gaussian samplers) takes PSD
    input and handles singular matrices by pseudo-inverse, so shrinkage is an option, not a must.
    """

    def __init__(self, num_classes: int = 0, *, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._k = int(num_classes)
        self.image_shape: tuple[int, ...] | None = None
        self.counts = torch.zeros(self._k, dtype=torch.int64, device=self.device)  # (K,)
        self.mean = torch.zeros(0, dtype=torch.float64, device=self.device)  # (K, d) once fitted
        self._m2 = torch.zeros(0, dtype=torch.float64, device=self.device)  # (K, d, d)

    # --- accumulation -------------------------------------------------------------------------
    @fitmethod
    def fit(cls: type[ClassStats], x: Tensor, y: Tensor, *, num_classes: int = 0,
            device: torch.device | str | None = None, batch_size: int = 8192) -> ClassStats:
        """New statistics of all of (x, y), accumulated in batches of ``batch_size`` rows."""
        stats = cls(num_classes, device=device)
        for start in range(0, max(int(x.shape[0]), 1), batch_size):
            stats.update(x[start : start + batch_size], y[start : start + batch_size])
        return stats

    def _fit_settings(self) -> dict[str, Any]:
        return {"num_classes": self._k, "device": self.device}

    def _grow(self, k: int, d: int) -> None:
        if self.mean.numel() == 0:
            self.mean = torch.zeros(k, d, dtype=torch.float64, device=self.device)
            self._m2 = torch.zeros(k, d, d, dtype=torch.float64, device=self.device)
            self.counts = torch.cat([self.counts, self.counts.new_zeros(k - len(self.counts))])
        elif k > self.num_classes:
            extra = k - self.num_classes
            self.counts = torch.cat([self.counts, self.counts.new_zeros(extra)])
            self.mean = torch.cat([self.mean, self.mean.new_zeros(extra, d)])
            self._m2 = torch.cat([self._m2, self._m2.new_zeros(extra, d, d)])
        self._k = max(self._k, k)

    def update(self, x: Tensor, y: Tensor) -> ClassStats:
        """Merge one batch x (N, d) or (N, C, H, W), y (N,) into the running moments."""
        shape = tuple(x.shape[1:])
        xf = _as_flat(x).to(self.device)  # (N, d)
        yl = _check_labels(y, xf.shape[0]).to(self.device)
        if self.image_shape is None:
            self.image_shape = shape
        elif math.prod(shape) != math.prod(self.image_shape):
            raise ValueError(
                f"batch has {math.prod(shape)} features, earlier batches had {math.prod(self.image_shape)}"
            )
        if xf.shape[0] == 0:
            return self
        k = max(self._k, int(yl.max()) + 1)
        self._grow(k, xf.shape[1])
        order = torch.argsort(yl, stable=True)
        sizes = torch.bincount(yl, minlength=k)  # (K,)
        for c, xc in zip(sizes.nonzero().flatten().tolist(), torch.split(xf[order], sizes[sizes > 0].tolist())):
            nb = xc.shape[0]
            mb = xc.mean(0)  # (d,)
            cb = xc - mb
            m2b = cb.T @ cb  # (d, d)
            na = int(self.counts[c])
            n = na + nb
            delta = mb - self.mean[c]
            self.mean[c] += delta * (nb / n)
            self._m2[c] += m2b + torch.outer(delta, delta) * (na * nb / n)
            self.counts[c] = n
        return self

    # --- read-out ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self._k

    @property
    def dim(self) -> int:
        if self.mean.numel() == 0:
            raise RuntimeError("ClassStats is empty; use ClassStats.fit(x, y) or call update(x, y) first")
        return int(self.mean.shape[1])

    def _require(self, min_count: int) -> None:
        _ = self.dim  # raises if empty
        low = (self.counts < min_count).nonzero().flatten().tolist()
        if low:
            raise ValueError(
                f"classes {low} have fewer than {min_count} samples; fit on more data or drop them"
            )

    @property
    def cov(self) -> Tensor:
        """Unbiased per-class covariance (K, d, d), float64."""
        self._require(2)
        return self._m2 / (self.counts.to(torch.float64) - 1)[:, None, None]

    @property
    def var(self) -> Tensor:
        """Per-class per-coordinate variance (K, d), float64."""
        return torch.diagonal(self.cov, dim1=-2, dim2=-1)

    def covariance(self, shrinkage: Shrinkage = None) -> Tensor:
        """Covariance (K, d, d); ``shrinkage`` None, a weight in [0, 1], or "optimal"."""
        if shrinkage is None:
            return self.cov
        return linear_shrinkage(self.cov, self.counts, shrinkage)

    def to(self, device: torch.device | str) -> ClassStats:
        """A copy of these statistics on ``device``."""
        out = ClassStats(self._k, device=device)
        out.image_shape = self.image_shape
        out.counts = self.counts.to(device)
        out.mean = self.mean.to(device)
        out._m2 = self._m2.to(device)
        return out

    def __repr__(self) -> str:
        d = self.dim if self.mean.numel() else 0
        return f"ClassStats(num_classes={self._k}, dim={d}, n={int(self.counts.sum())}, device={self.device})"


def ks_per_coordinate(a: Tensor, b: Tensor) -> Tensor:
    """Two-sample Kolmogorov-Smirnov statistic sup_z |F_a(z) - F_b(z)| per column.

    a: (n1, d), b: (n2, d) -> (d,). The sup is attained at a data point, so both empirical CDFs
    (right-continuous) are evaluated at the pooled sorted samples; no loop over coordinates.
    """
    a_s = a.T.contiguous().sort(dim=1).values.double()  # (d, n1)
    b_s = b.T.contiguous().sort(dim=1).values.double()  # (d, n2)
    z = torch.cat([a_s, b_s], dim=1)  # (d, n1 + n2)
    fa = torch.searchsorted(a_s, z, side="right").double() / a_s.shape[1]
    fb = torch.searchsorted(b_s, z, side="right").double() / b_s.shape[1]
    return (fa - fb).abs().amax(dim=1)
