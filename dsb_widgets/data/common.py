"""Shared pieces of the data layer: where local data and caches live, the image container."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dsb_widgets.errors import DataNotFoundError, MalformedDataError

__all__ = ["DataNotFoundError", "MalformedDataError", "ImageData", "cache_dir", "resolve_data_dir"]

DATA_ENV = "DSB_DATA_DIR"
CACHE_ENV = "DSB_CACHE_DIR"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The local data directory: the argument, else ``$DSB_DATA_DIR``, else None (use the hub)."""
    value = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where decoded arrays and tokenised corpora are cached (``$DSB_CACHE_DIR`` or ~/.cache)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dsb_widgets"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class ImageData:
    """One split of an image dataset in the project's single tensor format.

    x: float32 (N, C, H, W) in [0, 1]; y: int64 (N,); classes: class names, index = label.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    name: str = ""
    split: str = "train"

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise ValueError(f"ImageData.x must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"ImageData has {self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def flat(self) -> torch.Tensor:
        """Images flattened to (N, C*H*W)."""
        return self.x.reshape(len(self), -1)
