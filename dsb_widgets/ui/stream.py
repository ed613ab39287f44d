"""Pure drain logic for the live dashboard: checkpoint rows -> per-probe stream payloads.

No Panel or Bokeh models here (numpy and Bokeh's palette tuple only), so the logic is unit-tested without a browser.

The training thread publishes one *row* per (checkpoint, probe, seed)
(``{step, wall_time, probe, order, seed, loss, accuracy, target_loss, target_accuracy}``, see
:func:`dsb_widgets.engine.loop.checkpoint_rows`). A viewer draws one curve per probe: the mean
across seeds and a band (min..max across seeds, or mean +/- one standard deviation). A band
point is only meaningful once every seed of that step has arrived, so :class:`SeedAggregator`
holds partial steps back and emits a step exactly once, when it is complete.

Colours encode interaction order (Belrose et al., ICML 2024, Fig. 1; Rende et al., NeurIPS
2024): a fixed sequential map (:func:`order_color`), light for low order, darker as the order
grows, black for real data (order ``inf``), identical across runs so saved overlays match.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from bokeh.palettes import Plasma256  # a plain tuple of colours (no models)

# Columns of each probe's ColumnDataSource. x = step + 1 so step 0 sits at x = 1 on a log axis.
COLUMNS = ("x", "step", "loss", "loss_lo", "loss_hi", "acc", "acc_lo", "acc_hi", "tacc")
BANDS = ("minmax", "std")
MARKERS = ("circle", "square", "triangle", "diamond", "inverted_triangle", "star", "hex", "plus")

REAL_COLOR = "#000000"


def _palette(t: float) -> str:
    """Sequential "plasma" colour at position t in [0, 1] (0 dark blue, 1 yellow)."""
    return Plasma256[round(min(max(t, 0.0), 1.0) * 255)]


def order_color(order: float) -> str:
    """Colour of interaction order ``order``: fixed map, so the same order is the same colour
    in every run and overlay. Order 1 -> orange (plasma 0.8), 2 -> pink, 3 -> magenta, 9 ->
    purple, 33 -> violet-blue; ``inf`` (real data) -> black; NaN (unknown) -> grey.

    Position on the palette: 0.8 - 0.75 * (1 - order**-0.7), which separates the low orders
    (1 vs 2, the images case) as well as the high ones (3/9/33-body text clones).
    """
    if math.isnan(order):
        return "#888888"
    if math.isinf(order):
        return REAL_COLOR
    t = 1.0 - max(order, 1.0) ** -0.7
    return _palette(0.8 - 0.75 * t)


@dataclass(frozen=True)
class ProbeStyle:
    """How one probe is drawn: colour by order, marker distinguishing probes of equal order."""

    probe: str
    order: float
    color: str
    marker: str
    label: str  # legend text, e.g. "maxent2 (order 2)", "real (all orders)"


def order_label(order: float) -> str:
    if math.isinf(order):
        return "all orders"
    if math.isnan(order):
        return "order ?"
    return f"order {order:g}"


def probe_styles(probes: Sequence[str], orders: Sequence[float]) -> dict[str, ProbeStyle]:
    """One style per probe; probes sharing an order get successive markers (in probe order)."""
    if len(probes) != len(orders):
        raise ValueError(f"{len(probes)} probes but {len(orders)} orders; pass one order per probe")
    seen: dict[float, int] = {}
    out = {}
    for name, order in zip(probes, orders):
        key = float("nan") if math.isnan(order) else float(order)
        k = seen.get(key, 0) if not math.isnan(key) else 0
        seen[key] = k + 1
        out[name] = ProbeStyle(name, float(order), order_color(float(order)), MARKERS[k % len(MARKERS)],
                               f"{name} ({order_label(float(order))})")
    return out


def empty_columns() -> dict[str, np.ndarray]:
    """Initial (empty) data of a probe's ColumnDataSource."""
    return {c: np.zeros(0, dtype=np.float64) for c in COLUMNS}


def _summary(v: np.ndarray, band: str) -> tuple[float, float, float]:
    """(mean, lo, hi) of one step's per-seed values v (S,), ignoring NaN; all NaN -> NaN."""
    if np.all(np.isnan(v)):
        return math.nan, math.nan, math.nan
    m = float(np.nanmean(v))
    if band == "std":
        s = float(np.nanstd(v))
        return m, m - s, m + s
    return m, float(np.nanmin(v)), float(np.nanmax(v))


