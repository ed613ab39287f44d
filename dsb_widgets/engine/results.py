"""Run results as an ``xarray.Dataset``, written to netCDF after every checkpoint.

Layout: dims (``step``, ``probe``, ``seed``); data variables ``loss``, ``accuracy``,
``target_loss``, ``target_accuracy`` (NaN where a probe has no target) and ``train_loss``
(step, seed); coordinates ``step``, ``wall_time`` (seconds since the run started, on step),
``probe_order`` and ``floor`` (on probe); the full config as JSON in ``attrs["config"]``.
The file is netCDF-3 (``engine="scipy"``, no extra package) with ``step`` as its unlimited
(record) dimension. :class:`ResultsWriter` creates it atomically (temp file + rename) and then
*appends* each new checkpoint row in place (:mod:`dsb_widgets.engine.nc_records`: one record
plus a 4-byte header update, fsync'd), so the bytes written per checkpoint do not grow with the
run, a killed run keeps every finished checkpoint, and a reader opening the file mid-run
(``xarray.open_dataset``, the dashboard, ``dsb sweep --list``) sees a valid file with every row
written so far. Before, the whole file was rewritten at every checkpoint (a 1.32x engine
overhead on a 1,024-step digits run, issue 17).
"""

from __future__ import annotations

import glob
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import xarray as xr

from dsb_widgets.engine.nc_records import LayoutMismatch, RecordFile
from dsb_widgets.errors import ConfigError, DSBError, OutputWriteError, ResultExistsError

METRICS = ("loss", "accuracy", "target_loss", "target_accuracy")
NETCDF_ENGINE: Literal["scipy"] = "scipy"


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

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as netCDF record variables (what :class:`ResultsWriter` appends)."""
        return {"step": self.steps[i], "wall_time": self.wall[i], "train_loss": self.train_loss[i],
                **{m: self.values[m][i] for m in METRICS}}

    def to_dataset(self) -> xr.Dataset:
        n_p, n_s = len(self.probes), len(self.seeds)
        data: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
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


def temp_path(path: Path) -> Path:
    """A private temp name beside ``path``: ``.<name>.<pid>.<random>.tmp`` (unique per writer and
    call, so two threads or processes never share one; the pid lets :func:`clean_stale_temp_files`
    tell a dead writer's leftovers from a live one's)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def replace_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: readers see the old file or the new one, never half.

    A failed write (disk full, permissions) removes its temp file and raises a one-line
    :class:`~dsb_widgets.errors.OutputWriteError`; the file already at ``path`` is untouched.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        if isinstance(err, DSBError) or (isinstance(err, RuntimeError) and "write" not in str(err).lower()):
            raise
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise OutputWriteError(f"could not write {path}: {reason}; free disk space or pass --out on another "
                               "disk (what was written there before is kept)") from err


def write_atomic(ds: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """Write ``ds`` to ``path`` as netCDF so readers never see a half-written file (``step``, when
    present, is the unlimited dimension, so rows can be appended later)."""
    unlimited = ["step"] if "step" in ds.dims else None
    replace_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine=NETCDF_ENGINE, unlimited_dims=unlimited))


