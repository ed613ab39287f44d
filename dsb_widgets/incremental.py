"""Batched single-site Metropolis-Hastings state for factored-attention MLMs (the fast path).

Goyal, Dyer, Berg-Kirkpatrick (2022) sample ``pi(s) ∝ exp(-E(s))`` with single-site proposals from
an MLM's conditionals (:mod:`dsb_widgets.mh_sampler`). With ``E_pll(s) = -sum_p log p(s_p|s_-p)``
every proposal at site t needs ALL T conditionals of the proposed sequence s' (row p is the model
run on s' with s'_p masked, :meth:`FactoredAttention.logits_from_first_layer`). :class:`SiteChains`
keeps, for all B chains at once, exactly what the next proposal needs and computes only the
candidate's quantities:

    state:   tokens s (B, T), first layer b = h^1(s) (B, T, d), the last hidden vector of every
             masked copy at its own site g_p = h^L(copy p)_p (B, T, d), energy E(s) (B,)
    q(.|s_-t) = softmax(head(g_t))                                  (one (B, d) x (d, q) read-out)
    b'      = b + sum_h A1^h[:, t] (e_new - e_old) V1^h              (rank-H update, O(T H d))
    copy p:   h^1(copy p) = b' + sum_h A1^h[:, p] (e_mask - e_{s'_p}) V1^h
    L = 1:    g'_p = b'_p (the zero diagonal hides s_p from position p)
    L >= 2:   layers 2..L-1 on the T copies (all positions), layer L at the copy's own site only
    E(s')   = -sum_p [head(g'_p)(s'_p) - logsumexp_a head(g'_p)(a)]

Everything is batched over chains (in chunks of ``chunk`` chains so the (chunk, T, T, d) copies stay
in cache), with no Python loop over chains or sites. The target is unchanged: the energies equal a
per-chain recomputation by masking by hand (``tests/test_mh_sampler.py``, depths 1-4, to 1e-5).

Work per proposal and chain (MACs; V = vocab, H heads, m = squared width, d = model width):
    read-out of the T conditionals              T d V                    (every depth)
    layers 2..L-1 on T copies, all positions    (L-2) T (T H m d + H T^2 m)
    layer L at the copy's site                  T (H T m + H m d)
The old path (every proposal: T masked copies through all L layers, all positions) costs
L T (T H d^2 + H T^2 d) + T d V. For the ``dsb clone`` sizes (V = 1000, T = 16, d = 64, H = 4)
that is 6.3M / 11.5M / 16.8M / 22.0M MACs at L = 1..4 against 1.0M / 1.4M / 6.6M / 11.9M here:
for L >= 3 the middle layers on all T copies are irreducible for an exact PLL energy (the change at
t reaches every position of every copy after one layer, and the squared layer makes it full-rank),
so the FLOP ratio is bounded by about L / (L - 2) and the rest of any speed-up is efficiency
(large matrix products instead of many small ones). Measured (``benchmarks/bench_mh.py``, 512
chains vs the old path one chain at a time, chain-tokens per CPU-second, one thread): 14.5-16.3x
(L = 1), 10.7-15.4x (L = 2), 5.1-5.4x (L = 3), 3.7-4.0x (L = 4); the fast path runs at ~30 GFLOP/s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dsb_widgets.factored_attention import FactoredAttention

__all__ = ["SiteChains"]


class _Plan:
    """The model's weights in the layouts the batched path multiplies with (built once per sweep)."""

    def __init__(self, model: FactoredAttention) -> None:
        self.model = model
        cfg = model.cfg
        self.L, self.T, self.residual = cfg.n_layers, cfg.seq_len, cfg.residual
        layers = model.layers
        first = layers[0]
        A1 = first.attention()  # (H, T, T)
        self.ev = first.values(model.embedding)  # (q + 1, H, d): first-layer values of every token
        self.ev_mask = self.ev[cfg.mask_id]  # (H, d)
        self.a1_col = A1.permute(2, 1, 0).contiguous()  # (T_p, T_k, H): A1^h_{k p}; [t] = column t
        squares = getattr(model, "squares", None)
        width = getattr(cfg, "square_width", None)
        self.U: list[Tensor | None] = [None]
        self.U += [squares[k - 1] if (width is not None and squares is not None) else None for k in range(1, self.L)]
        # middle layers: mixed_(h,j) = sum_k A^h_jk z_k (one GEMM), out_j = sum_h mixed_(h,j) V^h
        self.mid: list[tuple[Tensor, Tensor]] = []
        for k in range(1, self.L - 1):
            A, V = layers[k].attention(), layers[k].V  # (H, T, T), (H, m, d)
            H, m, d = V.shape
            self.mid.append((A.reshape(H * self.T, self.T), V))  # rows (h, j) of A^h_{jk}; V (H, m, d)
        if self.L >= 2:
            last = layers[-1]
            H, m, d = last.V.shape
            self.last_row = last.attention().permute(1, 0, 2).contiguous()  # (T_p, H, T_k): A_L^h_{p k}
            self.last_V = last.V.reshape(H * m, d)  # (H m, d)
        ro, f = model.readout, model.fields
        self.Wt = ro.weight.T.contiguous() if ro is not None else None  # (d, q)
        offset = (ro.bias if ro is not None else 0) + (f if f is not None else 0)  # bias + fields: (T, q)
        self.offset = offset if isinstance(offset, Tensor) else None
        self.per_site = f is not None

    def square(self, k: int, h: Tensor, out: Tensor | None = None) -> Tensor:
        """Input of layer k >= 1: h * h, or (h U_k)^2 with ``square_width``; ``out``: a buffer (may be h)."""
        U = self.U[k]
        if U is not None:
            z = h @ U
            return z.mul_(z)
        return torch.mul(h, h, out=out) if out is not None else h * h

    def site_output(self, b1: Tensor, tokens: Tensor) -> Tensor:
        """g_p = h^L(copy p)_p (T, n, d) from the unmasked first layer b1 (T, n, d) and tokens (n, T).
        Site-major layouts, so that the n chains widen every product (few, large GEMMs)."""
        T, n, d = b1.shape
        if self.L == 1:
            return b1
        H = self.ev_mask.shape[0]
        r = (self.ev_mask - self.ev[tokens.T]).transpose(1, 2).reshape(T, H, n * d)  # (T_p, H, n d)
        c = torch.matmul(self.a1_col, r).view(T, T, n, d)  # (T_p, T_k, n, d): the copies' rank-H terms
        if not self.mid:  # L = 2: h^1 of copy p at k, laid out (p, k, n, d); at k = p it is b1_p (A1_pp = 0)
            own = b1
            z = self.square(1, c.add_(b1), out=c)
        else:  # layers 2..L-1 on all positions of every copy, laid out (k, n, p, d)
            h = torch.add(c.permute(1, 2, 0, 3), b1[:, :, None], out=b1.new_empty(T, n, T, d))
            for i, (Amix, Vs) in enumerate(self.mid):
                zk = self.square(i + 1, h)  # (T_k, n, T_p, m)
                mixed = (Amix @ zk.view(T, -1)).view(H, T * n * T, -1)  # (H, T_j n T_p, m): one GEMM
                branch = mixed[0] @ Vs[0]
                for k in range(1, H):
                    branch.addmm_(mixed[k], Vs[k])
                h = h.add_(branch.view(T, n, T, d)) if self.residual else branch.view(T, n, T, d)
            hp = h.permute(2, 0, 1, 3)  # (T_p, T_k, n, d) view
            own = hp.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # h(copy p)_p: (T_p, n, d)
            z = self.square(self.L - 1, hp, out=c)  # (T_p, T_k, n, m), written contiguously
        mixed = torch.matmul(self.last_row, z.view(T, T, -1)).view(T, H, n, -1)  # (T_p, H, n, m): row p, copy p
        branch = (mixed.transpose(1, 2).reshape(T * n, -1) @ self.last_V).view(T, n, d)
        return branch.add_(own) if self.residual else branch

    def logits(self, g: Tensor, pos: Tensor | int | None = None) -> Tensor:
        """Raw conditional logits from g (..., d); ``pos`` picks the fields (None: g is (T, n, d))."""
        out = g if self.Wt is None else (g.reshape(-1, g.shape[-1]) @ self.Wt).view(*g.shape[:-1], -1)
        if self.offset is None:
            return out
        if pos is None and self.per_site:
            return out.add_(self.offset[:, None]) if self.Wt is not None else out + self.offset[:, None]
        return out + (self.offset if pos is None else self.offset[pos])

    def energy(self, g: Tensor, tokens: Tensor, kind: str) -> Tensor:
        """E (n,) of sequences ``tokens`` (n, T) from their site outputs g (T, n, d)."""
        logits = self.logits(g)  # (T, n, q)
        if kind == "pll":  # log_softmax + gather: measured ~2x faster than logsumexp on CPU
            logits = torch.log_softmax(logits, dim=-1)
        return -logits.gather(-1, tokens.T[..., None]).squeeze(-1).sum(0)


