"""Real image datasets as ImageData: ``load_images(name, split, data_dir)``.

Sources, in order: sklearn's bundled ``digits`` (always offline); a local copy under
``data_dir`` / ``$DSB_DATA_DIR`` (layouts in data/README.md and ``formats.py``); otherwise the
Hugging Face hub through ``datasets``. Decoded local and hub data are cached as uint8 ``.npz``
under ``cache_dir()/images`` keyed by dataset, split and a fingerprint of the source files
(path, size, mtime), so only the first load decodes.

Measured (2 shared CPU cores at load ~7, DSB_DATA_DIR=/work/shared/data, train split, wall /
process CPU): Fashion-MNIST cold 1.0 s / 0.9 s, cached 0.7 s / 0.7 s; CIFAR-10 (60,000 JPEG q75
in a tar.gz; one pass decodes and caches both splits) cold 28.6 s / 16.8 s, cached 3.4 s /
1.8 s. A cached load is mostly the uint8 -> float32 conversion (600 MB for CIFAR-10 train).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import formats, image_cache
from .common import (
    DATA_ENV,
    DataNotFoundError,
    ImageData,
    MalformedDataError,
    resolve_data_dir,
)

DIGITS = [str(k) for k in range(10)]
FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CACHE_VERSION = 1  # bump when decoding changes, to invalidate old cache files
DIGITS_TEST_FRACTION, DIGITS_SEED = 0.2, 0


@dataclass(frozen=True)
class ImageSpec:
    """A known dataset: class names, hub repo/config, local folder names tried under data_dir."""

    classes: list[str]
    hub: str | None
    config: str | None
    folders: tuple[str, ...]
    layout: str  # expected local layout, for error messages


SPECS: dict[str, ImageSpec] = {
    "digits": ImageSpec(DIGITS, None, None, (), "sklearn's bundled copy (always offline)"),
    "mnist": ImageSpec(
        DIGITS,
        "ylecun/mnist",
        None,
        ("mnist", "MNIST", "mnist/raw", "MNIST/raw"),
        "mnist/ holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...",
    ),
    "fashion_mnist": ImageSpec(
        FASHION,
        "zalando-datasets/fashion_mnist",
        None,
        (
            "fashion_mnist",
            "fashion-mnist",
            "fashionmnist",
            "FashionMNIST",
            "FashionMNIST/raw",
            "fashion-mnist/raw",
        ),
        "fashion-mnist/ holding train-images-idx3-ubyte.gz, ..., t10k-labels-idx1-ubyte.gz",
    ),
    "cifar10": ImageSpec(
        CIFAR10,
        "uoft-cs/cifar10",
        None,
        ("cifar10", "cifar-10", "CIFAR10", "CIFAR-10", "cifar-10-batches-py"),
        "cifar10/ holding train/<class>/*.png|jpg (or a .tar.gz of it) or cifar-10-batches-py",
    ),
    "svhn": ImageSpec(
        DIGITS,
        "ufldl-stanford/svhn",
        "cropped_digits",
        ("svhn", "SVHN"),
        "svhn/ holding train_32x32.mat, test_32x32.mat (or train/<class>/*.png)",
    ),
}
KNOWN_IMAGE_DATASETS = tuple(SPECS)
_IDX_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def load_images(
    name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> ImageData:
    """One split of an image dataset: x float32 (N, C, H, W) in [0, 1], y int64 (N,), classes.

    name: digits, mnist, fashion_mnist, cifar10 or svhn ("fashion-mnist" also works).
    split: "train" or "test". data_dir: a local copy (the dataset's folder, a parent holding a
    folder named after it, or the file itself); default ``$DSB_DATA_DIR``; if neither is set the
    Hugging Face hub is used.
    """
    key = name.lower().replace("-", "_")
    if key not in SPECS:
        raise ValueError(
            f"unknown image dataset {name!r}; known: {', '.join(KNOWN_IMAGE_DATASETS)}"
        )
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
    spec = SPECS[key]
    if key == "digits":
        x, y = _digits(split)
        return ImageData(torch.from_numpy(x), torch.from_numpy(y), list(spec.classes), key, split)
    root = resolve_data_dir(data_dir)
    raw = _load_hub(key, split) if root is None else _load_local(key, split, root)
    x = raw.x.astype(np.float32)  # always a fresh, writable array
    if raw.x.dtype == np.uint8:
        x /= np.float32(255.0)
    return ImageData(
        torch.from_numpy(x), torch.from_numpy(raw.y.astype(np.int64)), list(raw.classes), key, split
    )


# ---------------------------------------------------------------------------------- digits
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as (1797, 8, 8) float64 values 0..16 and int64 labels, read straight from
    the ``digits.csv.gz`` file sklearn ships, without importing sklearn (1.5 CPU-s of imports for
    a 0.1 MB file); falls back to ``sklearn.datasets.load_digits`` if the file is not there."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as fh:
                data = np.loadtxt(fh, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits (1,797 8x8 images, values 0..16) as x/16, stratified 80/20 split.

    Per class, a permutation from ``numpy.random.default_rng(0)`` sends the first
    round(0.2 * n_class) images to test; indices are then sorted, so both splits keep the
    original order. Result: 1,438 train / 359 test images, the same on every machine.
    """
    raw, target = _digits_raw()
    images = raw.astype(np.float32) / 16.0
    rng = np.random.default_rng(DIGITS_SEED)
    test = np.zeros(len(target), dtype=bool)
    for cls in range(10):
        members = np.flatnonzero(target == cls)
        test[rng.permutation(members)[: int(round(DIGITS_TEST_FRACTION * len(members)))]] = True
    keep = test if split == "test" else ~test
    return np.ascontiguousarray(images[keep][:, None]), target[keep]  # (N, 1, 8, 8), (N,)


