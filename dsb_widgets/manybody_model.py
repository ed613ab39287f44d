"""The ladder's Hamiltonian and its exact heat-bath sampler (Rende, Gerace, Laio, Goldt, NeurIPS
2024, Fig. 2; the model and its scales are ours, see :mod:`dsb_widgets.manybody`).

:class:`ManyBody`: H(s) = -sum_i h_i(s_i) - sum_{i<j} J_ij(s_i, s_j) - sum_k sum_w T_k[w](window w),
with k-body tables on contiguous windows; every conditional is exact and cheap,
log p(s_i = a | s_-i) = log_softmax_a(-H(s with s_i = a)) (:meth:`ManyBody.logits`). That gives an
exact heat-bath sampler run as many chains, with split-R-hat and the integrated autocorrelation
time of the energy (:func:`sample`), and the exact conditional loss of any such model.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ManyBody", "random_manybody", "gibbs", "sample", "integrated_autocorr_time"]


class ManyBody(nn.Module):
    """H(s) = -sum_i h_i(s_i) - sum_{i<j} J_ij(s_i,s_j) - sum_k sum_windows T_k[w](s_w..s_{w+k-1}).

    ``tables[k]`` (L-k+1, q^k): the k-body energy table of every contiguous window (k >= 3);
    J (L, L, q, q) is symmetrised and its diagonal ignored. Parameters are trainable (references).
    ``heads=None``: free tables T{k}; ``heads=R``: *factored* windows (module docstring)
    T_k[w] = sum_r C{k}[w, r] S{k}[r] -- R window strengths times R colour tensors (q^k) shared by
    all windows, the k-body analogue of factored attention's J_ij = sum_h A^h_ij V^h.
    """

    offdiag: Tensor  # (L, L, 1, 1) buffer: 1 off the diagonal

    def __init__(self, L: int, q: int, orders: tuple[int, ...] = (), J: Tensor | None = None,
                 h: Tensor | None = None, tables: dict[int, Tensor] | None = None, heads: int | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.L, self.q, self.heads = L, q, heads
        self.h = nn.Parameter(torch.zeros(L, q) if h is None else h.clone())
        self.J = nn.Parameter(torch.zeros(L, L, q, q) if J is None else J.clone())
        tables = tables or {}
        self.orders = tuple(sorted(set(orders) | set(tables)))
        for k in self.orders:
            if k < 3 or k > L:
                raise ValueError(f"window orders must lie in [3, L={L}], got {k}")
            if heads is None or k in tables:
                t = tables.get(k, torch.zeros(L - k + 1, q**k))
                self.register_parameter(f"T{k}", nn.Parameter(t.clone()))
            else:  # factored: small random start (a bilinear form has a saddle at zero)
                g = torch.Generator().manual_seed(seed + k)
                self.register_parameter(f"C{k}", nn.Parameter(0.1 * torch.randn(L - k + 1, heads, generator=g)))
                self.register_parameter(f"S{k}", nn.Parameter(0.1 * torch.randn(heads, q**k, generator=g)))
        self.register_buffer("offdiag", (1.0 - torch.eye(L))[:, :, None, None], persistent=False)

    def couplings(self) -> Tensor:
        """Symmetric pair couplings with zero diagonal (L, L, q, q)."""
        return 0.5 * (self.J + self.J.permute(1, 0, 3, 2)) * self.offdiag

    def table(self, k: int) -> Tensor:
        """The k-body window tables (L-k+1, q^k): free, or window strengths @ shared colour tensors."""
        if hasattr(self, f"T{k}"):
            return getattr(self, f"T{k}")
        return getattr(self, f"C{k}") @ getattr(self, f"S{k}")  # (n, R) @ (R, q^k)

    def logits(self, s: Tensor) -> Tensor:
        """-H(s with s_i := a) + const_i for every site i and colour a: (B, L) -> (B, L, q); the
        log_softmax over a is the exact conditional log p(s_i = a | s_-i)."""
        L, q = self.L, self.q
        x = F.one_hot(s, q).to(self.h.dtype)  # (B, L, q)
        out = self.h + torch.einsum("ijab,njb->nia", self.couplings(), x)
        for k in self.orders:
            table = self.table(k)  # (n, q^k)
            n = L - k + 1
            win = s.unfold(1, k, 1)  # (B, n, k): window w = sites w..w+k-1
            pw = q ** torch.arange(k - 1, -1, -1, device=s.device)  # (k,)
            base = (win * pw).sum(-1)  # (B, n)
            colours = torch.arange(q, device=s.device)
            for m in range(k):  # slot m of every window: vary its colour
                idx = base[..., None] + (colours - win[..., m : m + 1]) * pw[m]  # (B, n, q)
                vals = table[torch.arange(n, device=s.device)[None, :, None], idx]  # (B, n, q)
                out = out.index_add(1, torch.arange(n, device=s.device) + m, vals)
        return out

    def site_logits(self, s: Tensor, i: int, J: Tensor | None = None) -> Tensor:
        """Row i of :meth:`logits` only: (B, L) -> (B, q), O(L q + windows through i)."""
        q = self.q
        J = self.couplings() if J is None else J
        out = self.h[i] + _pair_field(J, s, i, q)
        colours = torch.arange(q, device=s.device)
        tables = {k: self.table(k) for k in self.orders}
        for k, table in tables.items():
            pw = q ** torch.arange(k - 1, -1, -1, device=s.device)
            for w in range(max(0, i - k + 1), min(i, self.L - k) + 1):  # windows holding site i
                m = i - w
                base = (s[:, w : w + k] * pw).sum(-1, keepdim=True)  # (B, 1)
                idx = base + (colours - s[:, i : i + 1]) * pw[m]  # (B, q)
                out = out + table[w][idx]
        return out

    def energy(self, s: Tensor) -> Tensor:
        """H(s): (B, L) -> (B,)."""
        x = F.one_hot(s, self.q).to(self.h.dtype)
        e = -torch.einsum("nia,ia->n", x, self.h) - 0.5 * torch.einsum("nia,ijab,njb->n", x, self.couplings(), x)
        for k in self.orders:
            win = s.unfold(1, k, 1)
            idx = (win * self.q ** torch.arange(k - 1, -1, -1, device=s.device)).sum(-1)  # (B, n)
            table = self.table(k)
            e = e - table[torch.arange(table.shape[0], device=s.device)[None, :], idx].sum(-1)
        return e

    def conditional_loss(self, s: Tensor, chunk: int = 8192) -> float:
        """Mean -log p(s_i | s_-i) over sequences and sites (nats): the exact conditional loss."""
        with torch.no_grad():
            tot = sum(float(F.cross_entropy(self.logits(c).reshape(-1, self.q), c.reshape(-1), reduction="sum"))
                      for c in s.split(chunk))
        return tot / s.numel()


def random_manybody(L: int = 20, q: int = 10, beta2: float = 1.0, g3: float = 0.8, g4: float = 0.8,
                    seed: int = 0) -> ManyBody:
    """The ladder's ground truth (module docstring): dense factored pairs, contiguous 3/4-body terms."""
    from dsb_widgets.potts import random_factored_potts

    g = torch.Generator().manual_seed(seed)
    J = random_factored_potts(L, q, beta2, g).J.float()
    tables: dict[int, Tensor] = {}
    for k, gk in ((3, g3), (4, g4)):
        if gk == 0:
            continue
        phi = torch.ones(q)
        phi[torch.randperm(q, generator=g)[: q // 2]] = -1.0  # a balanced +-1 colour feature
        prod = phi
        for _ in range(k - 1):
            prod = torch.outer(prod, phi).reshape(-1)  # (q^k,): phi(a) phi(b) ... flattened
        w = torch.randn(L - k + 1, 1, generator=g)
        tables[k] = gk * w * prod
    return ManyBody(L, q, J=J, tables=tables).requires_grad_(False)


def _pair_field(J: Tensor, s: Tensor, i: int, q: int) -> Tensor:
    """sum_j J_ij(a, s_j): (B, q)."""
    Ji = J[i]  # (L, q, q): J_ij(a, b)
    return Ji[torch.arange(J.shape[0], device=s.device)[None, :], :, s].sum(1)  # (B, L, q) -> (B, q)


@torch.no_grad()
def gibbs(model: ManyBody, n_chains: int, sweeps: int, gen: torch.Generator,
          init: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Heat-bath sweeps (sites in order, all chains batched). Returns states (sweeps, C, L) after
    every sweep and energies (sweeps, C)."""
    s = torch.randint(model.q, (n_chains, model.L), generator=gen) if init is None else init.clone()
    states, energies = [], []
    J = model.couplings()
    for _ in range(sweeps):
        for i in range(model.L):
            p = torch.softmax(model.site_logits(s, i, J), dim=-1)  # exact conditional at i
            s[:, i] = torch.multinomial(p, 1, generator=gen).squeeze(1)
        states.append(s.clone())
        energies.append(model.energy(s))
    return torch.stack(states), torch.stack(energies)


def integrated_autocorr_time(trace: Tensor, c: float = 5.0) -> float:
    """Integrated autocorrelation time (sweeps) of a (S, C) trace, chain-averaged autocorrelation,
    Sokal's automatic window (smallest M >= c * tau(M)). tau = 1 for independent draws."""
    x = (trace - trace.mean(0)).double()
    S = x.shape[0]
    f = torch.fft.rfft(x, n=2 * S, dim=0)
    acf = torch.fft.irfft(f * f.conj(), dim=0)[:S].mean(1)
    acf = acf / acf[0]
    tau = 1.0
    for M in range(1, S):
        tau = 1.0 + 2.0 * float(acf[1 : M + 1].sum())
        if c * tau <= M:
            break
    return tau


def sample(model: ManyBody, n: int, seed: int = 0, chains: int = 512, burn_in: int = 200,
           thin: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """``n`` equilibrium sequences (n, L): ``chains`` heat-bath chains from uniform random starts,
    ``burn_in`` sweeps dropped, then every ``thin`` sweeps (default: 2 x the integrated
    autocorrelation time of the energy measured on ``burn_in // 2`` extra sweeps, at least 1).
    Diagnostics: split-R-hat of the energy over everything after burn-in (< 1.01 expected), tau
    (sweeps), burn-in, thin, chains, seconds."""
    from dsb_widgets.mh_sampler import split_rhat

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    s, _ = gibbs(model, chains, burn_in, gen) if burn_in else (None, None)
    init = None if s is None else s[-1]
    probe, e_probe = gibbs(model, chains, max(16, burn_in // 2), gen, init=init)
    tau = integrated_autocorr_time(e_probe)
    thin = thin or max(1, math.ceil(2 * tau))
    per_chain = math.ceil(n / chains)
    more, e_more = gibbs(model, chains, per_chain * thin, gen, init=probe[-1])
    kept = more[thin - 1 :: thin][:per_chain]  # (per_chain, C, L)
    diag = {"rhat": split_rhat(torch.cat([e_probe, e_more])), "tau": tau, "burn_in": float(burn_in),
            "thin": float(thin), "chains": float(chains), "seconds": time.perf_counter() - t0}
    return kept.transpose(0, 1).reshape(-1, model.L)[:n], diag
