"""The image experiment's ``-o KEY=VALUE`` options, typed (see :mod:`dsb_widgets.options`).

One frozen dataclass: the CLI help (``dsb run --help``), the dashboard form, sweep files and the
builder (:func:`dsb_widgets.engine.images.build_images_task`) all read this schema, so a new option
is one field here (with ``help`` and, where it applies, ``min`` / ``max`` / ``choices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dsb_widgets.errors import ConfigError

TRAIN_ON = ("real", "iso_clone", "gauss_clone", "maxent3_clone", "gmm_clone")  # Refinetti's ladder, low to high
MAXENT1 = ("exponential", "marginals")
TAYLOR_ORDERS = (2, 4)
TAYLOR_METHODS = ("auto", "exact", "topk", "hutchinson")
TAYLOR_WEIGHTS = ("maxent2", "prior", "uniform")


@dataclass(frozen=True)
class ImageOptions:
    """Options of ``dsb run images`` (defaults reproduce the measured runs in engine/images.py)."""

    width: int = field(default=256, metadata={"help": "hidden width of the MLP / CNN / ResNet", "min": 1})
    train_on: str = field(default="real", metadata={
        "help": "train on real images or a clone (Refinetti et al.'s ladder): iso_clone (class mean + "
                "one variance), gauss_clone (mean + covariance), maxent3_clone (+ top-k third moments), "
                "gmm_clone (a mixture of gmm_k Gaussians per class)",
        "choices": TRAIN_ON})
    flip: bool = field(default=False, metadata={
        "help": "random horizontal flips of the training images (CIFAR-10's default; not for digits)"})
    crop: int = field(default=0, metadata={
        "help": "random crops: shift each training image by up to this many pixels, zeros shifted in "
                "(Belrose et al.: RandomCrop(h, padding=h // 8), 3 for 28x28); 0 = off", "min": 0})
    maxent1: str = field(default="exponential", metadata={
        "help": "order-1 max-ent sampler: exponential family on [0, 1] or independent class marginals",
        "choices": MAXENT1})
    clamp_maxent2: bool = field(default=False, metadata={"help": "clip maxent2 samples to [0, 1]"})
    ot_shrinkage: str = field(default="optimal", metadata={
        "help": "covariance shrinkage of the OT maps: heldout (the weight with the smallest cross-validated "
                "moment error of the edit, ot_shrinkage.py; MNIST / Fashion-MNIST default), optimal "
                "(Bodnar et al.), none, or a weight in [0, 1]"})
    clamp_ot: bool = field(default=False, metadata={"help": "clip OT-edited images to [0, 1]"})
    ot_rank: int = field(default=0, metadata={
        "help": "OT maps between rank-r PPCA covariances (lowrank_ot.py); 0: exact up to d = 1024, "
                "rank 256 above (CIFAR-10)", "min": 0})
    num_quantiles: int = field(default=256, metadata={"help": "quantiles per pixel of the CQN tables", "min": 2})
    maxent3_k: int = field(default=8, metadata={
        "help": "maxent3: principal directions per class whose third moments are matched", "min": 1, "max": 32})
    gmm_k: int = field(default=16, metadata={
        "help": "gmm_clone: Gaussian components per class (k-means fit, gaussian_mixture.py); 1 = gauss_clone's "
                "statistics, more = more of the data's higher-order structure", "min": 1, "max": 1024})
    cube_steps: int = field(default=200, metadata={
        "help": "maxent2_cube: L-BFGS iterations of the hypercube moment matching", "min": 1})
    taylor: bool = field(default=False, metadata={"help": "also record the Taylor predictions taylor0/taylor2"})
    taylor_order: int = field(default=2, metadata={"help": "2: taylor0, taylor2; 4: also taylor4",
                                                   "choices": TAYLOR_ORDERS})
    taylor_method: str = field(default="auto", metadata={"help": "order-2 estimator", "choices": TAYLOR_METHODS})
    taylor_samples: int = field(default=128, metadata={
        "help": "Hutchinson probes / T4 Monte-Carlo draws", "min": 2})
    taylor_per_class: bool = field(default=False, metadata={"help": "also record taylorJ_cK for every class K"})
    taylor_weights: str = field(default="maxent2", metadata={"help": "class weights of the Taylor average",
                                                             "choices": TAYLOR_WEIGHTS})
    taylor_seed: int = field(default=0, metadata={"help": "seed of the Taylor probe directions"})

    def __post_init__(self) -> None:
        _ = self.shrinkage  # raises ConfigError for a bad ot_shrinkage

    @property
    def shrinkage(self) -> float | Literal["optimal", "heldout"] | None:
        """``ot_shrinkage`` as :meth:`dsb_widgets.stats.ClassStats.covariance` takes it, or
        "heldout": a weight chosen by :func:`dsb_widgets.ot_shrinkage.heldout_shrinkage`."""
        text = str(self.ot_shrinkage).strip().lower()
        if text in ("none", "null", ""):
            return None
        if text in ("optimal", "heldout"):
            return "heldout" if text == "heldout" else "optimal"
        try:
            weight = float(text)
        except ValueError:
            weight = -1.0
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"bad value {self.ot_shrinkage!r} for option 'ot_shrinkage'; pass "
                              "-o ot_shrinkage=optimal, heldout (held-out moment error), none or a weight in [0, 1]")
        return weight
