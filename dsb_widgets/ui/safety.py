"""What the served dashboard trusts: escaping for page text, upload checks, data roots.

The dashboard is a shared page: a run started in one tab, a file uploaded or a name typed there
is shown in every other tab watching it. So nothing that comes from a file, a path or a user
reaches the page unescaped (:func:`esc`), an uploaded netCDF is checked from its header before
a byte of its data is decoded (:func:`check_netcdf_header`, :func:`open_results_bytes`), and a
dataset, corpus, data folder or clones folder named in the form must be a registered name or
a regular file / folder under a configured data root (:class:`DataPolicy`).

netCDF classic header (Unidata, "The NetCDF Classic Format Specification", CDF-1 and the
64-bit-offset CDF-2 that ``engine="scipy"`` reads): magic ``CDF\\x01|\\x02``, numrecs, then the
dim, global-attribute and variable lists, all big-endian. Every count and length in it is
checked against the bytes that follow, so a header that declares 40 GB in a 2 MB file is refused
after reading a few hundred bytes.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from dsb_widgets.checkpoint_suite import is_hub_id
from dsb_widgets.errors import MalformedDataError, UnsafeInputError

MAX_UPLOAD_BYTES = 20 * 2**20  # an uploaded result (a run of 100 probes x 1000 checkpoints is ~2 MB)
WEBSOCKET_MAX_BYTES = 64 * 2**20  # Bokeh's socket limit: over-size uploads reach our message (base64: x4/3)
MAX_ELEMENTS = 50_000_000  # all variables of a result together
MAX_GRID_CELLS = 4096  # combinations of a sweep's extra dims (each is one facet / selection)
MAX_PROBES = 512  # one glyph set per probe in the figures
MAX_STEPS, MAX_SEEDS = 100_000, 1024  # a run has ~per_octave * log2(steps) checkpoints; points per curve
MAX_TEXT_BYTES = 512 * 2**20  # a text corpus file or folder named in the served form
MAX_FOLDER_FILES = 100_000

# One translation table, applied in one pass (escaping twice would show "&#x27;" as text): HTML's
# five specials plus the Markdown characters that could form links, emphasis or code spans.
_MD_ESCAPES = {ord(c): f"&#{ord(c)};" for c in "`*_[]#|~\\"}
_ESCAPES = {**_MD_ESCAPES, ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord('"'): "&quot;",
            ord("'"): "&#x27;"}


def esc(value: Any) -> str:
    """``value`` as text safe inside a Markdown / HTML / Alert pane: HTML-escaped, and the Markdown
    characters that could form links, emphasis or code spans written as entities (the page shows
    them as typed). Never put the result inside backticks: entities are not decoded there."""
    return str(value).translate(_ESCAPES)


def code(value: Any) -> str:
    """``value`` shown as inline code (an HTML ``<code>`` element around :func:`esc`)."""
    return f"<code>{esc(value)}</code>"


# ------------------------------------------------------------------------------- netCDF header
_NC_TYPES = {1: ("byte", 1), 2: ("char", 1), 3: ("short", 2), 4: ("int", 4), 5: ("float", 4), 6: ("double", 8)}
_TAG_DIM, _TAG_VAR, _TAG_ATT = 0x0A, 0x0B, 0x0C
_MAX_NAME, _MAX_ITEMS = 256, 10_000


@dataclass(frozen=True)
class NcVariable:
    name: str
    dims: tuple[str, ...]
    dtype: str
    elements: int


@dataclass(frozen=True)
class NcHeader:
    """The declared layout of a netCDF classic file: dim sizes and variables (nothing decoded)."""

    version: int
    dims: dict[str, int]
    variables: tuple[NcVariable, ...] = field(default=())

    @property
    def elements(self) -> int:
        return sum(v.elements for v in self.variables)


class _Reader:
    def __init__(self, blob: bytes, name: str) -> None:
        self.blob, self.pos, self.name = blob, 0, name

    def fail(self, what: str) -> MalformedDataError:
        return MalformedDataError(f"{self.name}: not a valid netCDF3 file ({what} at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.blob):
            raise self.fail(f"header declares {n} bytes past the end of the file")
        out = self.blob[self.pos:self.pos + n]
        self.pos += n
        return out

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def count(self, what: str) -> int:
        n = self.int32()
        if not 0 <= n <= _MAX_ITEMS:
            raise self.fail(f"{what} count {n} outside 0..{_MAX_ITEMS}")
        return n

    def name_(self) -> str:
        n = self.int32()
        if not 0 < n <= _MAX_NAME:
            raise self.fail(f"name length {n} outside 1..{_MAX_NAME}")
        raw = self.take(n)
        self.take(-n % 4)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.fail("name is not UTF-8") from err

    def list_head(self, tag: int, what: str) -> int:
        got, n = self.int32(), self.int32()
        if got == 0 and n == 0:
            return 0
        if got != tag:
            raise self.fail(f"expected the {what} list")
        if not 0 <= n <= _MAX_ITEMS:
            raise self.fail(f"{what} count {n} outside 0..{_MAX_ITEMS}")
        return n

    def attributes(self) -> None:
        for _ in range(self.list_head(_TAG_ATT, "attribute")):
            self.name_()
            nc_type = self.int32()
            if nc_type not in _NC_TYPES:
                raise self.fail(f"unknown attribute type {nc_type}")
            n = self.int32()
            size = n * _NC_TYPES[nc_type][1]
            self.take(size + (-size % 4))  # raises if it runs past the end


def check_netcdf_header(blob: bytes, name: str = "file", *, max_elements: int = MAX_ELEMENTS,
                        file_size: int | None = None) -> NcHeader:
    """Parse and check the header of a netCDF3 file held in ``blob``; decodes no variable data.

    Refuses (one-line :class:`MalformedDataError` / :class:`UnsafeInputError`): a 0-byte file,
    netCDF4/HDF5 and other formats, unknown types, counts or names past the end of the file,
    variables whose declared data lie past the end, and more than ``max_elements`` values.
    ``file_size``: the whole file's size when ``blob`` is only its head.
    """
    if not blob:
        raise MalformedDataError(f"{name} is empty (0 bytes); upload a .nc written by dsb run or dsb sweep")
    if blob[:4] == b"\x89HDF" or blob[:3] != b"CDF" or blob[3:4] not in (b"\x01", b"\x02"):
        kind = "a netCDF4/HDF5 file" if blob[:4] == b"\x89HDF" else "not a netCDF3 file"
        raise MalformedDataError(f"{name} is {kind}; dsb results are netCDF3 (xarray engine='scipy')")
    r = _Reader(blob, name)
    size = len(blob) if file_size is None else file_size
    version = r.take(4)[3]
    numrecs = r.int32()
    if numrecs < 0:
        raise r.fail("streaming record count (numrecs = -1)")
    dims: list[tuple[str, int]] = []
    for _ in range(r.list_head(_TAG_DIM, "dimension")):
        dims.append((r.name_(), r.int32()))
        if dims[-1][1] < 0:
            raise r.fail(f"negative length of dim {dims[-1][0]!r}")
    r.attributes()
    variables, record_bytes, record_begin = [], 0, None
    for _ in range(r.list_head(_TAG_VAR, "variable")):
        vname = r.name_()
        ids = [r.int32() for _ in range(r.count("dimension id"))]
        if any(not 0 <= i < len(dims) for i in ids):
            raise r.fail(f"variable {vname!r} names an unknown dim")
        r.attributes()
        nc_type = r.int32()
        if nc_type not in _NC_TYPES:
            raise r.fail(f"variable {vname!r} has unknown type {nc_type}")
        r.int32()  # vsize (recomputed from the dims below)
        begin = r.int32() if version == 1 else int(struct.unpack(">q", r.take(8))[0])
        shape = [numrecs if dims[i][1] == 0 else dims[i][1] for i in ids]
        elements = math.prod(shape)
        declared = math.prod(max(1, n) for n in shape)  # a 0-record variable may still declare huge dims
        if declared > max_elements:
            declared_dims = {dims[i][0]: n for i, n in zip(ids, shape, strict=True)}
            raise UnsafeInputError(f"{name}: variable {vname!r} declares dims {declared_dims}, "
                                   f"over the limit of {max_elements:,} values")
        itemsize = _NC_TYPES[nc_type][1]
        record = bool(ids) and dims[ids[0]][1] == 0
        if record:
            per_record = math.prod(shape[1:]) * itemsize
            record_bytes += per_record
            record_begin = begin if record_begin is None else min(record_begin, begin)
        elif begin < 0 or begin + elements * itemsize > size:
            raise UnsafeInputError(f"{name}: variable {vname!r} declares {elements:,} values "
                                   f"({elements * itemsize:,} bytes) past the end of the {size:,}-byte file")
        variables.append(NcVariable(vname, tuple(dims[i][0] for i in ids), _NC_TYPES[nc_type][0], elements))
    if record_begin is not None and record_begin + numrecs * record_bytes > size:
        raise UnsafeInputError(f"{name}: {numrecs:,} records of {record_bytes:,} bytes declared past the end "
                               f"of the {size:,}-byte file")
    # the record (unlimited, length 0) dim has numrecs entries: results files append along step
    header = NcHeader(version, {d: numrecs if n == 0 else n for d, n in dims}, tuple(variables))
    if header.elements > max_elements:
        raise UnsafeInputError(f"{name}: declares {header.elements:,} values, over the limit of {max_elements:,}")
    return header


def check_results_layout(header: NcHeader, name: str = "file") -> None:
    """A dsb run / sweep layout of bounded size: ``loss`` over (step, probe, seed, *grid dims)."""
    loss = next((v for v in header.variables if v.name == "loss"), None)
    if loss is None or not {"step", "probe", "seed"} <= set(loss.dims):
        raise MalformedDataError(f"{name}: no loss variable over (step, probe, seed); "
                                 "is it a result of dsb run or dsb sweep?")
    for dim, limit in (("probe", MAX_PROBES), ("step", MAX_STEPS), ("seed", MAX_SEEDS)):
        if header.dims.get(dim, 0) > limit:
            raise UnsafeInputError(f"{name}: {header.dims[dim]:,} {dim}s, over the limit of {limit:,}")
    cells = math.prod(max(1, header.dims[d]) for d in loss.dims if d not in ("step", "probe", "seed"))
    if cells > MAX_GRID_CELLS:
        raise UnsafeInputError(f"{name}: a grid of {cells:,} sweep cells, over the limit of {MAX_GRID_CELLS:,}")


def _upload_size_check(size: int, name: str) -> None:
    if size > MAX_UPLOAD_BYTES:
        raise UnsafeInputError(f"{name} is {size / 2**20:.1f} MB, over the {MAX_UPLOAD_BYTES // 2**20} MB "
                               "upload limit; copy it into the runs folder and open it from the list")


def open_results_bytes(blob: bytes | None, name: str = "upload.nc") -> Any:
    """An uploaded run / sweep netCDF as an in-memory ``xr.Dataset``, checked before decoding."""
    import xarray as xr

    from dsb_widgets.engine.results import NETCDF_ENGINE

    blob = blob or b""
    _upload_size_check(len(blob), name)
    check_results_layout(check_netcdf_header(blob, name), name)
    try:
        with xr.open_dataset(io.BytesIO(blob), engine=NETCDF_ENGINE) as ds:
            return ds.load()
    except Exception as err:  # scipy / xarray raise many types for a bad file
        raise MalformedDataError(f"{name}: cannot read it as netCDF3 ({type(err).__name__}: {err})") from err


def check_results_file(path: str | os.PathLike[str]) -> NcHeader:
    """Check a results file on disk the same way, from its first 4 MB (its size may exceed the
    upload limit; the header must lie in those 4 MB)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4 * 2**20)
    header = check_netcdf_header(head, path.name, file_size=size)
    check_results_layout(header, path.name)
    return header


