"""The text experiment's ``-o KEY=VALUE`` options, typed (see :mod:`dsb_widgets.options`).

``--tokenizer``, ``--vocab-size`` and ``--context`` are CLI shortcuts for the options of the same
name. One frozen dataclass read by the CLI help, the dashboard form, sweep files and the builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsb_widgets.errors import ConfigError

TOKENIZERS = ("gpt2", "char")


@dataclass(frozen=True)
class TextOptions:
    """Options of ``dsb run text`` (defaults: the measured default run in engine/text.py)."""

    tokenizer: str = field(default="gpt2", metadata={
        "flag": "--tokenizer", "help": "gpt2 (BPE) or char", "choices": TOKENIZERS})
    vocab_size: int | None = field(default=1000, metadata={"flag": "--vocab-size",
        "help": "keep the top-V tokens, the rest -> <unk> (none: the tokenizer's whole vocabulary)", "min": 0})
    context: int = field(default=64, metadata={
        "flag": "--context", "help": "sequence length T in tokens", "min": 2})
    n_layer: int = field(default=2, metadata={"help": "transformer blocks", "min": 1})
    n_head: int = field(default=4, metadata={"help": "attention heads (must divide d_model)", "min": 1})
    d_model: int = field(default=128, metadata={"help": "residual width", "min": 1})
    mask_prob: float = field(default=0.15, metadata={"help": "masked-LM (bert) masking rate in (0, 1]",
                                                     "min": 0.0, "max": 1.0})
    max_train_chars: int | None = field(default=None, metadata={
        "help": "read at most this many characters of the train split (none: all)", "min": 0})

    def __post_init__(self) -> None:
        if self.vocab_size not in (None, 0) and self.vocab_size < 2:
            raise ConfigError(f"vocab size must be >= 2 (got {self.vocab_size}); pass e.g. --vocab-size 1000")
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                              "pass -o n_head=... that divides it")
        if not 0.0 < self.mask_prob <= 1.0:
            raise ConfigError(f"mask_prob must lie in (0, 1] (got {self.mask_prob}); pass -o mask_prob=0.15")

    @property
    def vocab(self) -> int | None:
        """``vocab_size`` with 0 meaning "no cut" (None)."""
        return self.vocab_size or None

    @property
    def max_chars(self) -> int | None:
        return self.max_train_chars or None
