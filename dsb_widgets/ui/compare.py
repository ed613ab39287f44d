"""Comparing runs in the dashboard: saved-file labels, the compare table (one line style per
run, config differences), form values of a watched run, and the busy-port check of ``dsb serve``.

No Panel here: plain values in, plain values (text, dicts) out, unit-tested without a browser.
"""

from __future__ import annotations

import errno
import html
import json
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence


def esc(value: Any) -> str:
    """HTML-escaped text (names and values from files go into an HTML pane)."""
    return html.escape(str(value), quote=True)


DASHES = ("dashed", "dotted", "dotdash", "dashdot")  # saved run i is drawn with DASHES[i % 4]
CSS_DASH = {"solid": "solid", "dashed": "dashed", "dotted": "dotted", "dotdash": "dashed", "dashdot": "dashed"}


def port_problem(address: str, port: int) -> str | None:
    """None when ``address:port`` can be listened on, else a one-line message naming ``--port``.

    Binds every address ``address`` resolves to (localhost: IPv4 and IPv6, as Tornado does)
    with SO_REUSEADDR (so a port in TIME_WAIT is free, as for the server itself).
    """
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"cannot resolve --address {address!r} ({err.strerror}); pass e.g. --address localhost"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    return (f"port {port} on {address} is already in use (another dsb serve?); "
                            f"pass a free one with --port, e.g. --port {port + 1}")
                if err.errno == errno.EADDRNOTAVAIL:
                    continue  # e.g. no IPv6 here: Tornado skips it too
                return f"cannot listen on {address}:{port} ({err.strerror}); pass another --port or --address"
    return None


def run_form_values(cfg: Any) -> dict[str, Any]:
    """The dashboard form's values for a RunConfig (what a watched run was started with)."""
    return {"experiment": cfg.experiment, "dataset": str(cfg.dataset or ""), "model": cfg.model,
            "steps": int(cfg.steps), "seeds": int(cfg.seeds), "probes": list(cfg.probes or [])}


def sweep_runs(sweep_file: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """(sweep name, {run key: grid coords}) from a merged ``sweep.nc``'s attributes."""
    import xarray as xr

    from dsb_widgets.engine.results import NETCDF_ENGINE

    with xr.open_dataset(sweep_file, engine=NETCDF_ENGINE) as ds:
        attrs = dict(ds.attrs)
    name = str(json.loads(attrs.get("sweep", "{}")).get("name") or sweep_file.parent.name)
    runs = {k: dict(v.get("coords", {})) for k, v in json.loads(attrs.get("runs", "{}")).items()}
    return name, runs


def file_labels(runs_dir: Path, files: Sequence[Path]) -> dict[str, str]:
    """{label: path} for the saved-runs list: a sweep as "<name> (sweep, N runs)", its member runs
    as "<name>: lr=0.01, model=cnn" instead of their config hashes; other files by relative path."""
    labels: dict[str, str] = {}
    named: dict[Path, str] = {}
    for f in files:
        if f.name != "sweep.nc":
            continue
        try:
            name, runs = sweep_runs(f)
        except Exception:  # noqa: BLE001 - unreadable: listed by path; Open reports the problem
            continue
        if not runs:
            continue  # not written by dsb sweep (no run table): listed by path
        named[f] = f"{name} (sweep, {len(runs)} runs)"
        for key, coords in runs.items():
            grid = ", ".join(f"{k}={v}" for k, v in coords.items()) or key
            named[f.parent / "runs" / f"{key}.nc"] = f"{name}: {grid}"
    for f in files:
        try:
            rel = str(f.relative_to(runs_dir))
        except ValueError:
            rel = str(f)
        label = named.get(f, rel)
        if label in labels:
            label = f"{label} [{rel}]"
        labels[label] = str(f)
    return labels


def config_of(ds: Any) -> dict[str, Any]:
    """A saved run's config dict (``attrs['config']``), flattened one level (options.x)."""
    try:
        cfg = json.loads(ds.attrs.get("config", "{}"))
    except (TypeError, ValueError):
        return {}
    flat = {k: v for k, v in cfg.items() if k != "options"}
    flat.update({f"options.{k}": v for k, v in (cfg.get("options") or {}).items()})
    return flat


def config_diff(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys whose values differ between the configs (missing counts as different), sorted."""
    keys = sorted(set().union(*[set(c) for c in configs])) if configs else []
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def compare_html(rows: Sequence[tuple[str, str, Mapping[str, Any]]]) -> str:
    """HTML table: one row per run (label, line style sample, differing config values).

    ``rows``: (label, line style ("solid" for the live run, a :data:`DASHES` entry for saved
    ones), flat config). Everything from files is escaped.
    """
    if len(rows) < 2:
        return ""
    diff = config_diff([cfg for _, _, cfg in rows])
    head = "".join(f"<th style='padding:0 8px'>{esc(k)}</th>" for k in diff) or "<th>(same config)</th>"
    body = []
    for label, dash, cfg in rows:
        css = CSS_DASH.get(dash, "solid")
        sample = f"<span style='display:inline-block;width:36px;border-top:3px {css} #444'></span>"
        cells = "".join(f"<td style='padding:0 8px'>{esc(json.dumps(cfg.get(k), default=str))}</td>" for k in diff)
        body.append(f"<tr><td>{sample} {esc(dash)}</td><td style='padding:0 8px'><b>{esc(label)}</b></td>{cells}</tr>")
    return ("<b>Compare</b> (line style = run; colour = probe, as everywhere)<table style='font-size:0.9em'>"
            f"<tr><th>line</th><th>run</th>{head}</tr>{''.join(body)}</table>")