# ------------------------------------------------------------------------------------- local
@dataclass(frozen=True)
class _Source:
    kind: str  # idx | npz | folder | tar | cifar_pickle | svhn_mat
    paths: tuple[Path, ...]


def _candidate_dirs(spec: ImageSpec, root: Path) -> list[tuple[Path, bool]]:
    """(folder, dedicated): folders named after the dataset under root first, then root itself.

    Inside a dedicated folder the search is generous (one level deeper, any tar); in root
    itself, which may be a parent holding other datasets, only unambiguous matches count.
    """
    dirs = [(root / folder, True) for folder in spec.folders if (root / folder).is_dir()]
    return dirs + [(root, False)]


def _find_source(key: str, split: str, root: Path) -> _Source | None:
    spec = SPECS[key]
    if root.is_file():
        return _file_source(root)
    for folder, dedicated in _candidate_dirs(spec, root):
        for finder in (
            _find_idx,
            _find_npz,
            _find_cifar_pickles,
            _find_svhn_mat,
            _find_image_dir,
            _find_tar,
        ):
            source = finder(folder, split, key, dedicated)
            if source is not None:
                return source
    return None


def _file_source(path: Path) -> _Source | None:
    if path.name.endswith(formats.TAR_SUFFIXES):
        return _Source("tar", (path,))
    if path.suffix == ".npz":
        return _Source("npz", (path,))
    if path.suffix == ".mat":
        return _Source("svhn_mat", (path,))
    return None


def _find_idx(folder: Path, split: str, key: str, dedicated: bool) -> _Source | None:
    for prefix in _IDX_PREFIXES[split]:
        for sep in ("-", "."):
            for gz in (".gz", ""):
                images = folder / f"{prefix}-images{sep}idx3-ubyte{gz}"
                labels = folder / f"{prefix}-labels{sep}idx1-ubyte{gz}"
                if images.is_file() and labels.is_file():
                    return _Source("idx", (images, labels))
    return None


def _find_npz(folder: Path, split: str, key: str, dedicated: bool) -> _Source | None:
    for path in (folder / f"{split}.npz", folder / f"{key}_{split}.npz", folder / f"{key}.npz"):
        if path.is_file():
            return _Source("npz", (path,))
    return None


def _find_cifar_pickles(folder: Path, split: str, key: str, dedicated: bool) -> _Source | None:
    names = [f"data_batch_{k}" for k in range(1, 6)] if split == "train" else ["test_batch"]
    for base in (folder, folder / "cifar-10-batches-py"):
        if key == "cifar10" and all((base / n).is_file() for n in names):
            return _Source("cifar_pickle", tuple(base / n for n in names))
    return None


def _find_svhn_mat(folder: Path, split: str, key: str, dedicated: bool) -> _Source | None:
    path = folder / f"{split}_32x32.mat"
    return _Source("svhn_mat", (path,)) if key == "svhn" and path.is_file() else None


def _find_image_dir(folder: Path, split: str, key: str, dedicated: bool) -> _Source | None:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir()) if dedicated else []
    for base in [folder, *subdirs]:
        if any((base / name).is_dir() for name in formats.SPLIT_FOLDERS[split]):
            return _Source("folder", (base,))
    return None


def _find_tar(folder: Path, split: str, key: str, dedicated: bool) -> _Source | None:
    """A tar named after the dataset; else, in a dedicated folder or one with no subfolders,
    the first (sorted) tar."""
    entries = sorted(folder.iterdir())
    tars = [p for p in entries if p.is_file() and p.name.endswith(formats.TAR_SUFFIXES)]
    named = [
        p for p in tars if key.replace("_", "") in p.name.lower().replace("-", "").replace("_", "")
    ]
    if not named and (dedicated or not any(p.is_dir() for p in entries)):
        named = tars
    return _Source("tar", (named[0],)) if named else None


def _fingerprint(source: _Source) -> str:
    return image_cache.fingerprint(f"v{CACHE_VERSION}|{source.kind}", source.paths)


