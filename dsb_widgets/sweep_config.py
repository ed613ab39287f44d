"""Sweep configuration: a base :class:`RunConfig` plus a grid, expanded into keyed runs.

A sweep file (YAML) has three parts::

    out_dir: sweeps/digits          # runs/<key>.nc, sweep.nc, failures.json go here
    base:                           # RunConfig fields shared by every run
      experiment: images
      dataset: digits
      steps: 256
      options: {width: 128}
    grid:                           # field -> list of values; the runs are the cartesian product
      model: [mlp, cnn]
      lr: [0.001, 0.003]
      seed: [0, 1, 2]
      options.train_on: [real, gauss_clone]
    retries: 2                      # optional: Dask retries of a failed / lost run (default 2)
    n_workers: 2                    # optional: workers of the embedded LocalCluster
    scheduler: tcp://host:8786      # optional: an existing Dask scheduler (else a LocalCluster)

Every grid key is a RunConfig field or ``options.<name>`` (an experiment option). Each run is
named by a hash of its *resolved* config (defaults filled in), so the same run has the same file
on every machine and a rerun finds its earlier work. ``seed`` is special: it is not an extra
dimension of the merged result but selects positions on the runs' own ``seed`` axis (a run with
``seed: s, seeds: S`` trains seeds s..s+S-1 together), so the grid's seed ranges must not overlap.
The other grid keys become dimensions named by :meth:`SweepConfig.dims` (``options.train_on`` ->
``train_on`` unless that name is taken).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dsb_widgets.engine.task import ConfigError, RunConfig, resolve_config

RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != "options")
TOP_KEYS = ("base", "grid", "out_dir", "scheduler", "n_workers", "retries", "name")
RESERVED_DIMS = ("step", "probe", "seed")
KEY_CHARS = 12  # hex digits of the config hash in a run's name


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep: base RunConfig fields, the grid (key -> values, in order) and where to write."""

    base: Mapping[str, Any]
    grid: Mapping[str, tuple[Any, ...]]
    out_dir: Path
    name: str = "sweep"
    scheduler: str | None = None
    n_workers: int | None = None
    retries: int = 2

    @property
    def axes(self) -> tuple[str, ...]:
        """Grid keys that become extra dimensions of the merged result: all except ``seed``."""
        return tuple(k for k in self.grid if k != "seed")

    @property
    def dims(self) -> dict[str, str]:
        """Grid key -> dimension name in the merged result (``options.`` dropped when unambiguous)."""
        short = [k[len("options."):] if k.startswith("options.") else k for k in self.axes]
        return {k: (s if short.count(s) == 1 and s not in RESERVED_DIMS else k)
                for k, s in zip(self.axes, short)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "out_dir": str(self.out_dir), "base": dict(self.base),
                "grid": {k: list(v) for k, v in self.grid.items()}, "retries": self.retries}


@dataclass(frozen=True)
class SweepRun:
    """One cell of the grid: its coordinates, resolved config and deterministic key."""

    coords: Mapping[str, Any]  # grid key -> value (seed included when it is a grid key)
    config: RunConfig  # resolved
    key: str

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.coords.items())


def _check_grid_key(key: str) -> None:
    if key == "options" or (key not in RUN_FIELDS and not (key.startswith("options.") and len(key) > 8)):
        raise ConfigError(f"unknown grid key {key!r}; use a RunConfig field ({', '.join(RUN_FIELDS)}) "
                          "or options.<name>")


def _check_base(base: Mapping[str, Any]) -> None:
    for key in base:
        if key not in RUN_FIELDS and key != "options":
            raise ConfigError(f"unknown base field {key!r}; use RunConfig fields: {', '.join(RUN_FIELDS)}, options")
    if not isinstance(base.get("options", {}), Mapping):
        raise ConfigError("base.options must be a mapping, e.g. options: {train_on: real}")


