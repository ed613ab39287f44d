"""Append records to a netCDF-3 file along its unlimited dimension, in place.

A run's results file (``engine/results.py``) has ``step`` as the netCDF *record* (unlimited)
dimension. In the classic format (Unidata, "The NetCDF Classic Format Specification") the
header is followed by the fixed-size variables, then by the records: record ``r`` holds, for
every record variable in header order, that variable's slab at ``r`` (padded to 4 bytes), at
``begin_v + r * recsize``. The header's ``numrecs`` (4 bytes at offset 4) says how many records
readers see. So a new checkpoint row costs one record write plus a 4-byte header update,
whatever the number of rows already written, and readers (xarray, the dashboard) opening the
file at any moment see a valid file: the record is written (and fsync'd) *before* ``numrecs``
counts it, and bytes beyond ``numrecs`` records are ignored by netCDF readers.

The appended file is byte-identical to xarray writing the whole Dataset with
``unlimited_dims=["step"]`` (tested in ``tests/test_engine_results.py``). Anything this module
does not recognise (another format, a non-record layout, 1- or 2-byte record types, variables
it was not given) raises :class:`LayoutMismatch`, and the caller rewrites the file instead.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

_NC_DIMENSION, _NC_VARIABLE, _NC_ATTRIBUTE = 0x0A, 0x0B, 0x0C
# nc_type -> numpy big-endian dtype (classic and 64-bit-offset formats)
_TYPES = {1: ">i1", 2: "S1", 3: ">i2", 4: ">i4", 5: ">f4", 6: ">f8"}
NUMRECS_OFFSET = 4


class LayoutMismatch(ValueError):
    """The file is not a netCDF-3 file whose records this module can append to."""


@dataclass(frozen=True)
class RecordVar:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # per record (the non-record dimensions)
    begin: int  # file offset of record 0


@dataclass(frozen=True)
class RecordLayout:
    numrecs: int
    recsize: int
    variables: tuple[RecordVar, ...]  # header order

    @property
    def data_begin(self) -> int:
        return self.variables[0].begin if self.variables else 0

    def end(self, numrecs: int | None = None) -> int:
        """File offset just past record ``numrecs - 1`` (default: the records readers see)."""
        return self.data_begin + (self.numrecs if numrecs is None else numrecs) * self.recsize


class _Reader:
    def __init__(self, fh: BinaryIO, offset_size: int) -> None:
        self.fh, self.offset_size = fh, offset_size

    def i32(self) -> int:
        raw = self.fh.read(4)
        if len(raw) != 4:
            raise LayoutMismatch("truncated netCDF header")
        return int(struct.unpack(">i", raw)[0])

    def offset(self) -> int:
        raw = self.fh.read(self.offset_size)
        if len(raw) != self.offset_size:
            raise LayoutMismatch("truncated netCDF header")
        return int(struct.unpack(">q" if self.offset_size == 8 else ">i", raw)[0])

    def name(self) -> str:
        n = self.i32()
        raw = self.fh.read(n + (-n % 4))
        return raw[:n].decode("utf-8")

    def skip_attributes(self) -> None:
        tag, count = self.i32(), self.i32()
        if tag not in (0, _NC_ATTRIBUTE):
            raise LayoutMismatch("bad attribute list")
        for _ in range(count):
            self.name()
            nc_type, nelems = self.i32(), self.i32()
            if nc_type not in _TYPES:
                raise LayoutMismatch(f"netCDF type {nc_type} (not classic)")
            size = nelems * np.dtype(_TYPES[nc_type]).itemsize
            self.fh.read(size + (-size % 4))


def read_layout(fh: BinaryIO) -> RecordLayout:
    """Parse a netCDF-3 header (classic or 64-bit offset) from the start of ``fh``."""
    fh.seek(0)
    magic = fh.read(4)
    if magic[:3] != b"CDF" or magic[3:] not in (b"\x01", b"\x02"):
        raise LayoutMismatch("not a netCDF-3 classic / 64-bit-offset file")
    r = _Reader(fh, 8 if magic[3:] == b"\x02" else 4)
    numrecs = r.i32()
    if numrecs < 0:
        raise LayoutMismatch("streaming numrecs")
    tag, ndims = r.i32(), r.i32()
    if tag not in (0, _NC_DIMENSION):
        raise LayoutMismatch("bad dimension list")
    dims = [(r.name(), r.i32()) for _ in range(ndims)]
    r.skip_attributes()  # global attributes
    tag, nvars = r.i32(), r.i32()
    if tag not in (0, _NC_VARIABLE):
        raise LayoutMismatch("bad variable list")
    records: list[RecordVar] = []
    recsize = 0
    for _ in range(nvars):
        name = r.name()
        dimids = [r.i32() for _ in range(r.i32())]
        r.skip_attributes()
        nc_type, vsize, begin = r.i32(), r.i32(), r.offset()
        if nc_type not in _TYPES:
            raise LayoutMismatch(f"netCDF type {nc_type} (not classic)")
        if dimids and dims[dimids[0]][1] == 0:  # a record variable
            dtype = np.dtype(_TYPES[nc_type])
            if dtype.itemsize < 4:
                raise LayoutMismatch(f"record variable {name!r} of a 1- or 2-byte type (padding rules differ)")
            shape = tuple(dims[d][1] for d in dimids[1:])
            if vsize != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise LayoutMismatch(f"record variable {name!r}: vsize {vsize} does not match its shape")
            records.append(RecordVar(name, dtype, shape, begin))
            recsize += vsize
    return RecordLayout(numrecs, recsize, tuple(records))


def _record_bytes(layout: RecordLayout, row: Mapping[str, np.ndarray | float | int]) -> bytes:
    if set(row) != {v.name for v in layout.variables}:
        raise LayoutMismatch(f"the file's record variables {[v.name for v in layout.variables]} are not the "
                             f"row's {sorted(row)}")
    parts = []
    for var in layout.variables:
        value = np.asarray(row[var.name])
        if value.shape != var.shape:
            raise LayoutMismatch(f"{var.name}: row shape {value.shape}, file {var.shape}")
        if var.dtype.kind == "i" and value.size and (np.abs(value).max() > np.iinfo(var.dtype).max):
            raise LayoutMismatch(f"{var.name}: value out of the file's integer range")
        parts.append(np.ascontiguousarray(value, dtype=var.dtype).tobytes())
    return b"".join(parts)


def _pwrite(fd: int, data: bytes, offset: int) -> int:
    """One positioned write (a module-level seam: tests count the bytes a checkpoint writes)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)
    return done


