"""Data layer: real datasets as tensors (first stage of data -> statistics -> probes -> engine).

Image datasets: ``load_images(name, split, data_dir)`` (see data/README.md for sources and
local layouts). Shared pieces (ImageData, errors, data/cache folders) live in ``common``.
"""

from .common import DataNotFoundError, ImageData, MalformedDataError, cache_dir, resolve_data_dir
from .images import KNOWN_IMAGE_DATASETS, load_images

__all__ = [
    "DataNotFoundError",
    "ImageData",
    "KNOWN_IMAGE_DATASETS",
    "MalformedDataError",
    "cache_dir",
    "load_images",
    "resolve_data_dir",
]
