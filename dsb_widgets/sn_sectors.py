"""Regression targets in chosen S_n isotypic sectors (Lavie, Gur-Ari & Ringel, ICML 2024).

Lavie et al. ("Towards understanding inductive bias in transformers: a view from infinity")
argue that in the infinite-width (Gaussian-process) limit a transformer's kernel commutes with
the symmetric group S_n acting on the n context positions, so its eigenfunctions split into
S_n isotypic sectors, and that functions in the *trivial* (fully symmetric) sector are learned
with fewer samples than the others. Only the abstract-level claims are verified for this
project (see ``../shared/NOTES.md``); the targets below are our design built from them.

Setting. A context is ``X = (x_1, ..., x_n)``, ``x_i ~ N(0, I_d)`` i.i.d. (continuous tokens: the
S_n action on ``L^2`` is exactly orthogonal, per-token features have closed-form moments, and
rotating token space is a symmetry of both the data and an isotropically initialised network, so
sectors built on orthogonal feature directions differ *only* in how they use positions).
A per-token feature ``f_k(x) = phi(w_k . x)`` uses a unit direction ``w_k`` (orthonormal across
targets) and ``phi(u) = u`` (``"linear"``) or ``(u^2 - 1) / sqrt(2)`` (``"hermite2"``), so the
``f_k(x_i)`` are i.i.d. with mean 0 and variance 1. Targets (``K`` = one per sector):

================ ===== ======================================= ===================================
sector           rank  target                                   S_n irrep (partition)
================ ===== ======================================= ===================================
``trivial``      0     ``sum_i f(x_i) / sqrt(n)``               (n), symmetric
``standard``     1     ``sum_i a_i f(x_i)``, ``sum a = 0``       (n-1, 1), dimension n - 1
``trivial_pair`` 0     ``sum_{i!=j} B_ij f f``, ``B ~ 11^T - I`` (n), symmetric two-body
``pair``         2     ``sum_{i!=j} B_ij f(x_i) f(x_j)``,         (n-2, 2), dimension n(n-3)/2
                       B symmetric, zero diagonal, zero row sums
================ ===== ======================================= ===================================

``rank`` is the number of boxes below the first row of the partition (0, 1, 2): the sector's
"distance from symmetric". Variances are exactly 1: ``Var(sum a_i f_i) = |a|^2 = 1`` and, with
B symmetric and zero on the diagonal, ``Var(sum_{i!=j} B_ij f_i f_j) = 2 ||B||_F^2 = 1``.
Why the zero row sums put ``pair`` in (n-2, 2): functions ``sum_{i<j} c_ij f_i f_j`` form the
permutation module on unordered pairs, ``(n) + (n-1, 1) + (n-2, 2)``; its (n) + (n-1, 1) part
is exactly ``{c_ij = v_i + v_j}``, whose orthogonal complement is the zero-row-sum condition.

Isotypic projectors (used by the tests to prove the sectors): for an irrep with character chi
and dimension d_chi, ``(P F)(X) = d_chi / n! * sum_pi chi(pi) F(pi . X)``, computed over all
of S_n for small n. Characters: trivial 1; standard ``fix(pi) - 1``; (n-2, 2)
``fix2(pi) - fix(pi)`` with ``fix2`` the number of unordered pairs mapped to themselves.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np

Feature = Literal["linear", "hermite2"]
SECTORS = ("trivial", "standard", "trivial_pair", "pair")
SECTOR_RANK = {"trivial": 0, "standard": 1, "trivial_pair": 0, "pair": 2}
BODY = {"trivial": 1, "standard": 1, "trivial_pair": 2, "pair": 2}
IRREP = {"trivial": "trivial", "standard": "standard", "trivial_pair": "trivial", "pair": "pair"}


def min_context(sector: str) -> int:
    """Smallest n for which the sector is non-empty ((n-2, 2) needs n >= 4)."""
    return {"trivial": 1, "standard": 2, "trivial_pair": 2, "pair": 4}[sector]


def irrep_dim(irrep: str, n: int) -> int:
    """Dimension of the irrep: 1, n - 1, n(n - 3) / 2."""
    return {"trivial": 1, "standard": n - 1, "pair": n * (n - 3) // 2}[irrep]


def character(irrep: str, perm: np.ndarray) -> int:
    """chi(pi) for a permutation given as an index array (pi maps i -> perm[i])."""
    n = len(perm)
    fix = int(np.sum(perm == np.arange(n)))
    if irrep == "trivial":
        return 1
    if irrep == "standard":
        return fix - 1
    if irrep == "pair":
        two_cycles = sum(1 for i in range(n) if perm[i] != i and perm[perm[i]] == i) // 2
        return fix * (fix - 1) // 2 + two_cycles - fix
    raise ValueError(f"unknown irrep {irrep!r}; one of trivial, standard, pair")


def pair_coefficients(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random B (n, n): symmetric, zero diagonal, zero row sums, ``||B||_F^2 = 1/2``.

    A random edge vector ``c_ij`` minus its least-squares fit by ``v_i + v_j`` (the (n) + (n-1, 1)
    part of the pair module); the residual satisfies the normal equations = zero row sums.
    """
    if n < 4:
        raise ValueError(f"the (n-2, 2) sector needs n >= 4 positions (got {n})")
    iu = np.triu_indices(n, 1)
    c = rng.standard_normal(len(iu[0]))
    design = np.zeros((len(c), n))
    design[np.arange(len(c)), iu[0]] = 1.0
    design[np.arange(len(c)), iu[1]] = 1.0
    v, *_ = np.linalg.lstsq(design, c, rcond=None)
    c = c - design @ v
    b = np.zeros((n, n))
    b[iu] = c
    b = b + b.T
    return b / (math.sqrt(2.0) * np.linalg.norm(b))


