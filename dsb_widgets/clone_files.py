"""A clone folder read back (written by :func:`dsb_widgets.clones.make_clones`, ``dsb clone``):
``provenance.json`` (config, per-order records), ``vocab.json`` (token strings) and one
``clone_L{L}.pt`` per order, loaded with ``torch.load(weights_only=True)`` (never unpickled).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dsb_widgets.errors import MalformedDataError

__all__ = ["CloneSet", "load_clones", "VOCAB_FILE", "PROVENANCE_FILE"]

VOCAB_FILE, PROVENANCE_FILE = "vocab.json", "provenance.json"


@dataclass(frozen=True, eq=False)
class CloneSet:
    """Clones read back from a folder: tokens[L] (N, T) int64, bodies[L], vocab and provenance."""

    path: Path
    tokens: dict[int, Tensor]
    bodies: dict[int, int]
    token_strings: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)

    def decode(self, ids: Tensor | np.ndarray | list[int]) -> str:
        """Text of one token sequence (token strings joined; ``<unk>`` spelled out)."""
        return "".join(self.token_strings[int(i)] for i in ids)


def load_clones(path: str | Path) -> CloneSet:
    """Read a folder written by :func:`make_clones` (``dsb clone``)."""
    path = Path(path)
    if not (path / PROVENANCE_FILE).is_file() or not (path / VOCAB_FILE).is_file():
        raise FileNotFoundError(f"no clones in {path} (missing {PROVENANCE_FILE}); make them with "
                                f"`dsb clone --corpus NAME --layers 1 2 --out {path}`")
    try:  # a truncated / hand-edited file is a one-line error naming the folder, not a traceback
        prov = json.loads((path / PROVENANCE_FILE).read_text())
        vocab = json.loads((path / VOCAB_FILE).read_text())
        tokens, bodies = {}, {}
        for key, rec in prov["orders"].items():
            blob = torch.load(path / rec["file"], weights_only=True)
            tokens[int(key)], bodies[int(key)] = blob["tokens"].long(), int(blob["bodies"])
        token_strings = list(vocab["token_strings"])
    except (ValueError, KeyError, TypeError, AttributeError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        reason = (str(err).splitlines() or [""])[0][:200]
        raise MalformedDataError(f"the clones in {path} are unreadable ({type(err).__name__}: {reason}); remake them "
                                 f"with `dsb clone --corpus NAME --layers 1 2 --out {path}`") from None
    return CloneSet(path, tokens, bodies, token_strings, prov)