# --------------------------------------------------------------------------------- data roots
def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\", os.sep)) or text.startswith((".", "~")) or Path(text).exists()


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class DataPolicy:
    """Where a served dashboard may read: registered names, or paths under ``roots``.

    ``roots``: the runs folder, ``$DSB_DATA_DIR`` / ``dsb serve --data-dir`` and every
    ``--data-root``. A path must resolve (symlinks and ``..`` followed) inside a root and be a
    regular file (at most ``max_text_bytes``) or a folder whose ``.txt`` files are, in total.
    """

    roots: tuple[Path, ...]
    max_text_bytes: int = MAX_TEXT_BYTES

    @classmethod
    def from_settings(cls, runs_dir: str | os.PathLike[str] | None = None,
                      data_roots: Iterable[str | os.PathLike[str]] = (),
                      data_dir: str | os.PathLike[str] | None = None) -> "DataPolicy":
        found = [runs_dir, data_dir or os.environ.get("DSB_DATA_DIR"), *data_roots]
        roots = tuple(dict.fromkeys(Path(p).expanduser().resolve() for p in found if p))
        return cls(roots)

    def _inside(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def check_path(self, text: str, what: str = "path") -> Path:
        """The resolved path if it is a regular file / folder under a root; else UnsafeInputError."""
        if not text or "\0" in text:
            raise UnsafeInputError(f"{what} is empty or has a NUL byte")
        where = ", ".join(str(r) for r in self.roots) or "(none configured: dsb serve --data-root PATH)"
        path = Path(text).expanduser().resolve()
        if not self._inside(path):
            raise UnsafeInputError(f"{what} {text!r} is outside the data roots ({where}); "
                                   "give a dataset name or a path under them (dsb serve --data-root PATH)")
        try:
            st = path.stat()
        except OSError:
            raise UnsafeInputError(f"{what} {text!r} does not exist under the data roots ({where})") from None
        if stat.S_ISDIR(st.st_mode):
            self._check_folder(path, text, what)
        elif not stat.S_ISREG(st.st_mode):
            raise UnsafeInputError(f"{what} {text!r} is not a regular file or folder")
        elif st.st_size > self.max_text_bytes:
            raise UnsafeInputError(f"{what} {text!r} is {st.st_size / 2**20:.0f} MB, over the served limit of "
                                   f"{self.max_text_bytes // 2**20} MB")
        return path

    def _check_folder(self, folder: Path, text: str, what: str) -> None:
        total = 0
        for n, p in enumerate(folder.rglob("*.txt")):  # what the text loader reads
            real = p.resolve()
            if n >= MAX_FOLDER_FILES or not self._inside(real) or not real.is_file():
                why = ("too many files" if n >= MAX_FOLDER_FILES
                       else f"{p.name} leads outside the roots or is not a file")
                raise UnsafeInputError(f"{what} {text!r}: {why}")
            total += real.stat().st_size
            if total > self.max_text_bytes:
                raise UnsafeInputError(f"{what} {text!r} holds over {self.max_text_bytes // 2**20} MB of text, "
                                       "the served limit")

    def check_config(self, cfg: Any, names: Sequence[str] = ()) -> None:
        """Check a RunConfig's dataset, data_dir, model folder and string options before anything is loaded.

        A registered name (``names``, compared as the text loader does) passes; so does an
        unknown plain name that is no path (the experiment then reports it as unknown).
        """
        known = {_norm(n) for n in names}
        dataset = getattr(cfg, "dataset", None)
        if dataset and _norm(str(dataset)) not in known and _looks_like_path(str(dataset)):
            self.check_path(str(dataset), "dataset")
        if getattr(cfg, "data_dir", None):
            self.check_path(str(cfg.data_dir), "data_dir")
        model = str(getattr(cfg, "model", None) or "")  # a checkpoint-suite folder is read like data
        if model and _looks_like_path(model) and not is_hub_id(model):
            self.check_path(model, "model")
        for key, value in dict(getattr(cfg, "options", None) or {}).items():
            if isinstance(value, str) and _looks_like_path(value):
                self.check_path(value, f"option {key}")