class SiteChains:
    """B chains of single-site MH on a factored model: current state plus one pending candidate.

    ``logits_at(t)`` (B, q): raw logits of q(. | s_-t); ``try_site(t, new)`` (B,): energies of the
    sequences with s_t := new (the candidate is kept); ``accept(mask)`` (B,) bool: keep the candidate
    where True. ``energy`` (B,) and ``tokens`` (B, T) are the current state. ``kind`` is "pll" or
    "scores" (-sum_p logit_p(s_p)). Chains are processed ``chunk`` at a time (default by depth).
    """

    @torch.no_grad()
    def __init__(self, model: FactoredAttention, tokens: Tensor, kind: str = "pll", chunk: int | None = None) -> None:
        if kind not in ("pll", "scores"):
            raise ValueError(f"SiteChains supports energy 'pll' or 'scores', got {kind!r}")
        # chains per block: measured best on one CPU thread (V = 1000, T = 16, d = 64): 64 for L <= 2, 32 deeper
        self.plan, self.kind = _Plan(model), kind
        self.chunk = chunk or (64 if model.cfg.n_layers <= 2 else 32)
        model.embed(tokens)  # validates shape and ids
        self.tokens = tokens.clone()
        B, T = tokens.shape
        self.b1 = self.plan.model.layers[0].mix(self.plan.ev[tokens]).transpose(0, 1).contiguous()  # (T, B, d)
        self.g, self.energy = self._scan(self.b1, self.tokens)  # (T, B, d), (B,)
        self._cand: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def _scan(self, b1: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        g, E = torch.empty_like(b1), b1.new_empty(tokens.shape[0])
        for lo in range(0, tokens.shape[0], self.chunk):
            sl = slice(lo, lo + self.chunk)
            g[:, sl] = self.plan.site_output(b1[:, sl], tokens[sl])
            E[sl] = self.plan.energy(g[:, sl], tokens[sl], self.kind)
        return g, E

    @torch.no_grad()
    def logits_at(self, t: int) -> Tensor:
        return self.plan.logits(self.g[t], t)

    @torch.no_grad()
    def try_site(self, t: int, new: Tensor) -> Tensor:
        p, (T, B, d) = self.plan, self.b1.shape
        tok = self.tokens.clone()
        tok[:, t] = new
        dv = (p.ev[new] - p.ev[self.tokens[:, t]]).transpose(0, 1).reshape(-1, B * d)  # (H, B d)
        b1 = (p.a1_col[t] @ dv).view(T, B, d).add_(self.b1)  # rank-H change of the first layer
        g, E = self._scan(b1, tok)
        self._cand = (tok, b1, g, E)
        return E

    def accept(self, mask: Tensor) -> None:
        if self._cand is None:
            raise RuntimeError("accept() needs a pending try_site()")
        tok, b1, g, E = self._cand
        self.tokens = torch.where(mask[:, None], tok, self.tokens)
        self.b1 = torch.where(mask[:, None], b1, self.b1)
        self.g = torch.where(mask[:, None], g, self.g)
        self.energy = torch.where(mask, E, self.energy)
        self._cand = None