class RecordFile:
    """Appends records to one netCDF-3 file; its header is parsed once per file (device, inode)
    and only ``numrecs`` is re-read at each append (a file replaced by a rename is re-parsed)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._layout: RecordLayout | None = None
        self._identity: tuple[int, int] | None = None

    def _current(self, fd: int) -> RecordLayout:
        st = os.fstat(fd)
        if self._layout is None or self._identity != (st.st_dev, st.st_ino):
            with os.fdopen(os.dup(fd), "rb") as fh:
                self._layout = read_layout(fh)
            self._identity = (st.st_dev, st.st_ino)
        numrecs = int(struct.unpack(">i", os.pread(fd, 4, NUMRECS_OFFSET))[0])
        return dataclasses.replace(self._layout, numrecs=numrecs)

    def append(self, rows: list[Mapping[str, np.ndarray | float | int]], expect: int | None = None,
               sync: bool = True) -> int:
        """Append ``rows`` (record variable -> value of one record); see :func:`append_records`."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            layout = self._current(fd)
            if not layout.variables:
                raise LayoutMismatch("the file has no record (unlimited) dimension")
            if expect is not None and layout.numrecs != expect:
                raise LayoutMismatch(f"the file holds {layout.numrecs} records, expected {expect}")
            data = b"".join(_record_bytes(layout, row) for row in rows)
            written = _pwrite(fd, data, layout.end())
            if sync:  # the records reach the disk before the header counts them (a crash cannot count garbage)
                os.fsync(fd)
            # the header is not fsync'd: a crash may lose this count (one row fewer, still valid); the
            # next append's fsync, or the OS within seconds, makes it durable
            return written + _pwrite(fd, struct.pack(">i", layout.numrecs + len(rows)), NUMRECS_OFFSET)
        finally:
            os.close(fd)


def append_records(path: str | os.PathLike[str], rows: list[Mapping[str, np.ndarray | float | int]],
                   expect: int | None = None, sync: bool = True) -> int:
    """Append ``rows`` (record variable -> value of one record) to the netCDF-3 file at ``path``.

    ``expect``: the number of records the file must hold now (else :class:`LayoutMismatch`; a
    file another writer changed is never appended to blindly). Bytes past the last counted record
    (a writer killed mid-append) are overwritten. ``sync``: fsync the records before the header
    counts them (one fsync per call). Returns the bytes written (records + 4 header bytes).
    """
    return RecordFile(path).append(rows, expect, sync)
