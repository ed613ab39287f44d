"""Metropolis-Hastings sampling from a masked language model (Goyal, Dyer, Berg-Kirkpatrick 2022).

An MLM gives conditionals p(s_t | s_-t) but, in general, no joint: they need not be the
conditionals of any distribution, so plain Gibbs sampling with them has no well-defined target.
Goyal et al. instead *define* a joint through an energy and sample it exactly with MH:

    E_pll(s)    = - sum_t log p(s_t | s_-t)            (energy="pll", default)
    E_scores(s) = - sum_t logit_t(s_t)                 (energy="scores": raw, unnormalised logits)
    pi(s) ∝ exp(-E(s)).

Proposal at position t: s'_t ~ q(. | s_-t) = p(. | s_-t), other positions unchanged; accept with

    min(1, exp(E(s) - E(s')) * q(s_t | s'_-t) / q(s'_t | s_-t)),    s'_-t = s_-t,

which leaves pi invariant whatever the conditionals are. One sweep = one proposal per position
(random permutation or sequential order); all chains run as one batch. Rende et al. (NeurIPS
2024) draw their factored-attention *clones* this way.

``conditionals_fn`` maps tokens (B, T) to log-probabilities or logits (B, T, V) such that row t
does not depend on s_t: a factored model's :class:`~dsb_widgets.factored_attention.IncrementalConditionals`
(the one implementation of its masked conditionals); for any other MLM wrap it with
:func:`masked_conditionals`, which masks each position in turn. If ``conditionals_fn`` also has
``start(tokens) -> (out, state)`` and ``propose(tokens', state, t, old, new) -> (out', state')``
(the :class:`Incremental` protocol) the sampler updates the conditionals incrementally for the
resampled site instead of recomputing them; the state is rebuilt from scratch at every sweep.
Every proposal is made for all B chains at once (one batch).

Fast path: if ``conditionals_fn`` has ``begin(tokens, energy) -> SiteState`` (:class:`SiteUpdates`;
a factored model's :class:`~dsb_widgets.factored_attention.IncrementalConditionals` does, through
:class:`~dsb_widgets.incremental.SiteChains`) and ``energy`` is "pll" or "scores", the state keeps
E(s) and what the next proposal needs, and each proposal computes only the candidate's energy:
no (B, T, V) conditionals are materialised or merged; its incrementally updated part is refreshed
every sweep (no drift) and replica exchanges reorder it. Same random draws in the same order as the
generic loop, so both give the same chains (tested at depths 1-4, and with tempering).

Stationarity (:mod:`dsb_widgets.mh_stationarity`, re-exported here): the per-chain energy
trace (sweeps, B) is stationary when the
split-R-hat over chains of the last ``2 W`` sweeps is below ``rhat_max`` (1.05) AND the mean
energies of the last two windows of W sweeps differ by less than ``z_max`` (2) standard errors
(s.e. from the spread of the per-chain window means). ``metropolis_hastings(..., until_stationary=W)``
runs until that holds (checked every W sweeps) or ``n_sweeps``, and keeps the last window's states.

The window must be long against the autocorrelation. For a STATIONARY trace with integrated
autocorrelation time tau (:func:`autocorr_time`, in sweeps), a half-chain of n = W sweeps has
E[within variance] ~ sigma^2 (1 - (tau - 1) / n) while the pooled estimate stays ~ sigma^2, so

    E[split-R-hat] ~ (1 - (tau - 1) / W)^(-1/2)        (> 1.05 whenever W < 10.8 (tau - 1)):

a fixed W = 10 rejects every chain with tau >~ 2 sweeps, stationary or not (an AR(1) check is in
the tests; on the ``dsb clone`` models of Tiny Shakespeare, after 400-600 sweeps: tau = 10-20 sweeps
within a chain, 120-250 counting the chains' different levels, see :func:`autocorr_time`). ``window_tau=c`` makes
the window adaptive, W = max(W_min, ceil(c tau)) with tau estimated on the second half of the
trace at each check; c = :data:`WINDOW_TAU` = 20 gives E[R-hat] ~ 1.026 at stationarity. The
thresholds (1.05, 2 s.e.) are unchanged; a longer window only makes a drift easier to see.

Parallel tempering (``betas``; Swendsen & Wang 1986, Geyer 1991, Earl & Deem 2005): K groups of
chains sample pi_k(s) ∝ exp(-beta_k E(s)), beta_0 = 1 > beta_1 > ... > beta_(K-1) > 0, with the same
proposals and the MH ratio min(1, exp(beta_k (E(s) - E(s'))) q(s_t|s_-t) / q(s'_t|s_-t)); after every
sweep, chain j of group k and chain j of group k+1 exchange states with probability

    min(1, exp((beta_k - beta_(k+1)) (E(s_k) - E(s_(k+1))))),

k even on even sweeps and odd on odd ones (``swap_rounds`` > 1: that many alternating rounds after each
sweep). The joint of all groups is invariant, so group 0 still samples pi exactly (tested by
enumeration); hot groups cross the barriers between energy basins that single-site moves at beta = 1
do not. ``tempered_proposals``: chains at beta propose from q_beta ∝ q^beta (still exact: any proposal
that does not depend on s_t is, with q_beta in the ratio). ``MHResult.tempering`` holds the ladder's
diagnostics (:class:`~dsb_widgets.mh_tempering.Ladder`: swap rate per pair, tau and acceptance per
temperature, round trips).

Caution: even with the exact conditionals of a true joint p (e.g. a Potts model), the "pll"
target exp(sum_t log p(s_t|s_-t)) is NOT p in general; pass ``energy=model.energy`` (a callable)
to target p itself. Both are tested exactly against enumeration in ``tests/test_mh_sampler.py``.
Speed: ``benchmarks/bench_mh.py`` compares the batched fast path with one chain at a time, per depth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from dsb_widgets.incremental import flush_denormals
from dsb_widgets.mh_stationarity import WINDOW_TAU, _check_window, autocorr_time, split_rhat, stationarity
from dsb_widgets.mh_tempering import Ladder, temperature_ladder

__all__ = ["MHResult", "Incremental", "SiteUpdates", "SiteState", "metropolis_hastings", "masked_conditionals",
           "pll_energy", "split_rhat", "stationarity", "autocorr_time", "WINDOW_TAU"]

ConditionalsFn = Callable[[Tensor], Tensor]  # (B, T) int -> (B, T, V) log-probs or logits
EnergyFn = Callable[[Tensor], Tensor]  # (B, T) int -> (B,)


@runtime_checkable
class Incremental(Protocol):
    """Conditionals that can be updated after one site of every chain changed."""

    def start(self, tokens: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]: ...

    def propose(self, tokens: Tensor, state: tuple[Tensor, ...], t: int, old: Tensor,
                new: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]: ...


class SiteState(Protocol):
    """Current state of B chains plus one pending single-site candidate (see :class:`SiteUpdates`)."""

    tokens: Tensor  # (B, T)
    energy: Tensor  # (B,)

    def logits_at(self, t: int) -> Tensor: ...  # (B, V) raw logits of q(. | s_-t)

    def try_site(self, t: int, new: Tensor) -> Tensor: ...  # (B,) energies with s_t := new

    def accept(self, mask: Tensor) -> None: ...  # keep the candidate where mask (B,) is True


@runtime_checkable
class SiteUpdates(Protocol):
    """Conditionals that run the chains themselves: ``begin(tokens, energy)`` (energy "pll" or
    "scores") returns a :class:`SiteState` that computes only the candidate's quantities."""

    def begin(self, tokens: Tensor, energy: str) -> SiteState: ...


