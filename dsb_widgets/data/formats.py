"""Readers for local image-dataset files; each returns uint8 arrays (N, C, H, W) and int labels.

Formats (see data/README.md for the layouts):
- IDX (``train-images-idx3-ubyte[.gz]``), the MNIST / Fashion-MNIST distribution format
  (LeCun et al. 1998): magic ``00 00 08 ndim``, big-endian int32 dims, then raw uint8 data.
- image folders ``<split>/<class>/<image>`` (png/jpg/bmp/gif/webp), as a directory or streamed
  out of a tar / tar.gz without unpacking to disk.
- ``.npz`` arrays, the CIFAR-10 python pickles (``data_batch_1`` .. ``test_batch``), the SVHN
  ``.mat`` files (``train_32x32.mat``).

Every parse failure raises MalformedDataError naming the file and what is wrong.

Measured (2 shared CPU cores, Pillow 13 with libjpeg-turbo): streaming the 60,000 32x32 JPEGs of
CIFAR-10 (19 MB tar.gz) and decoding them takes ~16 s of CPU in one pass, about a third of it
``tarfile``'s per-member header parsing; the JPEG fast path (``Image.frombytes(..., "jpeg")``
after reading the SOF header ourselves) costs ~75 us/image against ~130 us for ``Image.open``,
which parses the header in Python. Output is identical (tested).
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsb_widgets.errors import UnsafeInputError

from .common import MalformedDataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLIT_FOLDERS = {"train": ("train", "training"), "test": ("test", "testing")}
_IDX_DTYPES = {0x08: np.uint8}  # only the unsigned-byte type occurs in image datasets


@dataclass(frozen=True)
class RawImages:
    """Decoded images before float conversion: x uint8 (N, C, H, W), y int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]