def _load_local(key: str, split: str, root: Path) -> formats.RawImages:
    spec = SPECS[key]
    if not root.exists():
        raise DataNotFoundError(_missing_message(key, f"the data directory {root} does not exist"))
    source = _find_source(key, split, root)
    if source is None:
        raise DataNotFoundError(
            _missing_message(key, f"no {split} split of {key} found under {root}")
        )
    if source.kind == "npz":
        x, y, classes = formats.read_npz(source.paths[0], split, spec.classes)
        return formats.RawImages(x, y, classes)
    fingerprint = _fingerprint(source)
    cached = image_cache.read(image_cache.path(key, split, fingerprint))
    if cached is not None:
        return cached
    decoded = _decode(source, split, spec)
    for name, raw in decoded.items():  # archives decode every split in one pass: cache them all
        if name in ("train", "test"):
            image_cache.write(image_cache.path(key, name, fingerprint), raw)
    if split not in decoded:
        found = ", ".join(sorted(decoded)) or "none"
        raise DataNotFoundError(
            _missing_message(key, f"{source.paths[0]} has no {split!r} split (found: {found})")
        )
    return decoded[split]


def _decode(source: _Source, split: str, spec: ImageSpec) -> dict[str, formats.RawImages]:
    readers: dict[str, Callable[[], dict[str, formats.RawImages]]] = {
        "idx": lambda: {split: formats.read_idx_pair(source.paths[0], source.paths[1], classes=list(spec.classes))},
        "folder": lambda: formats.read_image_folder(source.paths[0], spec.classes),
        "tar": lambda: formats.read_image_tar(source.paths[0], spec.classes),
        "cifar_pickle": lambda: {
            split: formats.read_cifar_pickles(list(source.paths), spec.classes)
        },
        "svhn_mat": lambda: {split: formats.read_svhn_mat(source.paths[0], spec.classes)},
    }
    return readers[source.kind]()


def _missing_message(key: str, why: str) -> str:
    spec = SPECS[key]
    return (
        f"{key}: {why}. Fix: connect to the internet so Hugging Face `datasets` can download "
        f"{spec.hub!r} (leave {DATA_ENV} unset), or point --data-dir / {DATA_ENV} at a local copy: "
        f"{spec.layout} (see data/README.md)."
    )


# --------------------------------------------------------------------------------------- hub
def _load_hub(key: str, split: str) -> formats.RawImages:
    """Download (or reuse the HF cache) and convert to uint8 (N, C, H, W); cached like local data."""
    spec = SPECS[key]
    try:
        import datasets

        ds = datasets.load_dataset(spec.hub, spec.config, split=split)
    except Exception as err:  # no internet, hub down, package missing: one actionable message
        raise DataNotFoundError(
            _missing_message(
                key, f"cannot load {spec.hub!r} from the hub ({type(err).__name__}: {err})"
            )
        ) from err
    image_col = next(c for c in ("image", "img") if c in ds.column_names)
    label_col = next(c for c in ("label", "labels") if c in ds.column_names)
    tag = getattr(ds, "_fingerprint", None) or f"{len(ds)}"
    fingerprint = hashlib.sha1(
        f"v{CACHE_VERSION}|hub|{spec.hub}|{spec.config}|{split}|{tag}".encode()
    ).hexdigest()[:16]
    path = image_cache.path(key, split, fingerprint)
    cached = image_cache.read(path)
    if cached is not None:
        return cached
    # hub labels follow the standard order; keep our names so hub and local copies agree
    # (the hub spells Fashion-MNIST's first class "T - shirt / top")
    names = getattr(ds.features[label_col], "names", None) or spec.classes
    names = spec.classes if len(names) == len(spec.classes) else [str(n) for n in names]
    mode = "L" if key in ("mnist", "fashion_mnist") else "RGB"
    arrays = [np.asarray(image.convert(mode)) for image in ds[image_col]]  # (H, W) or (H, W, 3)
    x = np.stack([a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays])  # (N, C, H, W)
    y = np.asarray(ds[label_col], dtype=np.int64)
    if len(y) != len(x):
        raise MalformedDataError(f"{spec.hub}: {len(x)} images but {len(y)} labels")
    raw = formats.RawImages(
        x.astype(np.uint8), formats.check_labels(y, len(names), spec.hub), names
    )
    image_cache.write(path, raw)
    return raw


def load_if_available(name: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[ImageData, ImageData] | None:
    """(train, test) of ``name`` from local data, or None (with a printed reason) when absent.

    For notebooks and demos that use real datasets when present: never reaches for the hub
    (``digits`` is always available; the others need ``data_dir`` or ``DSB_DATA_DIR``).
    """
    if name != "digits" and resolve_data_dir(data_dir) is None:
        return None
    try:
        return load_images(name, "train", data_dir), load_images(name, "test", data_dir)
    except (DataNotFoundError, FileNotFoundError) as err:
        print(f"{name}: not available ({err})")
        return None
