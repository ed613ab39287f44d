"""The clones experiment's ``-o KEY=VALUE`` options, typed (see :mod:`dsb_widgets.options`).

``--clones DIR`` is the CLI shortcut for ``-o clones=DIR``; the tokenizer, vocabulary and context
come from the clone folder's provenance (``context`` may be given only to check it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsb_widgets.errors import ConfigError

PROBE_MASKS = ("mask", "bert")


@dataclass(frozen=True)
class CloneOptions:
    """Options of ``dsb run clones`` (defaults: the measured run in engine/clones.py)."""

    clones: str | None = field(default=None, metadata={
        "flag": "--clones", "help": "folder written by `dsb clone` (or --clones DIR)"})
    context: int | None = field(default=None, metadata={"flag": "--context",
        "help": "must equal the clones' context if given (it comes from their provenance)", "min": 2})
    n_layer: int = field(default=2, metadata={"help": "BERT blocks", "min": 1})
    n_head: int = field(default=4, metadata={"help": "attention heads (must divide d_model)", "min": 1})
    d_model: int = field(default=64, metadata={"help": "residual width", "min": 1})
    mask_prob: float = field(default=0.15, metadata={"help": "masking rate in (0, 1]", "min": 0.0, "max": 1.0})
    probe_mask: str = field(default="mask", metadata={
        "help": "probe masks: pure [MASK] tokens, or BERT's 80/10/10 as in training", "choices": PROBE_MASKS})

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}; pass -o n_head=...")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ConfigError(f"mask_prob must lie in (0, 1] (got {self.mask_prob}); pass -o mask_prob=0.15")