# ---------------------------------------------------------------------------------------- IDX
def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped) as a uint8 array of the shape its header states."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise MalformedDataError(f"{path}: cannot read ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise MalformedDataError(f"{path}: bad IDX magic {raw[:4].hex()} (expected 0000 08 0n)")
    dtype, ndim = _IDX_DTYPES.get(raw[2]), raw[3]
    if dtype is None:
        raise MalformedDataError(f"{path}: unsupported IDX data type 0x{raw[2]:02x} (need 0x08)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise MalformedDataError(f"{path}: truncated IDX header ({len(raw)} bytes, ndim={ndim})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "has trailing bytes"
        raise MalformedDataError(
            f"{path}: {what}: header dims {dims} need {expected} data bytes, "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, expected, header).reshape(dims)


def read_idx_pair(images: Path, labels: Path, classes: list[str]) -> RawImages:
    """An images file (N, H, W) and a labels file (N,) as RawImages (N, 1, H, W)."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise MalformedDataError(
            f"{images} / {labels}: need 3-d images and 1-d labels, got {x.shape} and {y.shape}"
        )
    if len(x) != len(y):
        raise MalformedDataError(
            f"count mismatch: {images} has {len(x)} images but {labels} has {len(y)} labels"
        )
    return RawImages(x[:, None], check_labels(y, len(classes), labels), classes)


def check_labels(y: np.ndarray, num_classes: int, source: object) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise MalformedDataError(
            f"{source}: labels span {y.min()}..{y.max()}, expected 0..{num_classes - 1}"
        )
    return y


# ------------------------------------------------------------------------------- image folders
def _jpeg_header(blob: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a baseline/extended JPEG's SOF0/SOF1, else None."""
    i = 2
    while i + 9 < len(blob) and blob[i] == 0xFF:
        marker = blob[i + 1]
        if marker in (0xC0, 0xC1):
            h, w = int.from_bytes(blob[i + 5 : i + 7], "big"), int.from_bytes(
                blob[i + 7 : i + 9], "big"
            )
            return w, h, blob[i + 9]
        if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # progressive / lossless / arithmetic: let Image.open handle it
        i += 2 + int.from_bytes(blob[i + 2 : i + 4], "big")
    return None


def decode_image(blob: bytes, mode: str | None, source: str) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, C) in ``mode`` ("L" or "RGB"; None: the file's own)."""
    try:
        if blob[:2] == b"\xff\xd8" and mode is not None:
            head = _jpeg_header(blob)
            if head is not None and head[2] == {"L": 1, "RGB": 3}[mode]:
                arr = np.asarray(Image.frombytes(mode, head[:2], blob, "jpeg", mode, ""))
                return arr.reshape(arr.shape[0], arr.shape[1], -1)
        image = Image.open(io.BytesIO(blob))
        if mode is None:
            mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        arr = np.asarray(image.convert(mode))
    except Exception as err:  # PIL raises many types for corrupt data
        raise MalformedDataError(f"{source}: cannot decode image ({err})") from err
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


class _FolderCollector:
    """Decodes images member by member and groups them by split; one shared mode and size."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.mode: str | None = None
        self.first: tuple[str, tuple[int, ...]] = ("", ())
        self.items: dict[str, list[tuple[str, str, np.ndarray]]] = {}

    def add(self, parts: tuple[str, ...], blob: bytes) -> None:
        split, cls = _canonical_split(parts[-3]), parts[-2]
        where = f"{self.source}:{'/'.join(parts)}"
        arr = decode_image(blob, self.mode, where)
        if self.mode is None:
            self.mode = "L" if arr.shape[2] == 1 else "RGB"
            self.first = (where, arr.shape)
        elif arr.shape != self.first[1]:
            raise MalformedDataError(
                f"{where}: image shape {arr.shape} differs from {self.first[0]} {self.first[1]}; "
                "all images must share one size"
            )
        self.items.setdefault(split, []).append((cls, "/".join(parts), arr))

    def result(self, classes: list[str] | None) -> dict[str, RawImages]:
        if not self.items:
            raise MalformedDataError(
                f"{self.source}: no images found in the layout <split>/<class>/<image>"
                f" (suffixes {', '.join(IMAGE_SUFFIXES)})"
            )
        found = sorted({cls for items in self.items.values() for cls, _, _ in items})
        if classes is None or set(found) - set(classes):
            classes = found
        index = {name: k for k, name in enumerate(classes)}
        out = {}
        for split, items in self.items.items():
            items.sort(key=lambda item: (index[item[0]], item[1]))  # class, then file name
            x = np.stack([arr for _, _, arr in items]).transpose(0, 3, 1, 2)  # (N, C, H, W)
            y = np.array([index[cls] for cls, _, _ in items], dtype=np.int64)
            out[split] = RawImages(np.ascontiguousarray(x), y, list(classes))
        return out


def _canonical_split(folder: str) -> str:
    for split, names in SPLIT_FOLDERS.items():
        if folder.lower() in names:
            return split
    return folder


def read_image_folder(root: Path, classes: list[str] | None = None) -> dict[str, RawImages]:
    """Directory ``root/<split>/<class>/<image>`` -> {split: RawImages}, all splits at once.

    Images are ordered by class, then path; labels index ``classes`` when every folder name is
    in it (e.g. the standard CIFAR-10 order), else the sorted folder names.
    """
    collector = _FolderCollector(root)
    for path in sorted(root.glob("*/*/*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            collector.add(path.relative_to(root).parts, path.read_bytes())
    return collector.result(classes)


def read_image_tar(path: Path, classes: list[str] | None = None) -> dict[str, RawImages]:
    """Tar / tar.gz with members ``[prefix/]<split>/<class>/<image>``, in one streaming pass.

    Nothing is unpacked to disk; members are decoded as the stream passes them.
    """
    collector = _FolderCollector(path)
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                if (
                    member.isfile()
                    and len(parts) >= 3
                    and parts[-1].lower().endswith(IMAGE_SUFFIXES)
                ):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        collector.add(parts, handle.read())
    except (tarfile.TarError, OSError, EOFError) as err:
        raise MalformedDataError(f"{path}: cannot read tar archive ({err})") from err
    return collector.result(classes)


# --------------------------------------------------------------------------------- arrays
def to_nchw(x: np.ndarray, source: object) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3, 4} -> (N, C, H, W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4 and x.shape[1] in (1, 3, 4):
        return x
    raise MalformedDataError(
        f"{source}: images must be (N,H,W), (N,H,W,C) or (N,C,H,W); got {x.shape}"
    )


def read_npz(
    path: Path, split: str, classes: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``x``/``y`` (per-split file) or ``x_<split>``/``y_<split>`` arrays, optional ``classes``.

    Returns x (N, C, H, W) as stored (uint8 0..255 or float in [0, 1]), y int64, class names.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            xk, yk = (f"x_{split}", f"y_{split}") if f"x_{split}" in keys else ("x", "y")
            if xk not in keys or yk not in keys:
                raise MalformedDataError(
                    f"{path}: needs arrays x, y or x_{split}, y_{split}; has {sorted(keys)}"
                )
            x, y = archive[xk], archive[yk]
            names = [str(c) for c in archive["classes"]] if "classes" in keys else None
    except MalformedDataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise MalformedDataError(f"{path}: cannot read npz ({err})") from err
    x = to_nchw(x, path)
    if len(x) != len(y):
        raise MalformedDataError(f"{path}: count mismatch, {len(x)} images but {len(y)} labels")
    if x.dtype != np.uint8 and len(x) and (x.min() < 0 or x.max() > 1):
        raise MalformedDataError(
            f"{path}: float images must lie in [0, 1], got {x.min()}..{x.max()}"
        )
    if names is None:
        names = (
            classes
            if len(y) == 0 or int(y.max()) < len(classes)
            else [str(k) for k in range(int(y.max()) + 1)]
        )
    return x, check_labels(y, len(names), path), names


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only what a CIFAR-10 batch holds, so a crafted file runs no code.

    A genuine batch (Krizhevsky 2009, Python 2 pickle) references exactly three globals: numpy's
    array reconstructor, ``numpy.ndarray`` and ``numpy.dtype``; dicts, lists, bytes, str and int
    are pickle opcodes that need no global. Python 3 re-pickles of it may also use
    ``_codecs.encode`` (protocol 2 bytes, latin-1 only here) or numpy's ``_frombuffer``
    (protocol 5). Any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`UnsafeInputError` before it is looked up.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "dict"), ("builtins", "list"),
        ("builtins", "str"), ("builtins", "int"), ("builtins", "tuple"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise UnsafeInputError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only "
                                   "numpy arrays, lists, bytes, str and int (crafted pickle?)")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        return super().find_class(module, name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; only latin-1 is admitted."""
    if encoding.replace("-", "").replace("_", "").lower() != "latin1" or not isinstance(text, str):
        raise UnsafeInputError(f"refusing _codecs.encode(..., {encoding!r}) in a CIFAR-10 batch")
    return text.encode("latin1")


def load_cifar_batch(path: Path) -> dict[Any, Any]:
    """One CIFAR-10 python batch file as a dict, read with :class:`_CifarUnpickler` (no code runs)."""
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except UnsafeInputError as err:
        raise UnsafeInputError(f"{path}: {err}") from None
    except Exception as err:
        raise MalformedDataError(f"{path}: not a CIFAR-10 python batch ({err})") from err
    if not isinstance(batch, dict):
        raise MalformedDataError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__}, not a dict)")
    return batch


