"""Pure drain logic for the live dashboard: checkpoint rows -> per-probe stream payloads.

No Panel or Bokeh here (numpy only), so the logic is unit-tested without a browser.

The training thread publishes one *row* per (checkpoint, probe, seed)
(``{step, wall_time, probe, order, seed, loss, accuracy, target_loss, target_accuracy}``, see
:func:`dsb_widgets.engine.loop.checkpoint_rows`). A viewer draws one curve per probe: the mean
across seeds and a band (min..max across seeds, or mean +/- one standard deviation). A band
point is only meaningful once every seed of that step has arrived, so :class:`SeedAggregator`
holds partial steps back and emits a step exactly once, when it is complete.

Colours encode interaction order (Belrose et al., ICML 2024, Fig. 1; Rende et al., NeurIPS
2024) through the one colour map of every view, :mod:`dsb_widgets.ui.colors`: a hue family per
order, distinct hues within an order, black for real data, identical across runs and notebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dsb_widgets.ui.colors import REAL_COLOR, order_color, probe_colors  # noqa: F401  (re-exported)

# Columns of each probe's ColumnDataSource. x = step + 1 so step 0 sits at x = 1 on a log axis;
# tacc/tloss: accuracy and loss on the *target* label of edited probes (OT/CQN), NaN otherwise.
COLUMNS = ("x", "step", "loss", "loss_lo", "loss_hi", "acc", "acc_lo", "acc_hi", "tacc", "tacc_lo", "tacc_hi",
           "tloss")
SMOOTHED = ("loss", "loss_lo", "loss_hi", "acc", "acc_lo", "acc_hi", "tacc", "tacc_lo", "tacc_hi", "tloss")
BANDS = ("minmax", "std")
MARKERS = ("circle", "square", "triangle", "diamond", "inverted_triangle", "star", "hex", "plus")


@dataclass(frozen=True)
class ProbeStyle:
    """How one probe is drawn: colour by order, marker distinguishing probes of equal order."""

    probe: str
    order: float
    color: str
    marker: str
    label: str  # legend text, e.g. "maxent2 (order 2)", "real (all orders)"
    dash: str = "solid"  # "dashed" for measurements (predictions, not data sets)


def order_label(order: float) -> str:
    if math.isinf(order):
        return "all orders"
    if math.isnan(order):
        return "order ?"
    return f"order {order:g}"


def probe_styles(probes: Sequence[str], orders: Sequence[float]) -> dict[str, ProbeStyle]:
    """One style per probe: colour from :func:`dsb_widgets.ui.colors.probe_colors` (order family,
    distinct hue within it); probes sharing an order also get successive markers."""
    if len(probes) != len(orders):
        raise ValueError(f"{len(probes)} probes but {len(orders)} orders; pass one order per probe")
    colors = probe_colors(list(probes), [float(o) for o in orders])
    seen: dict[float, int] = {}
    out = {}
    for name, order in zip(probes, orders):
        key = float("nan") if math.isnan(order) else float(order)
        k = seen.get(key, 0) if not math.isnan(key) else 0
        seen[key] = k + 1
        out[name] = ProbeStyle(name, float(order), colors[name], MARKERS[k % len(MARKERS)],
                               f"{name} ({order_label(float(order))})",
                               "dashed" if name.startswith("taylor") else "solid")
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
        tacc, tlo, thi = _summary(metric("target_accuracy"), self.band)
        tloss, _, _ = _summary(metric("target_loss"), self.band)
        if not math.isnan(tacc):
            self.has_target[str(rows[0]["probe"])] = True
        for c, v in zip(COLUMNS, (step + 1, step, loss, lo, hi, acc, alo, ahi, tacc, tlo, thi, tloss)):
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
    """'ETA 1 min 05 s' style text; None -> 'ETA estimating...'."""
    if seconds is None or math.isnan(seconds):
        return "ETA estimating..."
    return f"ETA {format_duration(seconds)}"


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class EtaEstimator:
    """Seconds left from the known checkpoint schedule and the measured rates.

    A run's time is ``a`` seconds per training step plus ``b`` seconds per probe evaluation, and
    the evaluations are front-loaded (log-spaced checkpoints: 2^k steps apart), so a plain
    steps-per-second extrapolation early in a run overestimates by 5-10x (seen: "18 min" for a
    run that took 207 s). ``a`` is measured on the intervals between observations that contain
    no checkpoint, ``b`` on those that do (their time minus ``a`` per step); the estimate is
    ``a * steps_left + b * checkpoints_left``. Observations are the run's own clock
    (``(elapsed, step)`` from its progress events), not the viewer's. None ("estimating...")
    until ``min_train_s`` seconds of checkpoint-free training have been seen.

    >>> e = EtaEstimator(checkpoints=[0, 1, 2, 4, 8], min_train_s=0.5)
    >>> e.update(0.0, 0, 8) is None, e.update(2.0, 2, 8) is None  # 2 s for 2 steps + 2 evaluations
    (True, True)
    >>> e.update(3.0, 3, 8)  # 1 s per step, no evaluation: a = 1, b = (2 - 2 * 1) / 2 = 0
    5.0
    """

    def __init__(self, checkpoints: Sequence[int] = (), min_train_s: float = 2.0) -> None:
        self.checkpoints = np.asarray(sorted(set(int(c) for c in checkpoints)), dtype=np.int64)
        self.min_train_s = min_train_s
        self._last: tuple[float, int] | None = None
        self._plain = [0.0, 0]  # seconds, steps over checkpoint-free intervals
        self._mixed = [0.0, 0, 0]  # seconds, steps, checkpoints over the others

    def _ckpts(self, lo: int, hi: int) -> int:
        """Checkpoints c with lo < c <= hi."""
        c = self.checkpoints
        return int(np.searchsorted(c, hi, side="right") - np.searchsorted(c, lo, side="right"))

    def update(self, t: float, step: int, total: int) -> float | None:
        """Record the run at ``step`` after ``t`` seconds of its clock; seconds left or None."""
        if self._last is not None and (step < self._last[1] or t < self._last[0]):
            self.__init__(self.checkpoints, self.min_train_s)  # type: ignore[misc]  # another run
        if step >= total:
            return 0.0
        if self._last is not None and step > self._last[1] and t > self._last[0]:
            t0, s0 = self._last
            n = self._ckpts(s0, step)
            if n == 0:
                self._plain[0] += t - t0
                self._plain[1] += step - s0
            else:
                self._mixed[0] += t - t0
                self._mixed[1] += step - s0
                self._mixed[2] += n
        if self._last is None or step != self._last[1]:
            self._last = (t, step)
        if self._plain[0] < self.min_train_s or self._plain[1] == 0:
            return None
        a = self._plain[0] / self._plain[1]
        b = max(0.0, (self._mixed[0] - a * self._mixed[1]) / self._mixed[2]) if self._mixed[2] else 0.0
        left = self._ckpts(step, total) if len(self.checkpoints) else 0
        return a * (total - step) + b * left


class Smoother:
    """Exponential moving average of the plotted columns, per probe, debiased like TensorBoard's:
    s_t = w s_(t-1) + (1 - w) x_t, shown as s_t / (1 - w^t). ``weight`` 0 = raw values.
    Applied to streamed payloads incrementally (one state per probe and column)."""

    def __init__(self, weight: float = 0.0) -> None:
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
        self.weight = weight
        self._state: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, probe: str, cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {c: np.array(v, dtype=np.float64) for c, v in cols.items()}
        if self.weight == 0.0:
            return out
        w = self.weight
        for c in SMOOTHED:
            if c not in out:
                continue
            ema, n = self._state.get((probe, c), (0.0, 0))
            v = out[c]
            for i in range(len(v)):
                if math.isnan(v[i]):
                    continue
                ema, n = w * ema + (1 - w) * v[i], n + 1
                v[i] = ema / (1 - w ** n)
            self._state[(probe, c)] = (ema, n)
        return out
