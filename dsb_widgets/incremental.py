"""Batched single-site Metropolis-Hastings state for factored-attention MLMs (the fast path).

Goyal, Dyer, Berg-Kirkpatrick (2022) sample ``pi(s) ∝ exp(-E(s))`` with single-site proposals from
an MLM's conditionals (:mod:`dsb_widgets.mh_sampler`). With ``E_pll(s) = -sum_p log p(s_p|s_-p)``
every proposal at site t needs ALL T conditionals of the proposed sequence s' (row p is the model
run on s' with s'_p masked, :meth:`FactoredAttention.logits_from_first_layer`). :class:`SiteChains`
keeps, for all B chains at once, exactly what the next proposal needs and computes only the
candidate's quantities:

    state:   tokens s (B, T), first layer b = h^1(s) (T, B, d), the last hidden vector of every
             masked copy at its own site g_p = h^L(copy p)_p (T, B, d), log Z_p (T, B), E(s) (B,)
    q(.|s_-t) = softmax(head(g_t))                                  (one (B, d) x (d, q) read-out)
    b'      = b + sum_h A1^h[:, t] (e_new - e_old) V1^h              (rank-H update, O(T H d))
    copy t:   s' with s'_t masked IS s with s_t masked: g'_t = g_t, its term log Z_t - head(g_t)(s'_t)
    copy p:   h^1(copy p) = b' + sum_h A1^h[:, p] (e_mask - e_{s'_p}) V1^h        (p != t only)
    L = 1:    g'_p = b'_p (the zero diagonal hides s_p from position p)
    L >= 2:   layers 2..L-1 on the T - 1 copies (all positions), layer L at the copy's own site only
    E(s')   = sum_p [log Z'_p - head(g'_p)(s'_p)],  log Z'_p = logsumexp_a head(g'_p)(a)

A chain that proposes its current token keeps E(s) (not recomputed). Everything else is batched over
chains, in blocks of ``chunk`` = 64 chains, with no Python loop over chains or sites, and every block
writes into scratch buffers allocated once (a fresh multi-MB tensor per block costs page faults
comparable to the products on this VM). Middle layers run 8 chains at a time, mixing-first in layout
(k, p, chain, d): ONE GEMM W^h = A^h z for all heads (K = T), then H GEMMs accumulating W^h V^h into h
(K = m, the residual as beta = 1); the last layer squares in place and mixes row p of copy p with one
strided bmm. log Z comes from one fused in-place log_softmax (half the time of
separate max/exp/sum/log passes), with denormals flushed (:func:`flush_denormals`). The target is
unchanged: energies, proposals and MH log-ratios equal a per-chain recomputation by masking by hand
(``tests/test_mh_sampler.py``, ``tests/test_incremental.py``, depths 1-4).

Work per proposal and chain (MACs; V = vocab, H heads, m = squared width, d = model width, P = T - 1):
    read-out of the P conditionals              P d V                    (every depth)
    first layer of the P copies                 P T H d                  (L >= 2)
    layers 2..L-1 on P copies, all positions    (L-2) P (T H m d + H T^2 m)
    layer L at the copy's site                  P (H T m + H m d)
The old path (every proposal: T masked copies through all L layers, all positions) costs
L T (T H d^2 + H T^2 d) + T d V. For the ``dsb clone`` sizes (V = 1000, T = 16, d = 64, H = 4)
that is 6.3M / 11.5M / 16.8M / 22.0M MACs at L = 1..4 against 0.96M / 1.33M / 6.24M / 11.16M here.
For L >= 3 the middle layers on all copies are irreducible for an exact PLL energy: the change at t
reaches every position of every copy after one layer, and after the square the (copy, position)
inputs (b_k + c_pk)^2 = b_k^2 + 2 b_k * c_pk + c_pk^2 have a cross term that differs for each of the
T^2 pairs (expanding it in the rank-H structure of c costs H times MORE value products), so the
FLOP ratio is bounded by about L / (L - 2).

Measured (``benchmarks/bench_mh.py --gemm --rounds 3 --ref d4012de``, 512 chains vs the old path one chain
at a time, chain-tokens per CPU-second, one thread, two whole runs on the shared 2-core machine at load
8-13): 15.2 / 15.2x (L = 1), 13.6 / 13.2x (L = 2), 6.4 / 5.6x (L = 3), 4.1 / 5.7x (L = 4). Side by side
in the same runs the fast path of the session start (d4012de) gave 12.8 / 12.6, 11.1 / 11.3, 4.9 / 4.5,
3.2 / 4.0x: this one is 1.19-1.20 / 1.17-1.22 / 1.25-1.31 / 1.29-1.41x faster (blocks of 64, the fused
log_softmax, one index_select, diagonal views, the (k, p, chain, d) mixing-first layout, and the sampler
refreshing b instead of rebuilding the state, 7% of a sweep at L = 3). The baseline (small working set)
suffers less from the load than the batched paths (L = 3: 739-808/s here, 575-587 on the quieter machine
where the session-start path gave 6.7-6.8x), so compare after/ref across sessions, not the ratios.
10x is NOT reached at L >= 3, and the FLOPs say why: one-thread fp32 GEMM peaks at 84-99 GFLOP/s under
this load (125-160 quiet in an earlier session; 96-100 quiet on 2026-12-03, below). At L = 3 10x of
739-808/s needs 6.24M MACs x 7,400-8,100/s = 92-101 GFLOP/s,
the whole peak with no other work; the path sustains 56-59 (a profile: GEMMs 73% of the time, value
GEMMs 39%, the K = T mixing GEMM 16% for a quarter of their MACs, read-out 9%; log_softmax 3.5%; the
rest ~20 small copies, squares and gathers per block). Measured on the quiet machine (load 0.0-0.1; an
earlier extrapolation to ~8.5-9x was wrong): 11.4 / 11.4 / 5.0 / 4.0x at L = 1-4; the one-chain baseline
speeds up more than the batched path (L = 3: 1,070/s), the GEMM peak is 96-100 GFLOP/s, and 10x at L = 3
would need 134 GFLOP/s: at the whole peak L = 3 caps at 7.5x, L = 4 at 5.5x (``benchmarks/bench_mh.py``).
At L = 4 10x of 479-740/s needs 11.16M MACs x
4,800-7,400/s = 107-165 GFLOP/s: at or above the peak. torch.compile (inductor) of a block was measured
no faster (previous session).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dsb_widgets.factored_attention import FactoredAttention

__all__ = ["SiteChains", "flush_denormals"]


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero (FTZ/DAZ, this thread) inside the block; the previous mode is restored.

    exp of arguments below about -87 gives float32 denormals (< 1.2e-38); arithmetic on them runs through slow
    microcode on this CPU (a fused log_softmax is 2x slower on rows whose logits spread over more than 87,
    measured). Flushing such a term to 0 changes a softmax normaliser (a sum >= 1) by less than V * 1.2e-38,
    far below float32 (6e-8) and float64 (1e-16) rounding: no log-probability changes.
    """
    on = bool(torch.tensor(1e-39).mul(2.0) == 0)  # already flushed (DAZ reads the denormal as 0)
    turned = not on and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if turned:
            torch.set_flush_denormal(False)


