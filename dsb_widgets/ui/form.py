"""The dashboard form's pure helpers (split out of ``app.py``): form values -> RunConfig, where a
run writes its file, and which saved results the sidebar lists. No Panel import."""

from __future__ import annotations

from pathlib import Path

from dsb_widgets.engine.task import ConfigError, RunConfig
from dsb_widgets.runs import reserve_run_path


def parse_form_options(text: str | None) -> dict[str, str]:
    """``"width=64, train_on=gauss_clone"`` -> {name: value}; the experiment's typed options schema
    (the same one the CLI and sweeps use) checks names, types and ranges in ``resolve_config``."""
    options: dict[str, str] = {}
    for item in (text or "").replace(";", ",").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"bad option {item.strip()!r}; write KEY=VALUE pairs separated by commas, e.g. width=64")
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    return options


def form_config(experiment: str, dataset: str | None, model: str | None, steps: int | None,
                seeds: int | None, probes: list[str] | None = None, options: str | None = None) -> RunConfig:
    """RunConfig from the sidebar's values; validation is left to ``resolve_config``."""
    if steps is None:
        raise ConfigError("steps is empty; enter a number of training steps, e.g. 1024")
    if seeds is None:
        raise ConfigError("seeds is empty; enter how many seeds to train together, e.g. 2")
    dataset = (dataset or "").strip() or None
    return RunConfig(experiment=experiment, dataset=dataset, model=model or None, steps=int(steps),
                     seeds=int(seeds), probes=tuple(probes) if probes else None, options=parse_form_options(options))


def run_path(runs_dir: Path, cfg: RunConfig) -> Path:
    """Where a dashboard run writes its netCDF: runs_dir/<experiment>-<dataset>-<model>-<time>[-N].nc,
    reserved atomically (:func:`dsb_widgets.runs.reserve_run_path`): unique per run."""
    return reserve_run_path(runs_dir, cfg)


def saved_files(runs_dir: Path, limit: int = 200) -> list[Path]:
    """netCDF results under ``runs_dir`` (runs and sweeps), newest first."""
    if not runs_dir.is_dir():
        return []
    files = [p for p in runs_dir.rglob("*.nc") if not p.name.startswith(".") and p.stat().st_size > 0]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
