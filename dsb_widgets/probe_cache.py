"""Disk cache of expensive probe ingredients: class statistics and built probe sets.

Building the image probes is the slow part of a short run: per-class covariances (CIFAR-10:
50,000 x 3072 images -> 10 covariances of 3072^2, ~40 CPU-s), Gaussian-OT maps (one eigh per
class and per class pair) and samplers. Their inputs are fixed by the data, the probe's options
and the run seed, so they are computed once and stored under ``cache_dir()/probes``:

* ``class_stats``: counts, means and centred scatter of the training split, keyed by the data's
  content hash (float64: 49 MB for Fashion-MNIST, 755 MB for CIFAR-10, which saves ~40 CPU-s);
* one file per probe set (``real``, ``maxent2``, ``ot``, ...), keyed by the content hashes of
  the train and test splits, the probe name, size, seed, the options that change that probe and
  ``CACHE_VERSION`` (bump it when a sampler changes).

Keys are SHA-256 hashes of a canonical JSON document (the *provenance*), which is stored in the
file next to the tensors and checked on load, so a file can always say where it came from. Files
are written atomically with ``torch.save`` and read with ``torch.load(weights_only=True)``; an
unreadable or mismatching file is rebuilt with a warning, never fatal. ``DSB_PROBE_CACHE=0``
turns the cache off.

Content hashes use BLAKE2b over the raw float32 bytes (about 1 GB/s: 0.6 s for CIFAR-10 train),
so a changed decoder or data file gives a new key even when names and shapes are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from dsb_widgets.data.common import cache_dir

CACHE_VERSION = 1
"""Part of every key: bump when a probe builder changes what it produces."""
CACHE_ENV = "DSB_PROBE_CACHE"

Tensors = dict[str, Tensor]


def enabled() -> bool:
    """False when ``$DSB_PROBE_CACHE`` is 0/false/off."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def tensor_hash(*tensors: Tensor) -> str:
    """BLAKE2b-128 of the tensors' dtypes, shapes and bytes (contiguous CPU copies)."""
    digest = hashlib.blake2b(digest_size=16)
    for t in tensors:
        c = t.detach().cpu().contiguous()
        digest.update(f"{c.dtype}|{tuple(c.shape)}|".encode())
        digest.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN
        return "nan"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def provenance_key(provenance: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 32 chars) of the canonical JSON of ``provenance``."""
    text = json.dumps(_canonical({**provenance, "cache_version": CACHE_VERSION}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CacheStats:
    """Hits, misses and seconds spent building (misses) or loading (hits), per kind."""

    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def record(self, kind: str, hit: bool, seconds: float) -> None:
        book = self.hits if hit else self.misses
        book[kind] = book.get(kind, 0) + 1
        label = f"{kind}:{'hit' if hit else 'miss'}"
        self.seconds[label] = self.seconds.get(label, 0.0) + seconds


STATS = CacheStats()
"""Process-wide counters (the engine reports them in the run's info)."""


def cache_path(kind: str, key: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "probes" / f"{kind}-{key}.pt"


def _read(path: Path, provenance: Mapping[str, Any]) -> Tensors | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
        stored = json.loads(blob["provenance"])
        if stored != _canonical({**provenance, "cache_version": CACHE_VERSION}):
            raise ValueError("provenance mismatch")
        return dict(blob["tensors"])
    except Exception as err:  # noqa: BLE001 - corrupt / foreign file: rebuild
        warnings.warn(f"ignoring unusable probe cache {path} ({err}); rebuilding", stacklevel=3)
        return None


def _write(path: Path, provenance: Mapping[str, Any], tensors: Tensors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_canonical({**provenance, "cache_version": CACHE_VERSION}), sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"provenance": text, "tensors": {k: v.detach().cpu() for k, v in tensors.items()}}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"could not write probe cache {path} ({err}); set DSB_CACHE_DIR to a writable folder",
                      stacklevel=3)
        Path(tmp).unlink(missing_ok=True)


def cached(kind: str, provenance: Mapping[str, Any], build: Callable[[], Tensors], *,
           root: Path | None = None) -> Tensors:
    """``build()``'s tensors, from disk when a file with this provenance exists.

    kind: a short file-name prefix (``class_stats``, ``probe-ot``...); provenance: everything the
    result depends on (JSON-able; hashes for data). The result is stored on a miss.
    """
    t0 = time.perf_counter()
    if not enabled():
        out = build()
        STATS.record(kind, False, time.perf_counter() - t0)
        return out
    path = cache_path(kind, provenance_key(provenance), root)
    cached = _read(path, provenance)
    if cached is not None:
        STATS.record(kind, True, time.perf_counter() - t0)
        return cached
    out = build()
    _write(path, provenance, out)
    STATS.record(kind, False, time.perf_counter() - t0)
    return out


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The provenance document stored in a cache file (for inspection)."""
    blob = torch.load(Path(path), weights_only=True, map_location="cpu")
    return json.loads(blob["provenance"])