class _Plan:
    """The model's weights in the layouts the batched path multiplies with, plus reusable buffers
    (built once per sweep; fresh multi-MB outputs per chunk cost page faults comparable to the GEMMs)."""

    def __init__(self, model: FactoredAttention) -> None:
        self.model = model
        cfg = model.cfg
        self.L, self.T, self.residual = cfg.n_layers, cfg.seq_len, cfg.residual
        layers = model.layers
        first = layers[0]
        A1 = first.attention()  # (H, T, T)
        self.ev = first.values(model.embedding)  # (q + 1, H, d): first-layer values of every token
        ev_diff = self.ev[cfg.mask_id] - self.ev  # (q + 1, H, d): e_mask V1 - e_a V1
        H, d = ev_diff.shape[1:]
        self.ev_rows = ev_diff.permute(1, 0, 2).reshape(-1, d).contiguous()  # (H (q + 1), d): row h (q + 1) + a
        self.head_row = (torch.arange(H, device=ev_diff.device) * ev_diff.shape[0])[:, None]  # (H, 1)
        self.a1_col = A1.permute(2, 1, 0).contiguous()  # (T_p, T_k, H): A1^h_{k p}; [t] = column t
        squares = getattr(model, "squares", None)
        width = getattr(cfg, "square_width", None)
        self.U: list[Tensor | None] = [None]
        self.U += [squares[k - 1] if (width is not None and squares is not None) else None for k in range(1, self.L)]
        # middle layers, mixing first: W^h = A^h z (one broadcast GEMM for all heads, K = T), then
        # h += sum_h W^h V^h (H GEMMs accumulating into h, K = m: the residual is their beta = 1)
        self.mid = [(layers[k].attention(), layers[k].V) for k in range(1, self.L - 1)]  # (H, T, T), (H, m, d)
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
        self._buf: dict[tuple[str, tuple[int, ...]], Tensor] = {}
        self._copies: dict[int | None, _Copies] = {}
        self.inner = 8  # chains per block of the middle layers (4 and 16: 1-10% slower, side by side)

    def buf(self, name: str, *shape: int) -> Tensor:
        """A scratch tensor reused across chunks and proposals (contents undefined)."""
        key = (name, shape)
        if key not in self._buf:
            self._buf[key] = self.ev.new_empty(shape)
        return self._buf[key]

    def square(self, k: int, h: Tensor, out: Tensor) -> Tensor:
        """Input of layer k >= 1 into ``out``: h * h, or (h U_k)^2 with ``square_width``."""
        U = self.U[k]
        z = h if U is None else h @ U
        return torch.mul(z, z, out=out)

    def copies(self, t: int | None) -> _Copies:
        """The masked copies a proposal at site t needs: all but copy t (None: all T), with their weights."""
        if t not in self._copies:
            cp = _Copies(self.T, t, self.a1_col, self.last_row if self.L >= 2 else None, self.offset)
            if self.offset is not None and self.per_site:
                cp.offset = self.offset[cp.keep]  # (P, q)
            self._copies[t] = cp
        return self._copies[t]

    def site_output(self, b1: Tensor, tokens: Tensor, cp: _Copies) -> Tensor:
        """g_p = h^L(copy p)_p (P, n, d) for the copies p in ``cp`` from the unmasked first layer b1 (T, n, d)
        and tokens (n, T). Site-major layouts, so that the n chains widen every product (few, large GEMMs)."""
        T, n, d = b1.shape
        if self.L == 1:
            return b1[cp.keep]
        H, P = self.ev.shape[1], len(cp.keep)
        r = self.buf("r", P, H, n, d)  # (P, H, n, d): value change of masking p, one index_select (no temporaries)
        torch.index_select(self.ev_rows, 0, (tokens.T[cp.keep][:, None] + self.head_row).view(-1), out=r.view(-1, d))
        c = torch.baddbmm(b1.view(1, T, n * d).expand(P, T, n * d), cp.a1, r.view(P, H, n * d),
                          out=self.buf("c", P, T, n * d)).view(P, T, n, d)  # (P, T_k, n, d): h^1 of copy p at k
        U = self.U[self.L - 1]
        m = d if U is None else U.shape[1]
        assert cp.last is not None
        flat = self.buf("flat", P, n, H, m)  # last layer, mixed at the copy's own site p: (P, n, (h, m))
        if not self.mid:  # L = 2; at k = p h^1 of copy p is b1_p (A1_pp = 0)
            own = b1[cp.keep]
            z = self.square(1, c, out=c if U is None else self.buf("zp", P, T, n, m))  # (P, T_k, n, m)
            mixed = torch.matmul(cp.last, z.view(P, T, -1), out=self.buf("mix", P, H, n * m))  # row p of copy p
            flat.copy_(mixed.view(P, H, n, m).transpose(1, 2))
        else:  # layers 2..L-1 on all positions of every copy, ``inner`` chains at a time (in L2)
            own = self.buf("own", P, n, d)
            for lo in range(0, n, self.inner):
                sl = slice(lo, lo + self.inner)
                h = self.middle(c[:, :, sl])  # (T_k, P, n', d): h^(L-1) of the copies
                cp.own_site(h, own[:, sl])  # h(copy p)_p
                z = self.square(self.L - 1, h, out=h if U is None else self.buf("zl", *h.shape[:3], m))  # in place
                k = z.shape[2]  # row p of copy p: z[:, p] (T_k, n' m) is a strided matrix, one bmm over p
                mixed = torch.bmm(cp.last, z.view(T, P, -1).transpose(0, 1), out=self.buf("mix", P, H, k * m))
                flat[:, sl].copy_(mixed.view(P, H, k, m).transpose(1, 2))
        branch = torch.mm(flat.view(P * n, -1), self.last_V, out=self.buf("g", P * n, d)).view(P, n, d)
        return branch.add_(own) if self.residual else branch

    def middle(self, c: Tensor) -> Tensor:
        """Layers 2..L-1 on every position of the copies, from their first layer c (P, T_k, n, d); laid out
        (k, p, n, d) so that a layer is ONE mixing GEMM for all heads, W^h_j = sum_k A^h_jk z_k (K = T), and H
        value GEMMs h_j += sum_h W^h_j V^h accumulating into h (K = m; the residual is their beta = 1): no
        (H, T, P, n, d) values buffer, 1.02-1.03x over values-first side by side. Returns h^(L-1) (T_k, P, n, d)."""
        P, T, n, d = c.shape
        H = self.ev.shape[1]
        h = self.buf("h", T, P, n, d)
        h.copy_(c.transpose(0, 1))
        hv = h.view(-1, d)  # (T_j P n, d)
        for i, (A, Vs) in enumerate(self.mid):
            m = Vs.shape[1]
            z = self.square(i + 1, h, out=self.buf("z", T, P, n, m))  # (T_k, P, n, m)
            W = torch.matmul(A, z.view(T, -1), out=self.buf("W", H, T, P * n * m))  # (H, T_j, P n m)
            for k in range(H):
                if k or self.residual:
                    hv.addmm_(W[k].view(-1, m), Vs[k])
                else:
                    torch.mm(W[k].view(-1, m), Vs[k], out=hv)
        return h

    def logits(self, g: Tensor, pos: int) -> Tensor:
        """Raw logits (B, q) of the conditional at site ``pos`` from g_pos (B, d)."""
        out = g if self.Wt is None else g @ self.Wt
        return out if self.offset is None else out + (self.offset[pos] if self.per_site else self.offset)

    def logit_of(self, g: Tensor, pos: int, tok: Tensor) -> Tensor:
        """logit_pos(tok) (B,) from g_pos (B, d), one column of the read-out per chain (no (B, q) product)."""
        out = g.gather(-1, tok[:, None])[:, 0] if self.Wt is None else (g * self.Wt.T[tok]).sum(-1)
        return out if self.offset is None else out + (self.offset[pos] if self.per_site else self.offset)[tok]

    def terms(self, g: Tensor, tokens: Tensor, cp: _Copies, kind: str) -> tuple[Tensor, Tensor | None]:
        """Per copy p in ``cp``: its energy term, -log p(s_p | s_-p) ("pll") or -logit_p(s_p) ("scores"), and
        log Z_p = logsumexp_a logit_p(a) ((P, n) each; log Z None for "scores") from the site outputs g (P, n, d)
        of sequences ``tokens`` (n, T)."""
        P, n, d = g.shape
        logits = self.buf("logits", P, n, self.Wt.shape[1] if self.Wt is not None else d)
        if self.Wt is not None:
            torch.mm(g.reshape(P * n, d), self.Wt, out=logits.view(P * n, -1))
        else:
            logits.copy_(g)
        if cp.offset is not None:
            logits.add_(cp.offset[:, None] if self.per_site else cp.offset)
        idx = tokens.T[cp.keep][..., None]  # (P, n, 1): s_p
        picked = logits.gather(-1, idx).squeeze(-1)  # (P, n): logit_p(s_p)
        if kind == "scores":
            return picked.neg_(), None
        # log Z_p = logit_p(s_p) - log_softmax_p(s_p): ONE fused in-place kernel (max, sum of exp, write), about
        # half the time of amax/sub/exp/sum/log passes; its exp of arguments below about -87 (peaked or deep
        # untrained models) would be 2x slower through denormals, which SiteChains flushes (flush_denormals)
        nll = torch.log_softmax(logits, -1, out=logits).gather(-1, idx).squeeze(-1).neg_()  # (P, n): -log p(s_p|.)
        return nll, nll.add(picked)