class ResultsWriter:
    """Keeps a run's results file equal to its :class:`ResultsTable`, appending new rows in place.

    The first :meth:`write` (a fresh run, or a resumed one whose table was truncated) rewrites
    the file atomically; later ones append the rows added since, and fall back to a rewrite when
    the file is not what this writer left (another layout, another row count). ``last_bytes``:
    the bytes the last write put on disk; ``rewrites``: how many full rewrites were made.
    """

    def __init__(self, path: str | os.PathLike[str], sync: bool = True) -> None:
        self.path, self.sync = Path(path), sync
        self.records = RecordFile(self.path)  # header parsed once per file, numrecs read per append
        self.on_disk: int | None = None  # rows this writer knows the file holds
        self.last_bytes = 0
        self.rewrites = 0

    def write(self, table: ResultsTable) -> None:
        n = len(table.steps)
        if self.on_disk is not None and self.on_disk <= n:
            try:
                self.last_bytes = self.records.append([table.row(i) for i in range(self.on_disk, n)],
                                                      expect=self.on_disk, sync=self.sync)
                self.on_disk = n
                return
            except LayoutMismatch:
                pass  # not the file we left: rewrite it whole (below)
            except OSError as err:
                raise OutputWriteError(f"could not write {self.path}: {err.strerror or err}; free disk space or "
                                       "pass --out on another disk (the rows written before are kept)") from err
        write_atomic(table.to_dataset(), self.path)
        self.last_bytes = self.path.stat().st_size
        self.rewrites += 1
        self.on_disk = n


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files of ``path`` and its sidecars (``.probes.pt``, ``.state.pt``) left by dead
    writers (a run killed mid-write); a live writer's are kept. Returns the removed paths."""
    path = Path(path)
    names = (path.name, f"{path.stem}.probes.pt", f"{path.stem}.state.pt")
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for name in names:
        for tmp in path.parent.glob(f".{glob.escape(name)}.*.tmp"):
            pid = tmp.name[len(name) + 2:-len(".tmp")].split(".")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    legacy = path.with_name(f"{path.stem}.state.pt.tmp")  # written by versions before per-writer names
    if legacy.is_file():
        legacy.unlink()
        removed.append(legacy)
    return removed


