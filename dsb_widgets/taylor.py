"""Taylor expansion of the expected loss by moment order (Belrose et al., ICML 2024, Sec. 2).

Expanding a loss L around the mean mu of the input distribution (expectation over x, label y
fixed) gives, term by term in the central moments of x,

    E_x[L(x)] = L(mu) + <grad L(mu), E[x - mu]> + 1/2 <H(mu), Sigma> + sum_{k>=3} 1/k! <D^k L(mu), E[(x - mu)^{(x)k}]>
              =: T0 + T1 + T2 + T3 + ...

T1 = 0 because E[x - mu] = 0, and T2 = 1/2 tr(H Sigma). A network whose loss is already low on
N(mu, Sigma) but not on the data "uses" only the first two moments; T3, T4 say how much of the
loss the higher moments carry. Under N(mu, Sigma) (the order-2 maximum-entropy distribution)
T3 = 0 and T4 = 1/8 sum_{ijkl} D^4L_{ijkl} Sigma_ij Sigma_kl; real data are not Gaussian, so T3
and T4 can also be estimated from ``samples`` of x, or T3 from a given ``third_moment`` tensor.

No derivative tensor is formed. Every term is an average of directional derivatives
D^k L(mu)[v, ..., v] = d^k/dt^k L(mu + t v)|_{t=0}, computed for a batch of directions at once by
nesting ``torch.func.jvp`` k times through ``loss_fn`` (forward-over-forward: a Hessian quadratic
form v^T H v costs about one Hessian-vector product, without the reverse pass). Order-2
estimators (``method``):

- ``"exact"``: Sigma = U diag(lam) U^T, T2 = 1/2 sum_k lam_k u_k^T H u_k (d quadratic forms);
- ``"hutchinson"``: T2 = 1/2 E_z[v^T H v], v = Sigma^{1/2} z, z Rademacher (or Gaussian); the
  estimate comes with its standard error (std / sqrt(n));
- ``"topk"``: the top-k eigendirections of Sigma exactly plus Hutchinson on the remainder
  Sigma - U_k diag(lam_k) U_k^T (deflation, as in Hutch++): image covariances have fast-decaying
  spectra, so the remainder, hence the error, is small;
- ``"auto"``: exact for d <= ``exact_max_dim`` (1024), else topk.

``loss_fn`` maps a batch (B, d) to per-example losses (B,) and must treat rows independently
(put BatchNorm/Dropout models in eval mode; ``class_taylor_terms`` does). Pass a precomputed
:class:`CovFactor` instead of a covariance to reuse one eigendecomposition across checkpoints.

Measured cost (this 2-core CPU, 1 thread, float32, one class, ``order=2``; seconds per call,
eigendecomposition precomputed, which itself took 0.003 / 0.14 / 3.6 s at d = 64 / 784 / 3072):

====================================  ======  ========  ==========  ====================
model, d                              exact   topk      hutchinson  (topk: k, n_samples)
====================================  ======  ========  ==========  ====================
MLP 64-128-10 (digits), d = 64        0.004   0.007     0.005       (auto k, 128)
MLP 784-256-10 (F-MNIST), d = 784     0.22    0.13      0.05        (auto k, 128)
CNN 3x32x32, 2 conv + fc, d = 3072    6.9     1.4       0.7         (auto k, 128)
====================================  ======  ========  ==========  ====================

(Numbers from ``pytest -m bench tests/test_taylor.py -s``; replace them when you re-measure.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import jvp

LossFn = Callable[[Tensor], Tensor]  # (B, d) -> (B,)
Method = Literal["auto", "exact", "hutchinson", "topk"]
MAX_ORDER = 4
THIRD_MOMENT_MAX_DIM = 128


@dataclass(frozen=True)
class CovFactor:
    """Eigendecomposition Sigma = U diag(eigvals) U^T, eigenvalues descending and clamped >= 0."""

    eigvals: Tensor  # (d,)
    eigvecs: Tensor  # (d, d), columns are eigenvectors

    @staticmethod
    def from_cov(cov: Tensor, *, psd_tol: float | None = None) -> CovFactor:
        """Factor a symmetric PSD covariance; eigenvalues above -psd_tol * lam_max are clamped to 0.

        psd_tol defaults to 10 d eps(dtype), the size of eigh's rounding error.
        """
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"cov must be a square (d, d) matrix, got shape {tuple(cov.shape)}")
        if not torch.isfinite(cov).all():
            raise ValueError("cov has NaN/inf entries; clean the data or regularise the estimate")
        scale = cov.abs().max().clamp_min(torch.finfo(cov.dtype).tiny)
        if (cov - cov.T).abs().max() > 1e-5 * scale:
            raise ValueError("cov is not symmetric; pass (cov + cov.T) / 2")
        lam, u = torch.linalg.eigh((cov + cov.T) / 2)
        lam, u = lam.flip(0), u.flip(1)
        tol = 10 * lam.numel() * torch.finfo(cov.dtype).eps if psd_tol is None else psd_tol
        if lam.numel() and lam[-1] < -tol * lam[0].clamp_min(0):
            raise ValueError(
                f"cov is not positive semi-definite (min eigenvalue {lam[-1].item():.3g}); "
                "regularise it, e.g. cov + eps * I"
            )
        return CovFactor(lam.clamp_min(0), u)

    @property
    def dim(self) -> int:
        return self.eigvals.shape[0]

    def sqrt_apply(self, z: Tensor, start: int = 0) -> Tensor:
        """Rows of z (n, d) mapped by the symmetric square root of the eigen-part from index start."""
        u, lam = self.eigvecs[:, start:], self.eigvals[start:]
        return ((z @ u) * lam.sqrt()) @ u.T  # (n, d)


@dataclass(frozen=True)
class TaylorTerms:
    """Terms T_k of the expansion (keys 0..order, T1 = 0), their standard errors and the cost.

    n_hvp: Hessian quadratic forms evaluated (order 2); n_higher: order-3/4 directional derivatives.
    """

    terms: dict[int, Tensor]
    stderr: dict[int, Tensor]
    method: str
    n_hvp: int
    n_higher: int = 0

    @property
    def prediction(self) -> Tensor:
        """Predicted E[L]: the sum of all terms."""
        return torch.stack(list(self.terms.values())).sum()

    @property
    def prediction_stderr(self) -> Tensor:
        """Standard error of the prediction (terms estimated independently)."""
        return torch.stack([s**2 for s in self.stderr.values()]).sum().sqrt()


def directional_derivatives(
    loss_fn: LossFn, mean: Tensor, directions: Tensor, k: int, *, chunk_size: int = 1024
) -> Tensor:
    """D^k L(mean)[v, ..., v] for every row v of directions (n, d) -> (n,), by k nested jvps."""
    outs = []
    for v in directions.split(chunk_size):
        f: LossFn = loss_fn
        for _ in range(k):
            f = _along(f, v)
        x = mean.expand_as(v).contiguous()  # (b, d)
        with torch.no_grad():
            out = f(x)
        if out.shape != (v.shape[0],):
            raise ValueError(
                f"loss_fn must map inputs (B, d) to per-example losses (B,), got {tuple(out.shape)} "
                f"for B = {v.shape[0]}; use reduction='none'"
            )
        outs.append(out)
    return torch.cat(outs) if outs else directions.new_zeros(0)


def _along(f: LossFn, v: Tensor) -> LossFn:
    return lambda x: jvp(f, (x,), (v,))[1]


def _mean_se(values: Tensor, weight: float) -> tuple[Tensor, Tensor]:
    """weight * mean and its standard error std / sqrt(n) (0 for n = 1)."""
    n = values.shape[0]
    se = values.std() / math.sqrt(n) if n > 1 else values.new_zeros(())
    return weight * values.mean(), abs(weight) * se


def _probes(n: int, d: int, like: Tensor, seed: int, distribution: str) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    if distribution == "rademacher":
        z = torch.randint(0, 2, (n, d), generator=gen, dtype=torch.int8) * 2 - 1
    elif distribution == "gaussian":
        z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    return z.to(device=like.device, dtype=like.dtype)


def _auto_top_k(factor: CovFactor, energy: float, cap: int) -> int:
    """Smallest k whose top-k eigenvalues hold `energy` of tr(Sigma), at most cap."""
    lam = factor.eigvals
    total = lam.sum()
    if total <= 0:
        return 0
    k = int((lam.cumsum(0) < energy * total).sum().item()) + 1
    return min(k, cap, factor.dim)


def _order2(
    loss_fn: LossFn,
    mean: Tensor,
    factor: CovFactor,
    method: str,
    *,
    n_samples: int,
    top_k: int | None,
    top_energy: float,
    seed: int,
    distribution: str,
    chunk_size: int,
) -> tuple[Tensor, Tensor, int]:
    """T2 = 1/2 tr(H Sigma), its standard error and the number of quadratic forms used."""
    d = factor.dim
    k = d if method == "exact" else 0
    if method == "topk":
        k = _auto_top_k(factor, top_energy, 256) if top_k is None else min(top_k, d)
    lam, u = factor.eigvals[:k], factor.eigvecs[:, :k]
    nonzero = lam > 0
    exact_dirs = (u * lam.sqrt()).T[nonzero]  # (k', d): sqrt(lam_i) u_i
    q = directional_derivatives(loss_fn, mean, exact_dirs, 2, chunk_size=chunk_size)
    t2 = 0.5 * q.sum() if q.numel() else mean.new_zeros(())
    se = mean.new_zeros(())
    n_hvp = q.numel()
    if k < d and factor.eigvals[k:].sum() > 0:
        if n_samples < 2:
            raise ValueError(f"n_samples must be >= 2 for a Hutchinson estimate, got {n_samples}")
        v = factor.sqrt_apply(_probes(n_samples, d, mean, seed, distribution), start=k)
        rest, se = _mean_se(directional_derivatives(loss_fn, mean, v, 2, chunk_size=chunk_size), 0.5)
        t2, n_hvp = t2 + rest, n_hvp + n_samples
    return t2, se, n_hvp


def _check_third_moment(m3: Tensor, d: int) -> None:
    if d > THIRD_MOMENT_MAX_DIM:
        raise ValueError(
            f"third_moment needs the full D^3 L tensor, too big for d = {d} > "
            f"{THIRD_MOMENT_MAX_DIM}; pass samples= (n, d) instead"
        )
    if m3.shape != (d, d, d):
        raise ValueError(f"third_moment must have shape ({d}, {d}, {d}), got {tuple(m3.shape)}")


def _third_moment_term(loss_fn: LossFn, mean: Tensor, m3: Tensor) -> Tensor:
    """1/6 <D^3 L(mean), M3> with the full (d, d, d) derivative tensor (small d only)."""
    f = lambda x: loss_fn(x[None])[0]  # noqa: E731  (d,) -> ()
    with torch.no_grad():
        d3 = torch.func.jacfwd(torch.func.jacfwd(torch.func.jacrev(f)))(mean)  # (d, d, d)
    return (d3 * m3).sum() / 6


def taylor_expansion(
    loss_fn: LossFn,
    mean: Tensor,
    cov: Tensor | CovFactor | None = None,
    order: int = 2,
    *,
    method: Method = "auto",
    n_samples: int = 128,
    top_k: int | None = None,
    top_energy: float = 0.99,
    samples: Tensor | None = None,
    third_moment: Tensor | None = None,
    seed: int = 0,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    chunk_size: int = 1024,
    exact_max_dim: int = 1024,
) -> TaylorTerms:
    """Terms T_0..T_order of E[L(x)] expanded around mean (Belrose et al. 2024, Sec. 2).

    mean (d,); cov (d, d) or a CovFactor (None: the covariance of ``samples`` about ``mean``).
    Order 3: from ``third_moment`` (d, d, d) if given, else from ``samples`` (n, d) drawn from the
    data distribution (centred at ``mean``, so mean should be the true mean), else 0 (Gaussian).
    Order 4: from ``samples`` if given, else Monte Carlo under N(mean, cov) with n_samples draws.
    topk keeps ``top_k`` eigendirections (None: the fewest holding ``top_energy`` of tr Sigma,
    at most 256). Seeds are fixed, so repeated calls reuse the same probes (common random numbers).
    """
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be in 0..{MAX_ORDER}, got {order}")
    if mean.ndim != 1:
        raise ValueError(f"mean must be a vector (d,), got shape {tuple(mean.shape)}; flatten it")
    d = mean.shape[0]
    if samples is not None and (samples.ndim != 2 or samples.shape[1] != d):
        raise ValueError(f"samples must have shape (n, {d}), got {tuple(samples.shape)}; flatten them")
    centred = None if samples is None else (samples.to(mean) - mean)  # (n, d)
    if cov is None and centred is not None and order >= 2:
        cov = centred.T @ centred / centred.shape[0]
    factor = cov if isinstance(cov, CovFactor) or cov is None else CovFactor.from_cov(cov.to(mean))
    if factor is None and order >= 2:
        raise ValueError("order >= 2 needs cov (d, d), a CovFactor or samples (n, d)")
    if factor is not None and factor.dim != d:
        raise ValueError(f"cov is for dimension {factor.dim} but mean has d = {d}")
    if method not in ("auto", "exact", "hutchinson", "topk"):
        raise ValueError(f"method must be 'auto', 'exact', 'hutchinson' or 'topk', got {method!r}")
    resolved = ("exact" if d <= exact_max_dim else "topk") if method == "auto" else method
    if third_moment is not None and order >= 3:
        _check_third_moment(third_moment, d)

    zero = mean.new_zeros(())
    t0 = directional_derivatives(loss_fn, mean, mean[None], 0)[0]
    terms, errs = {0: t0}, {0: zero}
    if order >= 1:
        terms[1], errs[1] = zero, zero  # E[x - mu] = 0
    n_hvp = n_higher = 0
    if order >= 2:
        assert factor is not None
        terms[2], errs[2], n_hvp = _order2(
            loss_fn, mean, factor, resolved, n_samples=n_samples, top_k=top_k,
            top_energy=top_energy, seed=seed, distribution=distribution, chunk_size=chunk_size,
        )  # fmt: skip
    if order >= 3:
        if third_moment is not None:
            terms[3], errs[3] = _third_moment_term(loss_fn, mean, third_moment.to(mean)), zero
        elif centred is not None:
            d3 = directional_derivatives(loss_fn, mean, centred, 3, chunk_size=chunk_size)
            terms[3], errs[3] = _mean_se(d3, 1 / 6)
            n_higher += d3.numel()
        else:
            terms[3], errs[3] = zero, zero  # odd central moments of a Gaussian vanish
    if order >= 4:
        if centred is None:
            assert factor is not None
            centred = factor.sqrt_apply(_probes(n_samples, d, mean, seed + 1, "gaussian"))
        d4 = directional_derivatives(loss_fn, mean, centred, 4, chunk_size=chunk_size)
        terms[4], errs[4] = _mean_se(d4, 1 / 24)
        n_higher += d4.numel()
    return TaylorTerms(terms, errs, resolved, n_hvp, n_higher)


def taylor_terms(
    loss_fn: LossFn,
    mean: Tensor,
    cov: Tensor | CovFactor | None = None,
    order: int = 2,
    **estimator_options: object,
) -> dict[int, Tensor]:
    """{k: T_k} for k = 0..order (scalar tensors; T1 = 0); their sum is the predicted E[L].

    Options as in :func:`taylor_expansion`, which also returns standard errors and the cost.
    """
    return taylor_expansion(loss_fn, mean, cov, order, **estimator_options).terms  # type: ignore[arg-type]


def factor_covs(class_covs: Tensor) -> list[CovFactor]:
    """One CovFactor per class for (K, d, d) covariances; compute once, reuse per checkpoint."""
    if class_covs.ndim != 3:
        raise ValueError(f"class_covs must be (K, d, d), got shape {tuple(class_covs.shape)}")
    return [CovFactor.from_cov(c) for c in class_covs]


def class_taylor_expansion(
    model: torch.nn.Module,
    class_means: Tensor,
    class_covs: Tensor | Sequence[CovFactor],
    labels: Sequence[int] | Tensor | None = None,
    loss: Literal["cross_entropy"] | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    input_shape: Sequence[int] | None = None,
    order: int = 2,
    *,
    class_samples: Sequence[Tensor | None] | None = None,
    **opts: object,
) -> list[TaylorTerms]:
    """TaylorTerms per class k of L_k(x) = loss(model(x.view(-1, *input_shape)), labels[k]).

    class_means (K, d); class_covs (K, d, d) or K CovFactors; class_samples: K tensors (n_k, d)
    for data-based order-3/4 terms. The model runs in eval mode (restored afterwards).
    """
    n_classes, d = class_means.shape
    factors = factor_covs(class_covs) if isinstance(class_covs, Tensor) else list(class_covs)
    ys = torch.arange(n_classes) if labels is None else torch.as_tensor(labels)
    if len(factors) != n_classes or ys.shape != (n_classes,):
        raise ValueError(f"need one cov and one label per class mean (K = {n_classes})")
    if class_samples is not None and len(class_samples) != n_classes:
        raise ValueError(f"class_samples must hold K = {n_classes} tensors (or None entries)")
    shape = tuple(input_shape) if input_shape is not None else (d,)
    if math.prod(shape) != d:
        raise ValueError(f"input_shape {shape} does not hold d = {d} features")
    loss_of = _ce if loss == "cross_entropy" else loss
    if not callable(loss_of):
        raise ValueError(f"loss must be 'cross_entropy' or a callable (logits, y) -> (B,), got {loss!r}")
    was_training = model.training
    model.eval()
    try:
        out = []
        for k in range(n_classes):
            y = ys[k].to(class_means.device)
            def fn(x: Tensor, y: Tensor = y) -> Tensor:
                return loss_of(model(x.view(-1, *shape)), y.expand(x.shape[0]))

            smp = None if class_samples is None else class_samples[k]
            out.append(taylor_expansion(fn, class_means[k], factors[k], order, samples=smp, **opts))  # type: ignore[arg-type]
        return out
    finally:
        model.train(was_training)


def class_taylor_terms(
    model: torch.nn.Module,
    class_means: Tensor,
    class_covs: Tensor | Sequence[CovFactor],
    labels: Sequence[int] | Tensor | None = None,
    loss: Literal["cross_entropy"] | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    input_shape: Sequence[int] | None = None,
    order: int = 2,
    **opts: object,
) -> Tensor:
    """(K, order + 1) tensor: row k holds T_0..T_order for class k (see class_taylor_expansion)."""
    res = class_taylor_expansion(
        model, class_means, class_covs, labels, loss, input_shape, order, **opts  # type: ignore[arg-type]
    )
    return torch.stack([torch.stack([r.terms[j] for j in range(order + 1)]) for r in res])


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")
