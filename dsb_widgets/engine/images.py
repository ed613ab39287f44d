"""The image experiment: classifiers trained on real images, probed with data of known order.

Probes (Belrose et al., ICML 2024; Refinetti, Ingrosso, Goldt, ICML 2023) are built once per
(data, probe, options, seed) and cached on disk: see ``engine/image_probes.py`` for the list
(``real``, ``maxent1/2/3``, ``maxent2_cube``, ``gauss_clone``, edits ``ot``, ``cqn``, ``shift``).
``-o train_on=iso_clone|gauss_clone|maxent3_clone|gmm_clone`` trains on a rung of Refinetti et al.'s clone
ladder (``engine/ladder.py``); crops and flips (``-o crop``, ``-o flip``) augment real images only,
so asking for them with a clone is a ConfigError (CIFAR-10's default flips are turned off there).

Defaults (``dsb run images``): digits, MLP width 256, AdamW lr 1e-3, betas (0.9, 0.95), weight
decay 0.05 (Belrose et al.'s optimiser), cosine to 0 over 4096 steps, batch 64, 3 checkpoints per
octave. Measured, 3 seeds (min loss @ step -> final loss, per seed), 2 shared CPU cores:

=========== ====================================================
real        0.129@645 -> 0.280, 0.139@813 -> 0.271, 0.114@512 -> 0.265
maxent1     0.019@406 -> 0.060, 0.019@406 -> 0.060, 0.016@813 -> 0.066
maxent2     0.039@813 -> 0.064, 0.044@1024 -> 0.061, 0.041@813 -> 0.073
gauss_clone 0.015@1024 -> 0.030, 0.016@813 -> 0.033, 0.018@1290 -> 0.036
ot  (target acc, max@step -> final) 0.98@406 -> 0.98, 0.98@1024 -> 0.98, 0.98@1625 -> 0.98
cqn (target acc)                    0.95@161 -> 0.94, 0.96@256 -> 0.94, 0.96@323 -> 0.94
=========== ====================================================

Max-ent order-1 loss triples after its minimum at step ~400 (3.2-4.1x) while held-out loss
roughly doubles (1.9-2.3x: digits has 1,438 training images, so the MLP memorises them) and
held-out accuracy stays at 97%. Tried and rejected: weight decay 0.5-1.0 keeps real loss flat
(0.11 -> 0.12) but also removes the max-ent rise; 1024-2048 steps or a warm-up change little
or shrink the rise. OT target accuracy (shrunk maps) stays at 0.98 to the end on digits (with
raw maps, ``-o ot_shrinkage=none``, it fell 0.97 -> 0.96); CQN's falls 0.96 -> 0.94. Wall time
of ``dsb run images --seeds 3``: 47 s on an idle 2-core machine (38 s in the loop, 6% probes).
The newer probes, same defaults, 1 seed (``--probes real maxent1 maxent2 maxent2_cube maxent3 ot
cqn shift``): maxent2_cube 0.023@1024 -> 0.039 (x1.70), maxent3 0.048@645 -> 0.102 (x2.14),
maxent2 0.033@1024 -> 0.058, shift target accuracy 0.986@323 -> 0.972, OT 0.989 -> 0.983.

MNIST / Fashion-MNIST / CIFAR-10 / SVHN default to ``convnet`` (``BY_DATASET``). Why: on
Fashion-MNIST (1 seed, 1 thread, machine loaded) the default MLP barely leaves the order-2
regime: maxent1 0.157@512 -> 0.179 (x1.14), maxent2 0.425@1290 -> 0.472 (x1.11), OT target
accuracy 0.887 -> 0.884 (flat), CQN 0.891@128 -> 0.861, real 0.344 at the end (88.3%). Same
data, ``convnet`` (16/32/64 channels, BatchNorm), 2048 steps, batch 128:

=============================== ========================= =========================
                                SGD lr 0.1, wd 5e-4       AdamW lr 2e-3, wd 0.05
=============================== ========================= =========================
real (min -> final, acc)        0.303@2048 (89.1%)        0.287@2048 (89.9%)
maxent1                         0.481@64 -> 0.700 (x1.46) 0.669@128 -> 1.095 (x1.64)
maxent2                         1.130@256 -> 2.771 (x2.45) 0.528@512 -> 0.981 (x1.86)
ot target acc (max -> final)    0.711@256 -> 0.646 (x0.91) 0.800@512 -> 0.749 (x0.94)
cqn target acc                  0.771@102 -> 0.707        0.772@81 -> 0.635
=============================== ========================= =========================

A convnet learns local, non-Gaussian features (edges, strokes), so the order-1/2 probes, which
keep only low-order statistics, lose it late in training while held-out loss is still at its
minimum (no memorisation: 4.4 epochs). SGD gives the stronger late phase. The default run
(4096 steps, SGD, 1 seed, 2955 s wall / 2241 s in the loop on a machine with ~25 processes on 2
cores): real 0.263 at the end = its minimum (90.8%); maxent1 0.416@128 -> 0.898 (x2.16),
maxent2 1.161@256 -> 2.523 (x2.17), maxent3 1.031@256 -> 2.239 (x2.17, below maxent2
throughout); CQN target accuracy 0.757@102 -> 0.649 (x0.86); but OT target accuracy peaks at
0.706@256, dips to 0.555-0.65 while the learning rate is high and settles at 0.669 (x0.95):
on Fashion-MNIST the OT fall is not the issue's 0.9x (2048 steps, training seeds 0/1: x0.889/x0.946;
source-label accuracy 2-3%: the edit leaves little of the source to see, see gaussian_ot.py).
CIFAR-10 (width 512, 1024 steps, same optimiser): 64.5% test accuracy (2000 test images).
(The numbers above are weight decay 5e-4.) MNIST / Fashion-MNIST then defaulted to weight decay 5e-3
(``benchmarks/ot_fall/``; Fashion-MNIST, 4096 steps, seeds 0-3, 164-174 CPU-s per seed): OT target
accuracy final/max 0.845 / 0.884 / 0.861 / 0.939 (5e-4: 0.966 / 0.928 / 0.882 / 0.911), held-out
accuracy 91.2-91.9% (90.4-91.8%), real loss final = min in every seed, maxent2 x2.2-3.7 with its
minimum at 2.5-25% of the run, maxent3 x2.1-3.3, CQN 0.83-0.88. Not robust: with the checkpoints
after step 256 put in random order (no trend) the same ratio reads 0.859-0.929, so most of it is the
plateau's checkpoint-to-checkpoint scatter (s.d. 0.053; 5e-4: 0.033); on a 3-checkpoint running
mean the fall is 0.848-0.997 (5e-4: 0.949-1.000). A constant learning rate or AdamW (lr 2e-3, wd
0.05) gave 0.928 / 0.924 (4-seed means). Since session stop 25 MNIST / Fashion-MNIST default to
Belrose et al.'s own recipe with their crops at 16,384 steps (comment above ``CONVNET_DEFAULTS``):
OT final/max 0.885 / 0.876 / 0.855 / 0.767, each below its no-trend null, held-out loss at its minimum.

CIFAR-10 with ``--model airbench`` (``models/airbench.py``: frozen 2x2 patch whitening,
32/64/128 BatchNorm CNN; SGD lr 0.2, batch 256, 1024 steps = 5.2 epochs, flips). The run
(1 seed, 1 thread, 718 CPU-s in all: ~208 s building probes on a cold cache, ~370 s training,
the rest probe evaluation; 45.5 min wall with ~8 processes on 2 cores): 78.95% on the 10,000 test
images (81.1% with flip test-time augmentation), held-out loss at its minimum at the end (0.580).
maxent2 1.046@203 -> 1.131 (x1.08), maxent3 1.029@203 -> 1.172 (x1.14), gauss_clone
2.282@406 -> 2.994 (x1.31) fall then rise; CQN target accuracy 0.115 -> 0.184@40 -> 0.080
(x0.43) rises then falls. Not reproduced: maxent1 never falls (3.075 at step 0, above chance:
the whitening amplifies the independent-pixel samples' high-frequency power; with the whitening's
eps raised to 1.0 x mean eigenvalue it dips only 2.304 -> 2.283 at step 8 in a 128-step check),
and OT target accuracy rises to 0.533 and is still at its maximum at the end (its target *loss*
does turn: 1.374@203 -> 1.468).

So the CIFAR-10 default is the same schedule on ``convnet`` (width 512: 32/64/128 channels, no
whitening). Its default run (1 seed, 1 thread, warm probe cache, 465 CPU-s in all, 7.9 min wall
on a lightly loaded machine): 74.71% on the 10,000 test images (76.1% flip-TTA), held-out loss
at its minimum at the end (0.723); maxent1 2.304 -> 1.968@64 -> 3.861 (x1.96), maxent2
0.900@512 -> 1.084 (x1.20), maxent3 0.957@512 -> 1.105 (x1.15) fall then rise; CQN target
accuracy 0.105 -> 0.207@81 -> 0.105 (x0.51). Not reproduced: OT target accuracy still rises at
the end (0.551), gauss_clone loss still falls (1.952 at the end).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from dsb_widgets.data import load_images
from dsb_widgets.data.common import ImageData
from dsb_widgets.data.images import KNOWN_IMAGE_DATASETS
from dsb_widgets.engine.augment import random_crop, random_flip
from dsb_widgets.engine.image_probes import DEFAULT_PROBES, PROBE_ORDER, build_image_probes, class_stats, clone_sampler  # noqa: F401  (re-exported)
from dsb_widgets.engine.task import ConfigError, Experiment, RunConfig, Task, register_experiment, required
from dsb_widgets.errors import MalformedDataError
from dsb_widgets.models.vision import VISION_MODELS, VisionConfig, init_statistics, make_vision_model
from dsb_widgets.options import parse_options
from dsb_widgets.options_images import ImageOptions

IMAGE_PROBES = DEFAULT_PROBES  # what a run records unless --probes says otherwise
IMAGE_DATASETS = KNOWN_IMAGE_DATASETS  # one list: the data layer's


def _load_split(cfg: RunConfig, split: str) -> ImageData:
    return load_images(str(cfg.dataset), split=split, data_dir=cfg.data_dir)


def build_images_task(cfg: RunConfig) -> Task:
    """Load the dataset, build the probes and return the task for the engine."""
    train, test = _load_split(cfg, "train"), _load_split(cfg, "test")
    if train.num_classes < 2 or len(torch.unique(train.y)) < 2:
        raise MalformedDataError(f"the {cfg.dataset!r} training split has {len(torch.unique(train.y))} class(es); "
                                 "a classifier needs at least 2: add class folders (train/<class>/*.png)")
    opts = _as_options(cfg.options)
    probes = build_image_probes(train, test, tuple(required(cfg.probes, "probes")),
                                required(cfg.probe_size, "probe_size"), cfg.seed, opts)
    vcfg = VisionConfig(train.shape, train.num_classes, width=opts.width)
    train_on = opts.train_on
    if train_on != "real":  # Refinetti et al.'s clone ladder (engine/ladder.py)
        from dsb_widgets.engine.ladder import clone_batches

        sample_batch = clone_batches(train_on, train, class_stats(train), opts.maxent3_k, opts.gmm_k)
    else:
        from dsb_widgets.engine.task import pick_device

        dev = pick_device(cfg.device)  # on a GPU the training set lives there (CIFAR-10: 0.6 GB)
        x_all, y_all = (train.x, train.y) if dev.type == "cpu" else (train.x.to(dev), train.y.to(dev))
        flip, crop = opts.flip, opts.crop

        def sample_batch(gen: torch.Generator, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
            # indices from the seed's generator (saved for resume): on a GPU the engine passes one
            # on the device (Task.device_sampling), so nothing crosses to the host; on CPU as before
            idx = torch.randint(len(y_all), (bs,), generator=gen, device=gen.device).to(y_all.device, non_blocking=True)
            x = x_all[idx]
            if crop:  # Belrose et al.'s RandomCrop(h, padding=crop), per image (engine/augment.py)
                x = random_crop(x, crop, gen)
            if flip:  # random horizontal flips, half the images (airbench's augmentation; -o flip=true)
                x = random_flip(x, gen)
            return x, y_all[idx]

    # airbench's patch whitening, from what the model trains on (real images or clone samples), once
    with torch.random.fork_rng(devices=[]):
        init = (init_statistics(str(cfg.model), sample_batch(torch.Generator().manual_seed(0), 5000)[0].cpu())
                if str(cfg.model) == "airbench" else None)
    task = Task(make_model=lambda seed: make_vision_model(str(cfg.model), vcfg, init), sample_batch=sample_batch,
                probes=probes, info={"classes": ",".join(train.classes), "dataset": str(cfg.dataset),
                                     "train_on": train_on}, device_sampling=train_on == "real")
    if opts.taylor:
        from dsb_widgets.engine.taylor_probe import attach_taylor

        attach_taylor(task, train, opts)
    return task


def _as_options(options: ImageOptions | Mapping[str, Any] | None) -> ImageOptions:
    """The typed options (a mapping, e.g. ``cfg.options``, is validated by the schema)."""
    if isinstance(options, ImageOptions):
        return options
    return parse_options(ImageOptions, options or {}, experiment="images")


AUGMENTATIONS = {"crop": 0, "flip": False}  # option -> its "off" value


def _augment_real_only(cfg: RunConfig, asked: Mapping[str, Any]) -> RunConfig:
    """Crops and flips augment the real training images; a clone run (``-o train_on=...``) draws
    fresh clone images every step and has none to augment. Asked for: a one-line ConfigError
    naming the fix (they were silently ignored). A dataset default (CIFAR-10's flips): turned
    off, so the saved config says what ran. Runs before any data loads (``resolve_config``)."""
    opts = _as_options(cfg.options)
    on = [k for k, off in AUGMENTATIONS.items() if getattr(opts, k) != off]
    if opts.train_on == "real" or not on:
        return cfg
    given = [k for k in on if k in asked]
    if given:
        flags = " ".join(f"-o {k}={str(getattr(opts, k)).lower()}" for k in given)
        verb = "augments" if len(given) == 1 else "augment"
        raise ConfigError(f"{flags} {verb} the real training images, but -o train_on={opts.train_on} trains on "
                          f"fresh clone samples and would ignore it; drop {flags} or pass -o train_on=real")
    return cfg.replace(options={**dict(cfg.options), **{k: AUGMENTATIONS[k] for k in on}})


def _adjust(cfg: RunConfig, asked: Mapping[str, Any]) -> RunConfig:
    """``resolve_config``'s hook: options the run would ignore are a one-line ConfigError (a value
    equal to the default is not: a resolved config lists every option, and resolving is idempotent)."""
    opts = _as_options(cfg.options)
    if "gmm_k" in asked and opts.gmm_k != ImageOptions().gmm_k and opts.train_on != "gmm_clone":
        raise ConfigError(f"-o gmm_k={opts.gmm_k} sets the components of the mixture clone, but this run trains on "
                          f"{opts.train_on} and would ignore it; drop -o gmm_k or pass -o train_on=gmm_clone")
    return _augment_real_only(cfg, asked)


def _validate(cfg: RunConfig) -> None:
    if cfg.dataset not in IMAGE_DATASETS:
        raise ConfigError(f"unknown image dataset {cfg.dataset!r}; pass --dataset one of: {', '.join(IMAGE_DATASETS)}")


# 28x28 grey-scale (MNIST, Fashion-MNIST): Belrose et al.'s own recipe on the small BatchNorm convnet
# (the MLP barely leaves the order-2 regime there; module docstring): AdamW lr 1e-3, betas (0.9, 0.95),
# weight decay 0.05, 2,000 warm-up steps, cosine, batch 128, RandomCrop(28, padding=3), at 16,384 steps
# (a quarter of their 2^16). Measured on Fashion-MNIST, seeds 0-3, 525-565 CPU-s per seed
# (benchmarks/ot_fall/README.md): OT target accuracy final/max 0.885 / 0.876 / 0.855 / 0.767, each below
# its no-trend null (0.918 / 0.920 / 0.912 / 0.872: a trend, not checkpoint scatter), held-out loss
# ending at its minimum, maxent2 x2.9-6.0 from a minimum at 5-6% of the run. The previous default (SGD lr
# 0.1, wd 5e-3, 4,096 steps, 177 CPU-s): 0.845 / 0.884 / 0.861 / 0.939, mostly scatter (null 0.888);
# the same AdamW recipe without crops: x0.867 / 0.906 at 16,384 steps, and at 2^16 steps it memorises.
CONVNET_DEFAULTS = {"model": "convnet", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "batch_size": 128,
                    "steps": 16384, "warmup": 2000}
# 32x32 RGB: airbench's schedule (1024 steps of batch 256 = 5.2 epochs, SGD lr 0.2, short warm-up,
# flips on CIFAR-10 only: SVHN's digits are not mirror-symmetric; SVHN is not measured here) on the
# convnet at 32/64/128 channels: 74.7% CIFAR-10 test accuracy and maxent1 falls then rises. The
# patch-whitening ``airbench`` model reaches 79.0% but its maxent1 loss never falls (docstring above).
CIFAR_DEFAULTS = {"model": "convnet", "optimizer": "sgd", "lr": 0.2, "weight_decay": 5e-4, "batch_size": 256,
                  "steps": 1024, "warmup": 64}
# 28x28: OT maps from class covariances shrunk by the weight with the smallest cross-validated
# held-out moment error of the edit (ot_shrinkage.py; Fashion-MNIST: 0.02). CIFAR-10 / SVHN keep
# Bodnar et al.'s weight: their PPCA maps (lowrank_ot.py) already replace the noisy small directions.
GRAY28 = {**CONVNET_DEFAULTS, "options": {"ot_shrinkage": "heldout", "crop": 3}}
BY_DATASET = {"mnist": GRAY28, "fashion_mnist": GRAY28,
              "cifar10": {**CIFAR_DEFAULTS, "options": {"width": 512, "flip": True}},
              "svhn": {**CIFAR_DEFAULTS, "options": {"width": 512}}}

register_experiment(Experiment(
    name="images",
    build=build_images_task,
    defaults={"dataset": "digits", "model": "mlp", "steps": 4096, "batch_size": 64, "optimizer": "adamw",
              "lr": 1e-3, "weight_decay": 0.05, "warmup": 0, "per_octave": 3, "probe_size": 1000,
              "probes": IMAGE_PROBES, "by_dataset": BY_DATASET},
    models=VISION_MODELS,
    probes=tuple(PROBE_ORDER),
    datasets=IMAGE_DATASETS,
    description="image classifiers probed with max-entropy, Gaussian-clone, OT and CQN data",
    validate=_validate,
    options=ImageOptions,
    adjust=_adjust,
))