def has_result(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds something a new run would destroy (a non-empty file)."""
    path = Path(path)
    return path.is_file() and path.stat().st_size > 0


def check_out_path(out: str | os.PathLike[str], resume: bool = False, force: bool = False) -> Path:
    """Validate a run's ``--out`` before any data loads (one-line errors naming the fix).

    Refuses a directory, a name not ending in ``.nc``, a parent that is a file or not writable,
    and (unless ``resume`` or ``force``) an existing result: never clobber. Stale temp files of
    dead writers of this output are removed.
    """
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; pass a results file name such as --out {path / 'run.nc'}")
    if path.suffix != ".nc":
        raise ConfigError(f"--out {path} must end in .nc (netCDF results); pass e.g. --out {path.with_suffix('.nc')}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--out {path}: {ancestor} is a file, not a folder; pass --out in a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path}: cannot write in {ancestor}; pass --out in a writable folder")
    clean_stale_temp_files(path)
    if has_result(path) and not (resume or force):
        raise ResultExistsError(f"{path} already holds results; pass --resume to continue that run, --force to "
                                "overwrite it, or another --out")
    return path


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


def probe_kinds(ds: xr.Dataset) -> dict[str, str]:
    """{probe: "dsb" | "edit" | "measure"}: the ``probe_kind`` coordinate when present, else
    "edit" for probes with any finite ``target_accuracy`` (OT/CQN edits: the claim is about the
    target label), "measure" for Taylor predictions, "divergence" for KL/JS to n-gram predictors
    (``kl_*``, ``js_*``), "dsb" for the rest (real, max-ent, clones, n-grams)."""
    probes = [str(p) for p in ds["probe"].values]
    if "probe_kind" in ds.coords:
        return {p: str(k) for p, k in zip(probes, ds["probe_kind"].values)}
    out = {}
    for i, p in enumerate(probes):
        has_target = "target_accuracy" in ds and bool(np.isfinite(ds["target_accuracy"].isel(probe=i).values).any())
        out[p] = ("edit" if has_target else "measure" if p.startswith("taylor")
                  else "divergence" if p.startswith(("kl_", "js_")) else "dsb")
    return out


def summary_table(ds: xr.Dataset, seed: int | None = None) -> list[dict[str, Any]]:
    """Per probe (seed-averaged, or one ``seed``): step of minimum loss, the minimum and the final
    loss, its ``kind`` and ``floor``; edit probes add the target-label accuracy (max @ step ->
    final) and target-label loss (min @ step -> final)."""
    rows = []
    sel = (lambda v: v.mean("seed")) if seed is None else (lambda v: v.sel(seed=seed))
    mean = sel(ds["loss"])
    kinds = probe_kinds(ds)
    floors = ds["floor"].values if "floor" in ds.coords else np.full(ds.sizes["probe"], np.nan)
    for k, probe in enumerate(ds.probe.values):
        curve = mean.sel(probe=probe).values
        if len(curve) == 0 or np.all(np.isnan(curve)):
            continue
        i = int(np.nanargmin(curve))
        row = {
            "probe": str(probe),
            "order": float(ds.probe_order.sel(probe=probe)),
            "kind": kinds[str(probe)],
            "floor": float(np.ravel(floors)[k]),
            "min_step": int(ds.step.values[i]),
            "min_loss": float(curve[i]),
            "final_loss": float(curve[-1]),
        }
        tacc = sel(ds["target_accuracy"]).sel(probe=probe).values
        if not np.all(np.isnan(tacc)):
            j = int(np.nanargmax(tacc))
            row.update(max_target_acc=float(tacc[j]), max_target_acc_step=int(ds.step.values[j]),
                       final_target_acc=float(tacc[-1]))
            tl = sel(ds["target_loss"]).sel(probe=probe).values
            if not np.all(np.isnan(tl)):
                j = int(np.nanargmin(tl))
                row.update(min_target_loss=float(tl[j]), min_target_loss_step=int(ds.step.values[j]),
                           final_target_loss=float(tl[-1]))
        rows.append(row)
    return rows


def format_summary(ds: xr.Dataset, per_seed: bool = False) -> str:
    """The CLI's summary, split by probe family: DSB probes (loss, floors), edit probes
    (target-label accuracy and loss), measurements; ``per_seed`` adds one row per seed."""
    seeds: list[int | None] = [None] + ([int(s) for s in ds.seed.values] if per_seed else [])
    tables: dict[str, list[str]] = {"dsb": [], "edit": [], "measure": [], "divergence": []}
    for seed in seeds:
        for r in summary_table(ds, seed):
            name = r["probe"] if seed is None else f"{r['probe']}[s{seed}]"
            order = "real" if r["order"] == float("inf") else f"{r['order']:g}"
            if r["kind"] == "edit":
                acc = f"{r['max_target_acc']:.3f} @ {r['max_target_acc_step']} -> {r['final_target_acc']:.3f}"
                tl = (f"{r['min_target_loss']:.3f} @ {r['min_target_loss_step']} -> {r['final_target_loss']:.3f}"
                      if "min_target_loss" in r else "-")
                line = f"{name:<16}{order:>6}   {acc:<28}{tl}"
            else:
                floor = f"{r['floor']:.4f}" if np.isfinite(r["floor"]) else "-"
                line = (f"{name:<16}{order:>6}{r['min_step']:>10}{r['min_loss']:>10.4f}{r['final_loss']:>10.4f}"
                        f"{floor:>10}{r['final_loss'] - r['min_loss']:>+10.4f}")
            tables[r["kind"]].append(line)
    out = []
    head = f"{'probe':<16}{'order':>6}{'min step':>10}{'min loss':>10}{'final':>10}"
    if tables["dsb"]:
        units = "mean squared error" if str(ds.attrs.get("units", "")) == "mse" else "nats"
        out += [f"DSB probes: loss ({units}, seed mean); a rise from the minimum = the network uses "
                "higher-order statistics", head + f"{'floor':>10}{'rise':>10}", *tables["dsb"], ""]
    if tables["edit"]:
        out += ["Edit probes: an image of class a moved onto class b's statistics; the claim is about "
                "the TARGET label b (its loss on the source label a rises when the edit works)",
                f"{'probe':<16}{'order':>6}   {'target acc: max @ step -> final':<28}target loss: min @ step -> final",
                *tables["edit"], ""]
    if tables["measure"]:
        out += ["Measurements (predictions, not data sets)", head + f"{'floor':>10}{'rise':>10}",
                *tables["measure"], ""]
    if tables["divergence"]:
        out += ["Divergences from n-gram predictors on real text (nats/token; 'loss' columns hold the divergence)",
                head + f"{'floor':>10}{'rise':>10}", *tables["divergence"], ""]
    return "\n".join(out).rstrip("\n")
