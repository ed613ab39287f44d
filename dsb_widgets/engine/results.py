"""Run results as an ``xarray.Dataset``, written to netCDF after every checkpoint.

Layout: dims (``step``, ``probe``, ``seed``); data variables ``loss``, ``accuracy``,
``target_loss``, ``target_accuracy`` (NaN where a probe has no target) and ``train_loss``
(step, seed); coordinates ``step``, ``wall_time`` (seconds since the run started, on step),
``probe_order`` and ``floor`` (on probe); the full config as JSON in ``attrs["config"]``.
The file is rewritten atomically (temp file + rename) with ``engine="scipy"`` (netCDF3, no extra
package), so a killed run keeps every finished checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xarray as xr

METRICS = ("loss", "accuracy", "target_loss", "target_accuracy")
NETCDF_ENGINE = "scipy"


@dataclass
class ResultsTable:
    """Append-only checkpoint rows for one run, convertible to the Dataset at any time."""

    probes: list[str]
    orders: list[float]
    seeds: list[int]
    attrs: dict[str, Any] = field(default_factory=dict)
    floors: list[float] | None = None
    steps: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    values: dict[str, list[np.ndarray]] = field(default_factory=lambda: {m: [] for m in METRICS})
    train_loss: list[np.ndarray] = field(default_factory=list)

    def add(self, step: int, wall_time: float, metrics: Mapping[str, np.ndarray],
            train_loss: np.ndarray) -> None:
        """metrics[m]: (n_probe, n_seed) array for each of METRICS; train_loss: (n_seed,)."""
        self.steps.append(int(step))
        self.wall.append(float(wall_time))
        for m in METRICS:
            self.values[m].append(np.asarray(metrics[m], dtype=np.float64))
        self.train_loss.append(np.asarray(train_loss, dtype=np.float64))

    def truncate(self, last_step: int) -> None:
        """Drop rows after ``last_step`` (used on resume: they are recomputed identically)."""
        keep = sum(1 for s in self.steps if s <= last_step)
        self.steps, self.wall = self.steps[:keep], self.wall[:keep]
        for m in METRICS:
            self.values[m] = self.values[m][:keep]
        self.train_loss = self.train_loss[:keep]

    def to_dataset(self) -> xr.Dataset:
        n_p, n_s = len(self.probes), len(self.seeds)
        data = {}
        for m in METRICS:
            arr = np.stack(self.values[m]) if self.steps else np.zeros((0, n_p, n_s))
            data[m] = (("step", "probe", "seed"), arr)
        tl = np.stack(self.train_loss) if self.steps else np.zeros((0, n_s))
        data["train_loss"] = (("step", "seed"), tl)
        floors = self.floors if self.floors is not None else [np.nan] * n_p
        ds = xr.Dataset(
            data,
            coords={
                "step": np.asarray(self.steps, dtype=np.int64),
                "probe": np.asarray(self.probes, dtype=str),
                "seed": np.asarray(self.seeds, dtype=np.int64),
                "wall_time": ("step", np.asarray(self.wall, dtype=np.float64)),
                "probe_order": ("probe", np.asarray(self.orders, dtype=np.float64)),
                "floor": ("probe", np.asarray(floors, dtype=np.float64)),
            },
            attrs=dict(self.attrs),
        )
        return ds

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> "ResultsTable":
        table = cls(
            probes=[str(p) for p in ds.probe.values],
            orders=[float(o) for o in ds.probe_order.values],
            seeds=[int(s) for s in ds.seed.values],
            attrs=dict(ds.attrs),
            floors=[float(f) for f in ds["floor"].values] if "floor" in ds.coords else None,
        )
        for i, step in enumerate(ds.step.values):
            table.add(int(step), float(ds.wall_time.values[i]),
                      {m: ds[m].values[i] for m in METRICS}, ds["train_loss"].values[i])
        return table


def write_atomic(ds: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """Write ``ds`` to ``path`` as netCDF so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    ds.to_netcdf(tmp, engine=NETCDF_ENGINE)
    os.replace(tmp, path)


def load_results(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a run's netCDF fully into memory (the file can be rewritten while we hold it)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}; run `dsb run ... --out {path}` first")
    with xr.open_dataset(path, engine=NETCDF_ENGINE) as ds:
        return ds.load()


def run_config(ds: xr.Dataset) -> dict[str, Any]:
    """The run's configuration, decoded from ``attrs['config']``."""
    return json.loads(ds.attrs.get("config", "{}"))


def summary_table(ds: xr.Dataset) -> list[dict[str, Any]]:
    """Per probe (seed-averaged): step of minimum loss, the minimum and the final loss."""
    rows = []
    mean = ds["loss"].mean("seed")
    for probe in ds.probe.values:
        curve = mean.sel(probe=probe).values
        if len(curve) == 0 or np.all(np.isnan(curve)):
            continue
        i = int(np.nanargmin(curve))
        row = {
            "probe": str(probe),
            "order": float(ds.probe_order.sel(probe=probe)),
            "min_step": int(ds.step.values[i]),
            "min_loss": float(curve[i]),
            "final_loss": float(curve[-1]),
        }
        tacc = ds["target_accuracy"].mean("seed").sel(probe=probe).values
        if not np.all(np.isnan(tacc)):
            j = int(np.nanargmax(tacc))
            row.update(max_target_acc=float(tacc[j]), max_target_acc_step=int(ds.step.values[j]),
                       final_target_acc=float(tacc[-1]))
        rows.append(row)
    return rows