class _Copies:
    """Which masked copies a proposal recomputes (``keep``, (P,)) and the weights indexed by them."""

    def __init__(self, T: int, t: int | None, a1: Tensor, last: Tensor | None, offset: Tensor | None) -> None:
        self.keep = torch.tensor([p for p in range(T) if p != t], device=a1.device)  # (P,)
        self.t = T if t is None else t  # copies [0, t) sit at their own index, copies [t, P) one further
        self.a1, self.last, self.offset = a1[self.keep], None if last is None else last[self.keep], offset
        # where the P rows go in a (T, ...) tensor: all of it, or the rows before and after t
        self.slices = [slice(0, T)] if t is None else [slice(0, t), slice(t + 1, T)]

    def own_site(self, h: Tensor, out: Tensor) -> None:
        """out[i] = h[keep[i], i] (P, n, d): each copy's hidden vector at its own site, from h (T_k, P, n, d),
        as two strided diagonals (no index arithmetic)."""
        t = self.t
        out[:t].copy_(h.diagonal(0, 0, 1)[..., :t].permute(2, 0, 1))
        out[t:].copy_(h.diagonal(-1, 0, 1)[..., t:].permute(2, 0, 1))


class SiteChains:
    """B chains of single-site MH on a factored model: current state plus one pending candidate.

    ``logits_at(t)`` (B, q): raw logits of q(. | s_-t); ``try_site(t, new)`` (B,): energies of the
    sequences with s_t := new (the candidate is kept); ``accept(mask)`` (B,) bool: keep the candidate
    where True. ``energy`` (B,) and ``tokens`` (B, T) are the current state. ``kind`` is "pll" or
    "scores" (-sum_p logit_p(s_p)). Chains are processed ``chunk`` at a time.

    Copy t of the candidate (s' with s'_t masked) IS copy t of the current sequence, so a proposal
    at t recomputes the other T - 1 copies only; its own term is logZ_t(s) - logit_t(s)(s'_t), from
    the kept g_t and log Z_t.
    """

    @torch.no_grad()
    def __init__(self, model: FactoredAttention, tokens: Tensor, kind: str = "pll", chunk: int | None = None) -> None:
        if kind not in ("pll", "scores"):
            raise ValueError(f"SiteChains supports energy 'pll' or 'scores', got {kind!r}")
        # chains per block, measured on one CPU thread (V = 1000, T = 16, d = 64): 64 at every depth (fewer
        # calls, wider read-out GEMMs; 1.03-1.2x over 8-32 side by side); the middle layers run 4 at a time inside
        self.plan, self.kind = _Plan(model), kind
        self.chunk = chunk or 64
        model.embed(tokens)  # validates shape and ids
        self.tokens = tokens.clone()
        self.b1 = self._first_layer(self.tokens)  # (T, B, d)
        # state and candidate buffers, allocated once (accept() copies in place: no fresh multi-MB tensors)
        self.g, self.logz = torch.empty_like(self.b1), self.b1.new_zeros(self.b1.shape[:2])  # (T, B, d), (T, B)
        self._g, self._logz, self._b1 = torch.empty_like(self.g), torch.zeros_like(self.logz), torch.empty_like(self.b1)
        with flush_denormals():
            self.energy = self._scan(self.b1, self.tokens, self.plan.copies(None), self.g, self.logz)
        self._cand: tuple[Tensor, Tensor, Tensor] | None = None  # tokens, energies, moved (B,)

    def _scan(self, b1: Tensor, tokens: Tensor, cp: _Copies, g: Tensor, logz: Tensor) -> Tensor:
        """Rows ``cp`` of g (T, B, d) and log Z (T, B) written in place; returns the sum over ``cp`` of
        log Z_p - logit_p(s_p) (B,) (for "scores": -logit_p(s_p))."""
        E = b1.new_empty(tokens.shape[0])
        for lo in range(0, tokens.shape[0], self.chunk):
            sl = slice(lo, lo + self.chunk)
            out = self.plan.site_output(b1[:, sl], tokens[sl], cp)  # (P, n, d), a reused buffer
            term, lz = self.plan.terms(out, tokens[sl], cp, self.kind)
            E[sl] = term.sum(0)
            i = 0
            for rows in cp.slices:
                k = rows.stop - rows.start
                g[rows, sl] = out[i : i + k]
                if lz is not None:
                    logz[rows, sl] = lz[i : i + k]
                i += k
        return E

    @torch.no_grad()
    def logits_at(self, t: int) -> Tensor:
        return self.plan.logits(self.g[t], t)

    @torch.no_grad()
    def try_site(self, t: int, new: Tensor) -> Tensor:
        with flush_denormals():
            return self._try_site(t, new)

    def _try_site(self, t: int, new: Tensor) -> Tensor:
        p, (T, B, d), cp = self.plan, self.b1.shape, self.plan.copies(t)
        tok = self.tokens.clone()
        tok[:, t] = new
        moved = new != self.tokens[:, t]  # (B,): a proposal of the current token leaves E(s) as it is
        dv = (p.ev[new] - p.ev[self.tokens[:, t]]).transpose(0, 1).reshape(-1, B * d)  # (H, B d)
        b1 = torch.matmul(p.a1_col[t], dv, out=self._b1.view(T, B * d)).view(T, B, d).add_(self.b1)  # rank-H change
        own = -p.logit_of(self.g[t], t, new)  # copy t is unchanged; its term: log Z_t - logit_t(new)
        if self.kind == "pll":
            own.add_(self.logz[t])
        if bool(moved.all()):
            E = self._scan(b1, tok, cp, self._g, self._logz).add_(own)
        else:  # recompute only the chains that move (trained models propose their current token often)
            idx = moved.nonzero()[:, 0]
            g, logz = b1.new_empty(T, len(idx), d), b1.new_zeros(T, len(idx))
            E = self.energy.clone()
            E[idx] = self._scan(b1[:, idx], tok[idx], cp, g, logz) + own[idx]
            self._g[:, idx], self._logz[:, idx] = g, logz
        self._g[t], self._logz[t] = self.g[t], self.logz[t]
        self._cand = (tok, E, moved)
        return E

    def accept(self, mask: Tensor) -> None:
        if self._cand is None:
            raise RuntimeError("accept() needs a pending try_site()")
        tok, E, moved = self._cand
        self.tokens = torch.where(mask[:, None], tok, self.tokens)  # new tensors: callers may hold views
        self.energy = torch.where(mask, E, self.energy)
        mask = mask & moved  # the candidate buffers hold the chains that moved
        for cur, cand, m in ((self.b1, self._b1, mask[:, None]), (self.g, self._g, mask[:, None]),
                             (self.logz, self._logz, mask)):
            torch.where(m, cand, cur, out=cur)  # elementwise, in place
        self._cand = None

    def _first_layer(self, tokens: Tensor) -> Tensor:
        """h^1 (T, B, d) of the unmasked sequences, from scratch."""
        return self.plan.model.layers[0].mix(self.plan.ev[tokens]).transpose(0, 1).contiguous()

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the first layer b from the tokens (T^2 H d multiply-adds per chain: < 0.5% of a sweep at
        the ``dsb clone`` sizes, L = 1, less deeper). b is the only state updated incrementally (b += a rank-H
        change at every accepted move), so its rounding would otherwise random-walk over a long run; g, log Z
        and E are recomputed from b at every proposal, so after a refresh every kept quantity is within a
        sweep's roundings of a fresh computation (the sampler calls this once per sweep instead of rebuilding
        the whole state, which cost a full energy evaluation, ~6% of a sweep at L = 3)."""
        if self._cand is not None:
            raise RuntimeError("refresh() with a pending try_site(): accept() it first")
        self.b1.copy_(self._first_layer(self.tokens))

    @torch.no_grad()
    def reorder(self, perm: Tensor) -> None:
        """Chain b takes the state of chain perm[b] (B,) (replica exchange swaps whole states)."""
        if self._cand is not None:
            raise RuntimeError("reorder() with a pending try_site(): accept() it first")
        self.tokens, self.energy = self.tokens[perm], self.energy[perm]
        for cur in (self.b1, self.g, self.logz):
            cur.copy_(cur[:, perm])