def standard_coefficients(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random unit vector a (n,) with ``sum a = 0``."""
    if n < 2:
        raise ValueError(f"the standard sector needs n >= 2 positions (got {n})")
    a = rng.standard_normal(n)
    a -= a.mean()
    return a / np.linalg.norm(a)


def positional_coefficients(sector: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """a (n,) for one-body sectors, B (n, n) for two-body ones; unit target variance."""
    if n < min_context(sector):
        raise ValueError(f"sector {sector!r} needs n >= {min_context(sector)} positions (got {n})")
    if sector == "trivial":
        return np.full(n, 1.0 / math.sqrt(n))
    if sector == "standard":
        return standard_coefficients(n, rng)
    if sector == "trivial_pair":
        b = np.ones((n, n)) - np.eye(n)
        return b / (math.sqrt(2.0) * np.linalg.norm(b))
    if sector == "pair":
        return pair_coefficients(n, rng)
    raise ValueError(f"unknown sector {sector!r}; choose from {', '.join(SECTORS)}")


def feature_map(feature: Feature) -> Callable[[Any], Any]:
    """phi with E phi(u) = 0, E phi(u)^2 = 1 for u ~ N(0, 1)."""
    if feature == "linear":
        return lambda u: u
    if feature == "hermite2":
        return lambda u: (u * u - 1.0) / math.sqrt(2.0)
    raise ValueError(f"unknown feature {feature!r}; choose linear or hermite2")


def sector_columns(f: Any, coeffs: Sequence[Any], einsum: Callable[..., Any]) -> list[Any]:
    """Each target's column (B,) from token features f (B, K, n): ``a . f_k`` or ``f_k^T B f_k``.

    Array-library neutral (``np.einsum`` or ``torch.einsum``, matching coeffs), so the engine's
    on-device targets are this same formula (:func:`dsb_widgets.engine.symmetry.device_targets`).
    """
    return [f[:, k] @ c if c.ndim == 1 else einsum("bi,ij,bj->b", f[:, k], c, f[:, k])
            for k, c in enumerate(coeffs)]


@dataclass(frozen=True)
class SectorTargets:
    """K regression targets, one per sector, on contexts X (B, n, d).

    directions: (K, d) orthonormal rows w_k; coeffs[k]: a (n,) or B (n, n).
    """

    n: int
    d: int
    sectors: tuple[str, ...]
    directions: np.ndarray
    coeffs: tuple[np.ndarray, ...]
    feature: Feature = "linear"

    @classmethod
    def make(cls, n: int, d: int, sectors: tuple[str, ...] = SECTORS, seed: int = 0,
             feature: Feature = "linear") -> "SectorTargets":
        """Each sector's direction and coefficients depend only on (seed, sector), not on which
        other sectors are asked for: w_k is column ``SECTORS.index(sector)`` of a seeded random
        orthogonal matrix (so d >= that index + 1)."""
        idx = [SECTORS.index(s) if s in SECTORS else -1 for s in sectors]
        if min(idx) < 0:
            raise ValueError(f"unknown sector in {sectors}; choose from {', '.join(SECTORS)}")
        if max(idx) >= d:
            raise ValueError(f"sectors {sectors} need token dimension d >= {max(idx) + 1} (got {d})")
        q, _ = np.linalg.qr(np.random.default_rng([seed, 0]).standard_normal((d, d)))
        coeffs = tuple(positional_coefficients(s, n, np.random.default_rng([seed, 1 + i]))
                       for s, i in zip(sectors, idx))
        return cls(n, d, tuple(sectors), q[:, idx].T.copy(), coeffs, feature)

    def token_features(self, x: np.ndarray) -> np.ndarray:
        """f_k(x_i): (B, n, d) -> (B, K, n)."""
        u = np.einsum("bnd,kd->bkn", x, self.directions)
        return feature_map(self.feature)(u)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Targets (B, K) for contexts x (B, n, d)."""
        f = self.token_features(np.asarray(x, dtype=np.float64))
        return np.stack(sector_columns(f, self.coeffs, np.einsum), axis=1)

    def exact_variance(self) -> np.ndarray:
        """Var of each target from its coefficients alone: |a|^2 or 2 ||B||_F^2 (B zero diagonal)."""
        return np.array([float(c @ c) if c.ndim == 1 else 2.0 * float(np.sum(c * c)) for c in self.coeffs])


def sample_contexts(batch: int, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """i.i.d. N(0, I_d) tokens: (batch, n, d)."""
    return rng.standard_normal((batch, n, d))


def permute_positions(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """(pi . X)_i = X_{pi^-1(i)}: the token at position i moves to position perm[i]."""
    out = np.empty_like(x)
    out[:, perm] = x
    return out


def isotypic_projection(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, irrep: str,
                        perms: list[np.ndarray] | None = None) -> np.ndarray:
    """(P_chi F)(X) = d_chi / |G| sum_pi chi(pi) F(pi . X) over all of S_n (small n).

    fn maps (B, n, d) -> (B, ...); returns the projection evaluated at x, same shape as fn(x).
    """
    n = x.shape[1]
    perms = perms if perms is not None else [np.array(p) for p in itertools.permutations(range(n))]
    acc: np.ndarray | None = None
    for p in perms:
        term = character(irrep, p) * fn(permute_positions(x, p))
        acc = term if acc is None else acc + term
    if acc is None:
        raise ValueError("perms is empty; pass None for all of S_n")
    return np.asarray(irrep_dim(irrep, n) * acc / len(perms))


def sector_fractions(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """Share of each target's sample energy in the trivial, standard and (n-2, 2) components.

    Returns irrep -> (K,) fractions ``||P F||^2 / ||F||^2`` over the batch x (exact for the
    projectors; the three sum to <= 1, the rest lies in higher irreps such as (n-2, 1, 1)).
    """
    f = fn(x)
    norm = np.sum(f * f, axis=0)
    return {ir: np.sum(isotypic_projection(fn, x, ir) ** 2, axis=0) / norm for ir in ("trivial", "standard", "pair")}
