"""Disk cache of decoded image datasets: uint8 ``.npz`` files under ``cache_dir()/images``.

A file is named by dataset, split and a fingerprint of its source (for local copies: resolved
paths, sizes and mtimes of the source files), so a changed source is decoded again. Writes are
atomic; an unreadable file is ignored (decoded again) with a warning, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import formats
from .common import cache_dir


def fingerprint(prefix: str, paths: Iterable[Path]) -> str:
    """Hash of ``prefix`` and each path's files (a folder: all files below it), sizes and mtimes."""
    digest = hashlib.sha1(prefix.encode())
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            digest.update(f"|{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def path(key: str, split: str, fingerprint: str) -> Path:
    return cache_dir() / "images" / f"{key}-{split}-{fingerprint}.npz"


def read(file: Path) -> formats.RawImages | None:
    """The cached arrays, or None when absent or unreadable (a half-written/corrupt file)."""
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as archive:
            return formats.RawImages(archive["x"], archive["y"], [str(c) for c in archive["classes"]])
    except Exception as err:  # noqa: BLE001 - a half-written or corrupt cache file is rebuilt, not fatal
        warnings.warn(f"ignoring unreadable cache file {file} ({err}); decoding again", stacklevel=3)
        return None


def write(file: Path, raw: formats.RawImages) -> None:
    """Atomic write (temp file + rename) so concurrent loaders never see half a file."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, x=raw.x, y=raw.y, classes=np.array(raw.classes, dtype=str))
        os.replace(tmp, file)
    except OSError as err:
        warnings.warn(f"could not write cache {file} ({err}); set DSB_CACHE_DIR to a writable folder", stacklevel=3)
        Path(tmp).unlink(missing_ok=True)
