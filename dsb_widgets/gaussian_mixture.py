"""A per-class Gaussian-mixture clone: a rung of Refinetti et al.'s ladder above one Gaussian.

Refinetti, Ingrosso & Goldt (ICML 2023) train on a ladder of clones of CIFAR-10 (one Gaussian per
class -> WGAN samples -> cifar5m) and find the real-trained network leaves each rung later the
more of the data's statistics it keeps. Between one Gaussian per class (``gauss_clone``) and the
data itself lies a mixture of K Gaussians per class: K = 1 is the Gaussian clone; as K grows each
component covers fewer images and the clone keeps more of the class's higher-order structure
(its modes: sandals, sneakers and boots inside one Fashion-MNIST class), up to the data at
K = n_y. So ``-o gmm_k`` is a dial along the ladder.

Fit, per class y with n_y training images (hard-assignment EM, i.e. k-means, k-means++ start):

    z_i = argmin_c ||x_i - m_c||^2,     m_c = mean{x_i : z_i = c}          (Lloyd iterations)
    w_c = n_c / n_y,   mu_c = m_c,   S_c = (1 / n_c) sum_{z_i = c} (x_i - mu_c)(x_i - mu_c)^T

The mixture keeps the class mean and covariance exactly (law of total covariance, ML estimates):

    sum_c w_c mu_c = mu_y,      sum_c w_c [S_c + (mu_c - mu_y)(mu_c - mu_y)^T] = Sigma_y

Sampling from N(mu_c, S_c) never forms S_c (d x d per component: 10 classes x 16 components x
784^2 floats = 400 MB): with X_c the centred members of component c, shape (n_c, d),

    x = mu_c + X_c^T g / sqrt(n_c),   g ~ N(0, I_{n_c})   =>   Cov(x) = X_c^T X_c / n_c = S_c.

A component's samples lie in the affine span of its members (rank n_c - 1): with few images per
component the clone interpolates between neighbouring training images. No ridge is added
(Refinetti's 1e-3 I is there for their Cholesky factor; this construction needs none). Samples are
not clipped here; the ladder clamps every rung to [0, 1] (``engine/ladder.py``).

Measured (Fashion-MNIST, convnet, Refinetti's SGD at lr 0.05, 2048 steps, 3 seeds;
``benchmarks/clone_ladder/README.md``): the real-trained net leaves the Gaussian clone at step
18 and the mixture at k = 4 / 16 / 64 / 256 at steps 36 / 57 / 144 / 456 (CIFAR-10, 1024 steps,
2 seeds: Gaussian 5, k = 16 / 64 / 256 at 40 / 102 / 114). k-means fit (k = 16): 4 CPU-s on
Fashion-MNIST, 30 on CIFAR-10; a batch of 256 CIFAR-10 samples 0.05 CPU-s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KMEANS_ITERS = 25  # Lloyd iterations per class (Fashion-MNIST, K = 16: assignments settle in ~15-25)


def kmeans(x: Tensor, k: int, generator: torch.Generator, iters: int = KMEANS_ITERS) -> Tensor:
    """Hard assignments (n,) of rows x (n, d) to k clusters: k-means++ start, Lloyd iterations.

    An emptied cluster is re-seeded with the point farthest from its centre. With fewer distinct
    points than k a cluster can still end empty (copies tie); the mixture fit drops it."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n; got k={k} for {n} points")
    x64, x = x.to(torch.float64), x.to(torch.float32)  # distances in float32 (argmin only), sums in float64
    sq = (x * x).sum(1)  # (n,)
    centres = x[torch.randint(n, (1,), generator=generator)]  # (1, d)
    d2 = (sq - 2 * x @ centres[0] + sq.new_tensor(float(centres[0] @ centres[0]))).clamp_min(0)  # (n,)
    for _ in range(1, k):  # k-means++: next centre with probability proportional to D^2
        p = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        nxt = x[torch.multinomial(p, 1, generator=generator)]  # (1, d)
        centres = torch.cat([centres, nxt])
        d2 = torch.minimum(d2, ((x - nxt) ** 2).sum(1))
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        dist = sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :]  # (n, k)
        new = dist.argmin(1)
        counts = torch.bincount(new, minlength=k)
        for empty in torch.nonzero(counts == 0).flatten().tolist():  # re-seed from the worst-fit point
            worst = int(dist.gather(1, new[:, None]).flatten().argmax())
            new[worst] = empty
            dist[worst] = -1.0  # never picked twice
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, assign, x64)  # (k, d)
        centres = (sums / torch.bincount(assign, minlength=k).clamp_min(1)[:, None]).float()
    return assign


@dataclass(frozen=True)
class GaussianMixtureSampler:
    """K Gaussians per class, fitted by k-means; samples drawn from the centred members."""

    means: Tensor  # (C, d) float64, C = total components over all classes
    members: Tensor  # (N, d) float32: training images minus their component's mean, grouped by component
    starts: Tensor  # (C + 1,) long: members[starts[c]:starts[c + 1]] belong to component c
    weights: Tensor  # (K_classes, k_max) float64: w_c per class, zero-padded
    first: Tensor  # (K_classes,) long: global index of each class's first component

    @classmethod
    def fit(cls, x: Tensor, y: Tensor, k: int, seed: int = 0) -> GaussianMixtureSampler:
        """x: (N, ...) images, y: (N,) labels 0..K-1; up to k components per class (fewer if the
        class has fewer than k images)."""
        gen = torch.Generator().manual_seed(seed)
        flat = x.reshape(len(x), -1)
        num_classes = int(y.max()) + 1
        means: list[Tensor] = []  # (d,) per component
        members: list[Tensor] = []  # (n_c, d) per component
        sizes: list[int] = []
        first: list[int] = []
        weights = torch.zeros(num_classes, k, dtype=torch.float64)  # (K_classes, k)
        for label in range(num_classes):
            xc = flat[y == label].to(torch.float64)  # (n_y, d)
            if len(xc) == 0:
                raise ValueError(f"class {label} has no training images; a mixture clone needs every class")
            kc = min(k, len(xc))
            assign = kmeans(xc, kc, gen)
            first.append(len(sizes))
            for c in range(kc):
                xm = xc[assign == c]  # (n_c, d)
                if len(xm) == 0:  # only with fewer distinct images than k: drop the component
                    continue
                mu = xm.mean(0)
                weights[label, len(sizes) - first[-1]] = len(xm) / len(xc)
                means.append(mu)
                members.append((xm - mu).float())
                sizes.append(len(xm))
        starts = torch.zeros(len(sizes) + 1, dtype=torch.long)
        starts[1:] = torch.cumsum(torch.tensor(sizes), 0)
        return cls(torch.stack(means), torch.cat(members), starts, weights, torch.tensor(first))

    def components(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Global component index (B,) for each label, drawn with the class's weights w_c."""
        within = torch.multinomial(self.weights[labels], 1, generator=generator).flatten()  # (B,)
        return self.first[labels] + within

    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """(B, d) float32 draws: x = mu_c + X_c^T g / sqrt(n_c), g ~ N(0, I_{n_c})."""
        comp = self.components(labels, generator)
        out = self.means[comp].float()  # (B, d)
        for c in torch.unique(comp).tolist():  # sorted: a fixed order of draws per generator
            rows = torch.nonzero(comp == c).flatten()
            lo, hi = int(self.starts[c]), int(self.starts[c + 1])
            g = torch.randn(len(rows), hi - lo, generator=generator)  # (m, n_c)
            out[rows] += g @ self.members[lo:hi] / (hi - lo) ** 0.5
        return out