def read_cifar_pickles(paths: list[Path], classes: list[str]) -> RawImages:
    """CIFAR-10 python batches (Krizhevsky 2009): dict b"data" (N, 3072) uint8, b"labels".

    Read with a restricted unpickler (:func:`load_cifar_batch`): a crafted batch raises
    :class:`UnsafeInputError` instead of running code.
    """
    xs, ys = [], []
    for path in paths:
        batch = load_cifar_batch(path)
        try:
            data, labels = batch[b"data"], batch[b"labels"]
        except KeyError as err:
            raise MalformedDataError(f"{path}: not a CIFAR-10 python batch (no key {err})") from err
        if (not isinstance(data, np.ndarray) or data.dtype.kind not in "ui"
                or not isinstance(labels, (list, np.ndarray))):
            raise MalformedDataError(f"{path}: b'data' must be an integer array and b'labels' a list of ints")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise MalformedDataError(
                f"{path}: data {data.shape} / {len(labels)} labels, need (N, 3072)"
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(check_labels(np.asarray(labels), len(classes), path))
    return RawImages(np.concatenate(xs), np.concatenate(ys), classes)


def read_svhn_mat(path: Path, classes: list[str]) -> RawImages:
    """SVHN cropped digits ``train_32x32.mat`` (Netzer et al. 2011): X (32, 32, 3, N), y in 1..10.

    The digit 0 is stored as label 10; it becomes label 0 (as in Hugging Face and torchvision).
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    except Exception as err:
        raise MalformedDataError(f"{path}: not an SVHN .mat file with X and y ({err})") from err
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise MalformedDataError(f"{path}: X {x.shape} and {len(y)} labels, need (H, W, 3, N)")
    y[y == 10] = 0
    return RawImages(
        np.ascontiguousarray(x.transpose(3, 2, 0, 1).astype(np.uint8)),
        check_labels(y, len(classes), path),
        classes,
    )