class _Recompute:
    """A plain conditionals function behind the :class:`Incremental` protocol (full recompute)."""

    def __init__(self, fn: ConditionalsFn) -> None:
        self.fn = fn

    def start(self, tokens: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        return self.fn(tokens), ()

    def propose(self, tokens: Tensor, state: tuple[Tensor, ...], t: int, old: Tensor,
                new: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        return self.fn(tokens), ()


@dataclass(frozen=True, eq=False)
class MHResult:
    """samples (S, B, T): kept states (after burn-in, every ``thin`` sweeps); final (B, T); stats:
    one dict per sweep (also passed to ``on_sweep``); acceptance_rate over the kept sweeps;
    energies (sweeps + 1, B): each chain's energy at the start and after every sweep;
    stationarity: the last :func:`stationarity` check (None when not asked for)."""

    samples: Tensor
    final: Tensor
    stats: tuple[dict[str, float], ...]
    acceptance_rate: float
    energies: Tensor | None = None
    stationarity: dict[str, Any] | None = None
    tempering: dict[str, Any] | None = None


def _energy_from_output(out: Tensor, tokens: Tensor, kind: str) -> Tensor:
    """(B, T, V) conditionals output -> energy (B,) (no (B, T, V) temporary for "pll")."""
    picked = out.gather(-1, tokens[..., None]).squeeze(-1)  # (B, T)
    if kind == "pll":
        picked = picked - torch.logsumexp(out, dim=-1)
    return -picked.sum(-1)


def pll_energy(conditionals_fn: ConditionalsFn) -> EnergyFn:
    """E(s) = -sum_t log p(s_t | s_-t) as a function (B, T) -> (B,), e.g. for exact enumeration."""
    return lambda tokens: _energy_from_output(conditionals_fn(tokens), tokens, "pll")


def masked_conditionals(mlm_fn: ConditionalsFn, mask_id: int, chunk: int = 4096) -> ConditionalsFn:
    """Wrap a generic MLM (tokens (B, T) -> logits (B, T, V), e.g. a BERT) so that row t is computed
    with s_t replaced by ``mask_id``: B*T forward rows (in chunks of ``chunk``), logits returned raw.
    (Factored models have their own exact, cheaper path: ``FactoredAttention.conditional_logits``.)"""

    def fn(tokens: Tensor) -> Tensor:
        B, T = tokens.shape
        eye = torch.eye(T, dtype=torch.bool, device=tokens.device)
        masked = torch.where(eye, mask_id, tokens[:, None, :]).reshape(B * T, T)  # (B*T, T)
        pos = torch.arange(B * T, device=tokens.device) % T
        out = [
            mlm_fn(masked[lo : lo + chunk])[torch.arange(min(chunk, B * T - lo)), pos[lo : lo + chunk]]
            for lo in range(0, B * T, chunk)
        ]
        return torch.cat(out).reshape(B, T, -1)

    return fn


def _check(init: Tensor, n_sweeps: int, burn_in: int, thin: int, order: str, energy: Any) -> None:
    if init.dim() != 2 or init.dtype in (torch.float16, torch.float32, torch.float64):
        raise ValueError(f"init must be (B, T) integer token ids; got {tuple(init.shape)} {init.dtype}")
    if n_sweeps < 1 or burn_in < 0 or burn_in >= n_sweeps or thin < 1:
        raise ValueError("need n_sweeps >= 1, 0 <= burn_in < n_sweeps, thin >= 1")
    if order not in ("random", "sequential"):
        raise ValueError(f"order must be 'random' or 'sequential', got {order!r}")
    if not callable(energy) and energy not in ("pll", "scores"):
        raise ValueError(f"energy must be 'pll', 'scores' or a callable (B, T) -> (B,); got {energy!r}")


def _log_q(logits: Tensor, qbeta: Tensor | None = None) -> Tensor:
    """log q(. | s_-t) (B, V), denormals flushed (:func:`~dsb_widgets.incremental.flush_denormals`); ``qbeta`` (B,):
    the tempered proposal q_beta ∝ q^beta of each chain (module docstring)."""
    with flush_denormals():
        return F.log_softmax(logits if qbeta is None else logits * qbeta.to(logits.dtype)[:, None], dim=-1)


def _draw(logq: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of log-probabilities (B, V) by inverting the CDF (one uniform per row).

    log q is clamped at -87 first: exp below about -87 (float32 denormals) is 10-20x slower on this CPU (512 x
    1,000 rows, 99% below -87: the draw 8.75 -> 1.73 ms; unpeaked rows 1.47 -> 1.71 ms, the clamp's pass).
    Exact to the draw's resolution: a partial sum S of the CDF moves by <= V e^-87 ~ 1e-35 while u is a
    multiple of 2^-24 (2^-53 in float64); sums below 2^-24 compare with u alike, above it S < u flips only
    within 1e-35 of a rounding midpoint (odds ~1e-20 per draw).
    Tested: the same draws on rows with 86% of log q below -87."""
    u = torch.rand(logq.shape[0], 1, generator=generator, dtype=logq.dtype, device=logq.device)
    return (logq.clamp(min=-87.0).exp_().cumsum(-1) < u).sum(-1).clamp_max(logq.shape[-1] - 1)


def _accept(log_ratio: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(log_ratio.shape[0], generator=generator, dtype=log_ratio.dtype, device=log_ratio.device)
    return torch.log(u) < log_ratio


def _sweep_sites(chains: SiteState, positions: list[int], rows: Tensor, generator: torch.Generator | None,
                 beta: Tensor | None, qbeta: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One sweep of the fast path: per site, draw from q(. | s_-t), score only the candidate, accept.
    Same random draws, in the same order, as the generic loop. Returns per-chain (accepted, changed) (B,)."""
    accepted = changed = rows.new_zeros(rows.shape)
    for t in positions:
        logq = _log_q(chains.logits_at(t), qbeta)  # (B, V): q(. | s_-t)
        old, new = chains.tokens[:, t], _draw(logq, generator)
        E, E_new = chains.energy, chains.try_site(t, new)
        dE = E - E_new if beta is None else beta * (E - E_new)
        accept = _accept(dE + logq[rows, old] - logq[rows, new], generator)  # q(s_t|s'_-t) = q(s_t|s_-t)
        accepted = accepted + accept
        changed = changed + (accept & (new != old))
        chains.accept(accept)
    return accepted, changed


def _resync(chains: SiteState, site: SiteUpdates, s: Tensor, perm: Tensor | None, energy: str) -> SiteState:
    """Before a sweep: apply the replica exchanges ``perm`` (B,) and refresh the incrementally updated part
    (``SiteChains.refresh``: ~0.2% of a sweep at L = 3); a state without ``refresh``/``reorder`` is rebuilt
    from ``s`` (a full energy evaluation: 7% of a sweep at L = 3, measured)."""
    refresh, reorder = getattr(chains, "refresh", None), getattr(chains, "reorder", None)
    if refresh is None or (perm is not None and reorder is None):
        return site.begin(s, energy)
    if perm is not None and reorder is not None:
        reorder(perm)
    refresh()
    return chains


@torch.no_grad()
def metropolis_hastings(
    conditionals_fn: ConditionalsFn | Incremental | SiteUpdates,
    init: Tensor,
    *,
    n_sweeps: int,
    burn_in: int = 0,
    thin: int = 1,
    order: Literal["random", "sequential"] = "random",
    energy: Literal["pll", "scores"] | EnergyFn = "pll",
    generator: torch.Generator | None = None,
    on_sweep: Callable[[dict[str, float]], None] | None = None,
    until_stationary: int | None = None,
    window_tau: float | None = None,
    betas: Sequence[float] | None = None,
    swap_rounds: int = 1,
    tempered_proposals: bool = False,
) -> MHResult:
    """Run B chains from ``init`` (B, T) (e.g. real test sentences) for ``n_sweeps`` sweeps.

    ``until_stationary=W``: stop early once :func:`stationarity` holds for the energy trace
    (checked every W sweeps; ``n_sweeps`` is then the maximum) and keep the states of the last W
    sweeps (every ``thin``-th); ``burn_in`` is ignored. ``window_tau=c`` (with ``until_stationary``):
    the window is max(W, ceil(c tau)), tau = :func:`autocorr_time` of the trace's second half at each
    check (module docstring); the check dict then holds ``tau`` and every check in ``history``; if
    the chains never pass, the last ``until_stationary`` sweeps are kept (the most relaxed ones).
    ``betas`` (K inverse temperatures, betas[0] = 1 > betas[1] > ...): parallel tempering (module
    docstring); B must be a multiple of K, chain b runs at betas[b // (B / K)] and everything returned
    (samples, final, energies, stationarity, acceptance) is about the first B / K chains, the target;
    ``swap_rounds`` exchange rounds per sweep, ``tempered_proposals`` (module docstring).
    Per-sweep stats: sweep, acceptance_rate
    (accepted / proposed, a proposal equal to the current token counts as accepted), change_rate
    (fraction of proposals that changed a token), mean_energy (over chains, after the sweep),
    seconds, tokens_per_second (B*T / seconds, all chains), burn_in (1.0 during burn-in), swap_rate
    (tempering: fraction of replica exchanges accepted).
    """
    _check(init, n_sweeps, burn_in, thin, order, energy)
    if until_stationary is not None and until_stationary < 2:
        raise ValueError(f"until_stationary (a window of sweeps) must be >= 2, got {until_stationary}")
    if window_tau is not None and not window_tau > 0:
        raise ValueError(f"window_tau must be > 0 (a multiple of the autocorrelation time), got {window_tau}")
    site = conditionals_fn if isinstance(conditionals_fn, SiteUpdates) and isinstance(energy, str) else None
    inc: Incremental = (conditionals_fn if isinstance(conditionals_fn, Incremental)
                        else _Recompute(conditionals_fn))  # type: ignore[arg-type]

    def energy_of(out: Tensor, s: Tensor) -> Tensor:  # -> (B,)
        return energy(s).to(out.dtype) if callable(energy) else _energy_from_output(out, s, energy)

    s = init.clone()
    B, T = s.shape
    bt = temperature_ladder(betas, B, s.device)
    beta = None if bt is None else bt.repeat_interleave(B // bt.shape[0])  # (B,) each chain's 1 / temperature
    ladder = None if bt is None else Ladder(bt, B, swap_rounds)
    qbeta = beta if tempered_proposals else None  # (B,): hot chains propose from q^beta
    n = B if bt is None else B // bt.shape[0]  # the target's chains: 0 .. n-1
    if site is not None:  # the fast path: the conditionals run the chains' state themselves
        chains = site.begin(s, str(energy))
        E = chains.energy
    else:
        out, _ = inc.start(s)  # (B, T, V)
        if out.shape[:2] != (B, T):
            raise ValueError(f"conditionals_fn must return (B, T, V) = ({B}, {T}, V); got {tuple(out.shape)}")
        E = energy_of(out, s)
    rows = torch.arange(B, device=s.device)
    perm: Tensor | None = None  # tempering: which chain's state each chain took in the last exchange
    states, energies, stats = [s[:n].clone()], [E[:n].clone()], []
    accepted_per_sweep: list[int] = []
    check: dict[str, Any] | None = None
    history: list[dict[str, float]] = []
    for sweep in range(n_sweeps):
        t0 = time.perf_counter()
        accepted = changed = rows.new_zeros(B)
        positions = torch.randperm(T, generator=generator) if order == "random" else torch.arange(T)
        if site is not None:
            if sweep:  # no drift from incremental updates: refresh what is updated incrementally, or rebuild
                chains = _resync(chains, site, s, perm, str(energy))
            accepted, changed = _sweep_sites(chains, positions.tolist(), rows, generator, beta, qbeta)
            s, E = chains.tokens, chains.energy
        else:
            out, state = inc.start(s)  # rebuilt every sweep: no drift from incremental updates
            for t in positions.tolist():
                logq = _log_q(out[:, t], qbeta)  # (B, V): q(. | s_-t)
                new = _draw(logq, generator)
                old = s[:, t]
                proposal = s.clone()
                proposal[:, t] = new
                out_new, state_new = inc.propose(proposal, state, t, old, new)
                E_new = energy_of(out_new, proposal)
                dE = E - E_new if beta is None else beta * (E - E_new)
                accept = _accept(dE + logq[rows, old] - logq[rows, new], generator)  # q(s_t|s'_-t) = q(s_t|s_-t)
                accepted = accepted + accept
                changed = changed + (accept & (new != old))
                s = torch.where(accept[:, None], proposal, s)
                merged = torch.where(accept[:, None, None], out_new, out)
                state = tuple(merged if a is out_new else torch.where(accept.view(-1, *[1] * (a.dim() - 1)), a, b)
                              for a, b in zip(state_new, state))  # a state that IS the output is merged once
                out = merged
                E = torch.where(accept, E_new, E)
        swap_rate = float("nan")
        if ladder is not None:
            s, E, perm = s.clone(), E.clone(), rows.clone()
            swap_rate = ladder.exchange(s, E, generator, perm)
            ladder.record(E, accepted, T)
        seconds = time.perf_counter() - t0
        states.append(s[:n].clone())
        energies.append(E[:n].clone())
        acc_n = int(accepted[:n].sum())
        accepted_per_sweep.append(acc_n)
        row = {"sweep": float(sweep), "acceptance_rate": acc_n / (n * T),
               "change_rate": int(changed[:n].sum()) / (n * T),
               "mean_energy": float(E[:n].mean()), "seconds": seconds,
               "tokens_per_second": B * T / max(seconds, 1e-12),
               "burn_in": float(until_stationary is None and sweep < burn_in), "swap_rate": swap_rate}
        stats.append(row)
        if on_sweep is not None:
            on_sweep(row)
        if until_stationary is not None and (sweep + 1) % until_stationary == 0:
            check = _check_window(torch.stack(energies[1:]), until_stationary, window_tau, history)
            if check["stationary"]:
                break
    done = len(stats)
    if until_stationary is not None:
        check = check or _check_window(torch.stack(energies[1:]), until_stationary, window_tau, history)
        kept_n = check["window"] if check["stationary"] else check["min_window"]  # not stationary: the last W_min
        first = max(0, done - int(kept_n))
        for r in stats[:first]:
            r["burn_in"] = 1.0
    else:
        first = burn_in
    keep = [states[k + 1] for k in range(first, done) if (k - first + 1) % thin == 0]
    kept_acc = sum(accepted_per_sweep[first:])
    stacked = torch.stack(keep) if keep else s.new_zeros((0, n, T))
    return MHResult(stacked, s[:n], tuple(stats), kept_acc / max((done - first) * n * T, 1),
                    torch.stack(energies), check, None if ladder is None else ladder.summary())
