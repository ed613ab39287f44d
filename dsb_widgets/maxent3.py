"""Order-3 probe sampler: class mean, covariance *and* third moments (coskewness).

Belrose et al. (ICML 2024) evaluate networks on data matching class statistics up to order 2;
a later script of theirs (EleutherAI/features-across-time) optimises a fixed set of samples
against *slices* of the coskewness tensor. Here we match the **full** third-moment tensor in the
top-k principal subspace of each class, with an explicit generator, so that probe sets of any
size are i.i.d. draws from one fixed distribution whose moments up to order 3 are the class's.

Construction, per class y with mean mu, covariance Sigma = U diag(lam) U^T (eigenvalues sorted
descending), top-k block U_k, lam_k:

* whitened top-k coordinates of real images  w = lam_k^{-1/2} U_k^T (x - mu)  have mean 0,
  covariance I_k and the third-moment tensor M_imn = E[w_i w_m w_n] (estimated on the class);
* a *quadratic Gaussian* generator  z_i = sum_j B_ij g_j + sum_jl C_ijl (g_j g_l - delta_jl),
  g ~ N(0, I_k), C symmetric in (j, l), has mean 0 and, by Isserlis' theorem,

      Cov(z)      = B B^T + 2 sum_jl C_ijl C_mjl,
      E[z_i z_m z_n] = 2 [(B C_n B^T)_im + (B C_m B^T)_in + (B C_i B^T)_mn] + 8 tr(C_i C_m C_n),

  (``quadratic_moments``); B, C are fitted to (I_k, M) by L-BFGS from the first-order solution
  B = I, C_n = M_n / 6 (``fit_quadratic``);
* a sample is  x = mu + U_k lam_k^{1/2} z + U_r lam_r^{1/2} g',  g' ~ N(0, I) independent: the
  complement of the top-k subspace is Gaussian with the class's remaining covariance.

So the mean and the full covariance are matched exactly (up to the fit residual of Cov(z) = I,
reported in ``fit_error``), the third moments in the top-k subspace are matched up to the fit
residual, and third moments involving the complement are zero (Gaussian: the max-entropy choice
given the covariance there). Fourth-order statistics are whatever the quadratic generator
implies and are *not* matched (tests/test_maxent3.py checks both facts). Why a top-k subspace
and not random projections: the leading principal directions carry most of the pixel variance
and are the features a network picks up first; the number of third moments there, k(k+1)(k+2)/6
(816 for k = 16), stays small enough to fit exactly. Samples are not clipped to [0, 1]
(moment-preserving, as ``maxent2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .stats import ClassStats

Seed = torch.Generator | int


def third_moments(w: Tensor) -> Tensor:
    """E[w_i w_m w_n] of rows w (N, k) -> (k, k, k), float64."""
    w = w.to(torch.float64)
    return torch.einsum("ni,nm,nl->iml", w, w, w) / w.shape[0]


def quadratic_moments(b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Covariance (k, k) and third moments (k, k, k) of z = B g + C:(g g^T - I), g ~ N(0, I).

    b: (k, k); c: (k, k, k) with c[i] symmetric (the quadratic form of output i).
    """
    cov = b @ b.T + 2 * torch.einsum("ijl,mjl->im", c, c)
    bcb = torch.einsum("ij,njp,mp->imn", b, c, b)  # (B C_n B^T)_im
    lin = 2 * (bcb + bcb.permute(0, 2, 1) + bcb.permute(2, 1, 0))
    quad = 8 * torch.einsum("iab,mbc,nca->imn", c, c, c)
    return cov, lin + quad