def parse_sweep(spec: Mapping[str, Any], out_dir: str | Path | None = None) -> SweepConfig:
    """Validate a sweep mapping (as loaded from YAML); raises ConfigError naming the fix."""
    if not isinstance(spec, Mapping):
        raise ConfigError("a sweep file must be a mapping with keys base:, grid:, out_dir:")
    unknown = set(spec) - set(TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep key(s) {sorted(unknown)}; use {', '.join(TOP_KEYS)}")
    base = dict(spec.get("base") or {})
    _check_base(base)
    grid_in = spec.get("grid") or {}
    if not isinstance(grid_in, Mapping) or not grid_in:
        raise ConfigError("grid: must map fields to lists of values, e.g. grid: {model: [mlp, cnn]}")
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in grid_in.items():
        _check_grid_key(str(key))
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list, e.g. {key}: [{values!r}]")
        if len({repr(v) for v in values}) != len(values):
            raise ConfigError(f"grid.{key} lists a value twice ({list(values)}); remove the duplicate")
        if key in base or (str(key).startswith("options.") and key[8:] in base.get("options", {})):
            raise ConfigError(f"{key} is set in both base: and grid:; keep it in one place")
        grid[str(key)] = tuple(values)
    where = out_dir if out_dir is not None else spec.get("out_dir")
    if where is None:
        raise ConfigError("no output folder; set out_dir: in the sweep file or pass --out-dir")
    n_workers = spec.get("n_workers")
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        raise ConfigError(f"n_workers must be a positive integer (got {n_workers!r})")
    retries = spec.get("retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"retries must be an integer >= 0 (got {retries!r})")
    scheduler = spec.get("scheduler")
    if scheduler is not None and not isinstance(scheduler, str):
        raise ConfigError(f"scheduler must be an address such as tcp://host:8786 (got {scheduler!r})")
    return SweepConfig(base=base, grid=grid, out_dir=Path(where), name=str(spec.get("name", "sweep")),
                       scheduler=scheduler, n_workers=n_workers, retries=retries)


def load_sweep(source: str | Path | Mapping[str, Any] | SweepConfig,
               out_dir: str | Path | None = None) -> SweepConfig:
    """A SweepConfig from a YAML path, a mapping or an existing SweepConfig."""
    if isinstance(source, SweepConfig):
        return dataclasses.replace(source, out_dir=Path(out_dir)) if out_dir is not None else source
    if isinstance(source, (str, Path)):
        import yaml

        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no sweep file at {path}; see examples/sweep_digits.yaml")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{path}:{where} is not valid YAML ({problem}); fix the sweep file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read sweep file {path} ({err}); pass a readable YAML file") from None
        sweep = parse_sweep(spec, out_dir)
        if "name" not in (spec or {}):
            sweep = dataclasses.replace(sweep, name=path.stem)
        return sweep
    return parse_sweep(source, out_dir)


def run_key(cfg: RunConfig) -> str:
    """Deterministic name of a resolved run: readable prefix + SHA-256 of its config JSON."""
    digest = hashlib.sha256(cfg.to_json().encode()).hexdigest()[:KEY_CHARS]
    prefix = "-".join(str(x) for x in (cfg.experiment, Path(str(cfg.dataset)).stem, cfg.model))
    return f"{re.sub(r'[^A-Za-z0-9_.]+', '_', prefix)}-{digest}"


def _cell_config(base: Mapping[str, Any], coords: Mapping[str, Any]) -> RunConfig:
    fields = {k: v for k, v in base.items() if k != "options"}
    options = dict(base.get("options") or {})
    for key, value in coords.items():
        if key.startswith("options."):
            options[key[len("options."):]] = value
        else:
            fields[key] = value
    if isinstance(fields.get("probes"), list):
        fields["probes"] = tuple(fields["probes"])  # a bare string is refused by resolve_config
    try:
        return RunConfig(**fields, options=options)
    except TypeError as err:
        raise ConfigError(f"bad run fields {sorted(fields)}: {err}") from err


def expand(sweep: SweepConfig) -> list[SweepRun]:
    """All runs of the grid, in grid order, resolved and checked (ConfigError names the cell)."""
    keys = list(sweep.grid)
    runs: list[SweepRun] = []
    seen: dict[str, str] = {}
    for values in itertools.product(*(sweep.grid[k] for k in keys)):
        coords = dict(zip(keys, values))
        label = " ".join(f"{k}={v}" for k, v in coords.items())
        try:
            cfg = resolve_config(_cell_config(sweep.base, coords))
        except ConfigError as err:
            raise ConfigError(f"sweep cell {label}: {err}") from err
        key = run_key(cfg)
        if key in seen:
            raise ConfigError(f"cells {seen[key]} and {label} give the same run; remove one grid value")
        seen[key] = label
        runs.append(SweepRun(coords=coords, config=cfg, key=key))
    _check_seed_overlap(sweep, runs)
    return runs


def _check_seed_overlap(sweep: SweepConfig, runs: list[SweepRun]) -> None:
    """Runs of one cell must own disjoint seed values (they share the merged ``seed`` axis)."""
    owners: dict[tuple[Any, ...], str] = {}
    for run in runs:
        cell = tuple(repr(run.coords[a]) for a in sweep.axes)
        for s in range(run.config.seed, run.config.seed + run.config.seeds):
            if (cell, s) in owners and owners[(cell, s)] != run.key:
                raise ConfigError(f"seed {s} is trained by two runs of cell {run.label()}; with seeds: "
                                  f"{run.config.seeds} space grid seeds by {run.config.seeds} or use seeds: 1")
            owners[(cell, s)] = run.key
