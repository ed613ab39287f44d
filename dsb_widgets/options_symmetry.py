"""The symmetry experiment's ``-o KEY=VALUE`` options, typed (see :mod:`dsb_widgets.options`).

``--context`` is the CLI shortcut for ``context``. The sectors trained and probed are the run's
``--probes`` (default: all four, see :mod:`dsb_widgets.sn_sectors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsb_widgets.errors import ConfigError

FEATURES = ("linear", "hermite2")


@dataclass(frozen=True)
class SymmetryOptions:
    """Options of ``dsb run symmetry`` (defaults: the measured run in engine/symmetry.py)."""

    context: int = field(default=8, metadata={"help": "n, tokens per context (pair sector: n >= 4)", "min": 2})
    dim: int = field(default=8, metadata={"help": "d, dimension of the i.i.d. N(0, I) tokens (>= 4)", "min": 4})
    feature: str = field(default="linear", metadata={
        "help": "per-token feature phi(w.x): linear u, or hermite2 (u^2-1)/sqrt2", "choices": FEATURES})
    train_size: int = field(default=0, metadata={
        "help": "P, a fixed training set of P contexts (0: a fresh batch every step, online)", "min": 0})
    n_layer: int = field(default=2, metadata={"help": "transformer blocks", "min": 1})
    n_head: int = field(default=4, metadata={"help": "attention heads (must divide d_model)", "min": 1})
    d_model: int = field(default=64, metadata={"help": "residual width", "min": 1})
    pos_std: float = field(default=0.02, metadata={"help": "init scale of the learned positional embedding",
                                                   "min": 0.0})
    width: int = field(default=256, metadata={"help": "hidden width of the mlp control", "min": 1})

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                              "pass -o n_head=... that divides it")