def fit_quadratic(target: Tensor, iters: int = 200) -> tuple[Tensor, Tensor, float]:
    """B, C with Cov(z) = I and E[z z z] = ``target`` (k, k, k); returns (B, C, rel. error).

    The relative error is ||(Cov - I, T - target)|| / ||(I, target)|| (Frobenius) after L-BFGS.
    """
    k = target.shape[0]
    t = ((target + target.permute(0, 2, 1) + target.permute(1, 0, 2) + target.permute(1, 2, 0)
          + target.permute(2, 0, 1) + target.permute(2, 1, 0)) / 6).to(torch.float64)
    eye = torch.eye(k, dtype=torch.float64)
    b = eye.clone().requires_grad_(True)
    c = (t / 6).clone().requires_grad_(True)
    scale = float(k + t.pow(2).sum())

    def loss() -> Tensor:
        cs = (c + c.mT) / 2
        cov, m3 = quadratic_moments(b, cs)
        return ((cov - eye).pow(2).sum() + (m3 - t).pow(2).sum()) / scale

    opt = torch.optim.LBFGS([b, c], lr=1.0, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        err = float(loss().sqrt())
    return b.detach(), ((c + c.mT) / 2).detach(), err


@dataclass(frozen=True)
class ThirdOrderSampler:
    """Order 3: class mean, covariance and top-k third moments (see the module docstring).

    mean (K, d); basis (K, d, d) eigenvectors, columns sorted by eigenvalue descending;
    scale (K, d) square roots of the eigenvalues; b (K, k, k), c (K, k, k, k) the generators;
    fit_error (K,) relative moment residual of each class's generator.
    """

    mean: Tensor
    basis: Tensor
    scale: Tensor
    b: Tensor
    c: Tensor
    fit_error: Tensor
    image_shape: tuple[int, ...]
    order: ClassVar[int] = 3

    @property
    def k(self) -> int:
        return int(self.b.shape[-1])

    @classmethod
    def fit(cls, stats: ClassStats, x: Tensor, y: Tensor, k: int = 16, iters: int = 200) -> ThirdOrderSampler:
        """From class statistics and the images they came from (x (N, ...), y (N,)).

        ``k`` is capped at d. The third moments are estimated from the class's images."""
        cov = stats.cov
        kk, d = stats.mean.shape
        k = min(int(k), d)
        xf = x.reshape(x.shape[0], -1).to(torch.float64)
        means, bases, scales, bs, cs, errs = [], [], [], [], [], []
        for cl in range(kk):
            evals, evecs = torch.linalg.eigh((cov[cl] + cov[cl].T) / 2)
            evals, evecs = evals.flip(-1).clamp_min(0), evecs.flip(-1)
            sq = evals.sqrt()
            top = evecs[:, :k] / sq[:k].clamp_min(1e-12)  # (d, k) whitening projector
            w = (xf[y == cl] - stats.mean[cl]) @ top  # (n_c, k)
            b, c, err = fit_quadratic(third_moments(w), iters)
            means.append(stats.mean[cl])
            bases.append(evecs)
            scales.append(sq)
            bs.append(b)
            cs.append(c)
            errs.append(err)
        shape = tuple(stats.image_shape or (d,))
        return cls(torch.stack(means), torch.stack(bases), torch.stack(scales), torch.stack(bs),
                   torch.stack(cs), torch.tensor(errs, dtype=torch.float64), shape)

    def latent(self, labels: Tensor, generator: Seed = 0) -> Tensor:
        """Standardised coordinates (N, d) along each class's eigenbasis: top-k from the
        quadratic generator, the rest i.i.d. N(0, 1)."""
        gen = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator))
        n, d, k = len(labels), self.mean.shape[1], self.k
        g = torch.randn(n, d, generator=gen, dtype=torch.float64)
        out = g.clone()
        for cl in torch.unique(labels).tolist():
            idx = (labels == cl).nonzero().flatten()
            gk = g[idx, :k]
            quad = torch.einsum("ijl,nj,nl->ni", self.c[cl], gk, gk) - torch.einsum("ijj->i", self.c[cl])
            out[idx, :k] = gk @ self.b[cl].T + quad
        return out

    def sample(self, labels: Tensor, generator: Seed = 0) -> Tensor:
        """(N, *image_shape) float32 samples of the classes ``labels`` (not clipped)."""
        if labels.ndim != 1 or labels.dtype.is_floating_point:
            raise ValueError("labels must be a 1-D integer tensor")
        lab = labels.long()
        if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= self.mean.shape[0]):
            raise ValueError(f"labels must lie in 0..{self.mean.shape[0] - 1}")
        z = self.latent(lab, generator)
        x = torch.empty_like(z)
        for cl in torch.unique(lab).tolist():
            idx = (lab == cl).nonzero().flatten()
            x[idx] = (z[idx] * self.scale[cl]) @ self.basis[cl].T + self.mean[cl]
        return x.float().reshape(len(lab), *self.image_shape)