class SeedAggregator:
    """Turns rows into per-probe column payloads of *complete* steps (all seeds present).

    >>> agg = SeedAggregator(["real"], seeds=[0, 1])
    >>> agg.add([{"step": 0, "probe": "real", "seed": 0, "loss": 2.0, "accuracy": 0.1}])
    {}
    >>> p = agg.add([{"step": 0, "probe": "real", "seed": 1, "loss": 4.0, "accuracy": 0.3}])
    >>> [float(v) for v in (p["real"]["x"][0], p["real"]["loss"][0], p["real"]["loss_lo"][0])]
    [1.0, 3.0, 2.0]
    """

    def __init__(self, probes: Sequence[str], seeds: Sequence[int], band: str = "minmax") -> None:
        if band not in BANDS:
            raise ValueError(f"unknown band {band!r}; pass band='minmax' or band='std'")
        if not seeds:
            raise ValueError("no seeds; pass the run's seed list (store.meta['seeds'])")
        self.probes = list(probes)
        self.seeds = [int(s) for s in seeds]
        self.band = band
        self._pending: dict[tuple[str, int], dict[int, Mapping[str, Any]]] = {}
        self.emitted: dict[str, int] = {p: 0 for p in self.probes}  # points emitted per probe
        self.has_target: dict[str, bool] = {p: False for p in self.probes}

    def add(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
        """Take new rows; return {probe: {column: (n,) array}} for steps completed by them."""
        done: dict[str, list[int]] = {}
        for r in rows:
            probe, step = str(r["probe"]), int(r["step"])
            if probe not in self.emitted:  # a probe not announced at start: track it anyway
                self.probes.append(probe)
                self.emitted[probe], self.has_target[probe] = 0, False
            slot = self._pending.setdefault((probe, step), {})
            slot[int(r["seed"])] = r
            if len(slot) == len(self.seeds):
                done.setdefault(probe, []).append(step)
        out: dict[str, dict[str, np.ndarray]] = {}
        for probe, steps in done.items():
            cols: dict[str, list[float]] = {c: [] for c in COLUMNS}
            for step in sorted(steps):
                seed_rows = self._pending.pop((probe, step))
                self._append_step(cols, step, [seed_rows[s] for s in sorted(seed_rows)])
            self.emitted[probe] += len(steps)
            out[probe] = {c: np.asarray(v, dtype=np.float64) for c, v in cols.items()}
        return out

    def _append_step(self, cols: dict[str, list[float]], step: int, rows: list[Mapping[str, Any]]) -> None:
        def metric(name: str) -> np.ndarray:  # (S,)
            return np.asarray([float(r.get(name, math.nan)) for r in rows], dtype=np.float64)

        loss, lo, hi = _summary(metric("loss"), self.band)
        acc, alo, ahi = _summary(metric("accuracy"), self.band)
        tacc, _, _ = _summary(metric("target_accuracy"), self.band)
        if not math.isnan(tacc):
            self.has_target[str(rows[0]["probe"])] = True
        for c, v in zip(COLUMNS, (step + 1, step, loss, lo, hi, acc, alo, ahi, tacc)):
            cols[c].append(float(v))

    @property
    def pending(self) -> int:
        """Number of (probe, step) pairs still waiting for seeds."""
        return len(self._pending)


def summarize_saved(loss: np.ndarray, band: str = "minmax") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and band across seeds of a saved run's metric array (T, S) -> three (T,) arrays."""
    loss = np.asarray(loss, dtype=np.float64)
    if loss.ndim != 2:
        raise ValueError(f"expected a (step, seed) array, got shape {loss.shape}")
    rows = [_summary(loss[t], band) for t in range(loss.shape[0])]
    if not rows:
        z = np.zeros(0)
        return z, z, z
    m, lo, hi = (np.asarray(c) for c in zip(*rows))
    return m, lo, hi


def format_eta(seconds: float | None) -> str:
    """'ETA 1 min 05 s' style text; None -> 'ETA --'."""
    if seconds is None or math.isnan(seconds):
        return "ETA --"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"ETA {seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"ETA {m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"ETA {h} h {m:02d} min"


class EtaEstimator:
    """Seconds left from the *recent* step rate (a sliding window of (time, step) observations).

    The run's own average (elapsed / step) includes data loading and the step-0 probe
    evaluation, so early on it overestimates by orders of magnitude (seen: "1 h 30 min" at step
    6 of a 2-minute run). Checkpoint evaluations still slow the rate locally; the window averages
    over several of them.

    >>> e = EtaEstimator(window_s=10)
    >>> e.update(0.0, 100, 1000) is None, e.update(2.0, 300, 1000)
    (True, 7.0)
    """

    def __init__(self, window_s: float = 20.0) -> None:
        self.window_s = window_s
        self._obs: deque[tuple[float, int]] = deque()

    def update(self, t: float, step: int, total: int) -> float | None:
        """Record step ``step`` at time ``t`` (seconds); return seconds left, or None if unknown."""
        if self._obs and step < self._obs[-1][1]:
            self._obs.clear()  # a different (or resumed) run
        self._obs.append((t, step))
        while len(self._obs) > 2 and t - self._obs[1][0] >= self.window_s:
            self._obs.popleft()
        (t0, s0), (t1, s1) = self._obs[0], self._obs[-1]
        if s1 <= s0 or t1 <= t0:
            return 0.0 if step >= total else None
        return max(0.0, (total - step) * (t1 - t0) / (s1 - s0))
