"""Typed ``-o`` options of the ``checkpoints`` experiment (no torch import: `dsb run --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckpointOptions:
    """Options of ``dsb run checkpoints`` (``--revisions`` is the CLI shortcut for ``revisions``)."""

    revisions: tuple[str, ...] = field(default=(), metadata={
        "help": "checkpoints to evaluate, e.g. step0,step1,step512 (none: every local step<N>/, or the "
                "log-spaced hub set)"})
    context: int = field(default=128, metadata={"help": "tokens per window the model sees", "min": 2})
    max_train_chars: int | None = field(default=4_000_000, metadata={
        "help": "read at most this many characters of the train split for the n-gram counts (none: all)",
        "min": 0})
