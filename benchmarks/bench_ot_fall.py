"""What a Gaussian-OT edit leaves for a network to see: data-level checks behind the OT target accuracy.

Belrose et al. (ICML 2024) report that accuracy on the *target* label b of OT-edited images rises
early in training and falls later, because late networks use statistics beyond the covariance.
How far it can fall depends on how much of the source class a survives the edit. This prints,
for the image experiment's own ``ot`` probe (1000 held-out images, a random other class each):

* kNN: a k-nearest-neighbour classifier on the training pixels (it uses every order of
  statistics): how often it calls an edited image b (target) and a (source). If it says b, the
  edit changed the class for any pixel-space classifier, and a late fall must come from elsewhere.
* range: the share of edited pixels outside [0, 1] and their extremes (late networks react to
  these; clipping them removes the fall on Fashion-MNIST, see ``gaussian_ot.py``).
* held-out moments: transport all test images of class p to q (one q per p) and compare their
  covariance with class q's *test* covariance (relative Frobenius error), for the default
  shrinkage and a fixed weight; the floor is the train-vs-test difference of the covariances.
* Belrose et al.'s pipeline (EleutherAI/features-across-time ``scripts/train_vision.py``): every
  dataset converted to RGB (3 identical channels), concept-erasure ``QuadraticFitter`` (float32,
  optimal linear shrinkage over the 3p coordinates) and ``ot_map`` (float32 pseudo-inverse cut at
  lambda_max * 3p * eps32). Emulated on the grey images (``belrose_covariances`` +
  ``belrose_transport``: equal to concept-erasure run literally on replicated digits to 0.0075 on a
  pixel scale of ~3, ``literal_check``); how many source directions its cut drops, and how far the
  edited *training* images' covariance is from the target's (the moment match the edit promises).
* ``--train STEPS`` (0: the dataset's default steps) ``--seeds N`` ``-o KEY=VALUE``: one engine run
  of the dataset's default recipe scoring all five variants (ours with ``ot_shrinkage=optimal``,
  clipped to [0, 1], ours with the ``heldout`` weight of ``ot_shrinkage.py``, Belrose's, Belrose's
  clipped) at every checkpoint: target accuracy max@step -> final and source accuracy.
  Measured (one run per training seed 0-3, 4096 steps): optimal x0.948/0.912/0.924/0.905, heldout
  (w = 0.02) x0.935/0.904/0.928/0.897; see ``gaussian_ot.py`` for why 0.9 is not robust.
  Recipe variants (constant rate, weight decay, AdamW), a 5000-image OT probe and a no-trend
  null for the ratio: ``benchmarks/ot_fall/`` (its README has the table).

Run: ``DSB_DATA_DIR=../shared/data python benchmarks/bench_ot_fall.py [--datasets digits fashion_mnist]
[--train 0 --seeds 2]`` (digits always works; Fashion-MNIST: 46 CPU-s with its probes cached, the
training adds ~500 CPU-s for 2 seeds x 4096 steps).

Measured (1 thread, loaded 2-core machine). Fashion-MNIST: kNN-5 target / source on ours 0.796 /
0.037, clipped 0.777 / 0.044, Belrose's 0.784 / 0.039 (real images 0.857 correct); pixels outside
[0, 1]: ours 25% in [-4.91, 34.36], Belrose's 23% in [-1.97, 4.30]; Belrose's cut drops 299-510 of
784 source directions per class, so its edited training images miss the target covariance by 0.254
(relative Frobenius; ours 0.009); held-out covariance error 0.331 (optimal shrinkage), 0.212
(weight 0.2), floor 0.106. Digits: kNN target 0.989 / source 0.000 (Belrose's 0.983 / 0.000), 29%
of pixels outside [0, 1], no direction cut, training-covariance error ours 0.103, Belrose's 0.051.
Training (default recipe, convnet, 4096 steps; OT target accuracy final/max, seeds 0 / 1; source
accuracy 2-6% throughout): ours x0.920 / x0.864, Belrose's x0.895 / x0.830, both clipped
x0.96-0.99; with ``-o crop=3 flip=true`` (Belrose's augmentation less RandAugment): ours x0.854 /
x0.910, Belrose's x0.815 / x0.884, clipped x0.997-1.000. Digits (MLP default): every variant
x0.994-1.000. ~500 CPU-s per 2-seed Fashion-MNIST run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dsb_widgets.data import load_images
from dsb_widgets.data.common import ImageData
from dsb_widgets.engine.image_probes import _subset, build_image_probes, class_stats, ot_shrinkage_weight
from dsb_widgets.engine.task import Probe, probe_seed
from dsb_widgets.gaussian_ot import GaussianOT
from dsb_widgets.options_images import ImageOptions
from dsb_widgets.stats import ClassStats


def knn_predict(train: ImageData, x: torch.Tensor, k: int = 5, chunk: int = 250) -> torch.Tensor:
    """Majority label of the k nearest training images (Euclidean, raw pixels)."""
    xt = train.x.flatten(1)
    preds = []
    for i in range(0, len(x), chunk):
        idx = torch.cdist(x[i:i + chunk].flatten(1).float(), xt).topk(k, largest=False).indices
        votes = torch.nn.functional.one_hot(train.y[idx], train.num_classes).sum(1)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def heldout_cov_error(train: ImageData, test: ImageData, shrinkage: str | float) -> float:
    """Mean relative Frobenius error between transported test images' covariance and the target's."""
    ot = GaussianOT.fit(class_stats(train), shrinkage=shrinkage)  # type: ignore[arg-type]
    k = train.num_classes
    errs = []
    for p in range(k):
        q = (p + 1 + p % (k - 1)) % k
        xp = test.x[test.y == p]
        y = ot.transport(xp, p, q).flatten(1).double()
        tq = torch.cov(test.x[test.y == q].flatten(1).double().T)
        errs.append(float((torch.cov(y.T) - tq).norm() / tq.norm()))
    return sum(errs) / k


def insample_cov_error(train: ImageData, belrose: bool) -> float:
    """Mean relative Frobenius error between transported *training* images' covariance and the
    target's training covariance (what the map is built to match): ours vs Belrose's pipeline."""
    st, k = class_stats(train), train.num_classes
    ours, (bcov, _) = GaussianOT.fit(st, shrinkage="optimal"), belrose_covariances(st)
    errs = []
    for p in range(k):
        q, xp = (p + 1 + p % (k - 1)) % k, train.x[train.y == p]
        src, tgt = torch.full((len(xp),), p), torch.full((len(xp),), q)
        y = (belrose_transport(xp, src, tgt, st.mean, bcov, 3 * xp[0].numel())[0] if belrose
             else ours.transport(xp, p, q))
        errs.append(float((torch.cov(y.flatten(1).double().T) - st.cov[q]).norm() / st.cov[q].norm()))
    return sum(errs) / k


EPS32 = torch.finfo(torch.float32).eps


def belrose_covariances(stats: ClassStats, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey-image equivalent of Belrose et al.'s covariances: their code converts every dataset
    to RGB (c identical channels, d = c p) and shrinks with concept-erasure's optimal linear
    shrinkage over all d coordinates. For S_c = S (x) 11^T that weight is
    s' = c^2 tr(S)^2 / (n (c^2 ||S||_F^2 - c tr(S)^2 / p)), and on the channel-sum subspace (the
    only one replicated images occupy) the shrunk matrix is c [(1 - s') S + (s' / c) t I],
    t = tr(S) / p: grey OT with a weaker identity term. Returns ((K, p, p) without the factor c,
    which the OT map ignores, and s' (K,))."""
    cov, n, c = stats.cov, stats.counts.to(torch.float64), channels
    p = cov.shape[-1]
    tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)
    s = c * c * tr**2 / (n * (c * c * cov.pow(2).sum((-2, -1)) - c * tr**2 / p))
    eye = torch.eye(p, dtype=cov.dtype)
    return (1 - s)[:, None, None] * cov + (s * tr / (c * p))[:, None, None] * eye, s


def _eigh32(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam, u = torch.linalg.eigh(a.double())  # concept-erasure: eigh in float64, then cast back
    return lam.float().clamp_min(0.0), u.float()


def belrose_transport(x: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, mean: torch.Tensor,
                      cov: torch.Tensor, d_cut: int) -> tuple[torch.Tensor, list[int]]:
    """concept-erasure's ``ot_map`` + ``QuadraticEditor.transport`` as Belrose et al. run it
    (float32 statistics): pseudo-inverse square root cut at lambda_max * d_cut * eps(float32),
    d_cut = c p for their RGB images. Returns edited x and the source dimensions cut per class."""
    xf, out, cut = x.flatten(1).float(), torch.empty(x.shape[0], x[0].numel()), []
    for p in torch.unique(src).tolist():
        lam, u = _eigh32(cov[p])
        keep = lam > lam[-1] * d_cut * EPS32
        cut.append(int((~keep).sum()))
        sq = (u * lam.sqrt()) @ u.T
        rs = (u * torch.where(keep, lam.rsqrt(), torch.zeros_like(lam))) @ u.T
        for q in torch.unique(tgt[src == p]).tolist():
            lq, uq = _eigh32(sq @ cov[q].float() @ sq)
            a = rs @ ((uq * lq.sqrt()) @ uq.T) @ rs
            idx = ((src == p) & (tgt == q)).nonzero().flatten()
            out[idx] = (xf[idx] - mean[p].float()) @ a.T + mean[q].float()
    return out.reshape(x.shape), cut


def literal_check(train: ImageData, test: ImageData, channels: int = 3) -> float:
    """Max |concept-erasure on c-fold replicated images (channel mean) - belrose_transport|."""
    from concept_erasure import QuadraticFitter

    editor = QuadraticFitter.fit(train.x.float().repeat(1, channels, 1, 1).flatten(1), train.y).editor()
    g = torch.Generator().manual_seed(0)
    b = (test.y + torch.randint(1, train.num_classes, test.y.shape, generator=g)) % train.num_classes
    xr = test.x.float().repeat(1, channels, 1, 1).flatten(1)
    lit = torch.stack([editor.transport(xr[i:i + 1], int(test.y[i]), int(b[i]))[0] for i in range(len(b))])
    cov, _ = belrose_covariances(class_stats(train), channels)
    mine, _ = belrose_transport(test.x, test.y, b, class_stats(train).mean, cov, channels * test.x[0].numel())
    return float((lit.view(len(b), channels, -1).mean(1) - mine.flatten(1)).abs().max())


def edit_variants(train: ImageData, test: ImageData, ot: Probe) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The run's ``ot`` probe, the same images through Belrose et al.'s pipeline, each also clipped."""
    gen = torch.Generator().manual_seed(probe_seed(0, "ot"))
    src, y = _subset(test, 1000, gen)  # the unedited images behind the ot probe
    assert ot.target is not None and torch.equal(y, ot.y)
    st = class_stats(train)
    cov, _ = belrose_covariances(st)
    bel, cut = belrose_transport(src, ot.y, ot.target, st.mean, cov, 3 * src[0].numel())
    w = ot_shrinkage_weight(train, st, ImageOptions(ot_shrinkage="heldout"))  # ot_shrinkage.py's rule
    held = GaussianOT.fit(st, shrinkage=w).transport(src, ot.y, ot.target)
    return {"ot": ot.x, "ot_clip": ot.x.clamp(0, 1), "ot_heldout": held, "ot_belrose": bel,
            "ot_belrose_clip": bel.clamp(0, 1)}, cut


def side_by_side(name: str, variants: dict[str, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor],
                 steps: int, seeds: int, options: dict[str, str], data_dir: str | None) -> None:
    """One engine run of the dataset's default recipe; every OT variant is scored at every checkpoint."""
    from dsb_widgets.engine.images import build_images_task
    from dsb_widgets.engine.loop import train as run_train
    from dsb_widgets.engine.task import RunConfig, resolve_config

    cfg = resolve_config(RunConfig(experiment="images", dataset=name, steps=steps or None, seeds=seeds,
                                   probes=("real",), probe_size=1000, data_dir=data_dir, options=options))
    task = build_images_task(cfg)  # every OT variant below, "ot" = ot_shrinkage=optimal, is an extra probe
    ot = next(iter(variants.values()))
    task.probes += [Probe(k, 2.0, v.reshape(ot.shape), targets[0], target=targets[1]) for k, v in variants.items()]
    t0 = time.process_time()
    res = run_train(cfg, task=task, threads=1).dataset
    print(f"{name}: {cfg.model}, {cfg.steps} steps, options {options or 'default'}, {seeds} seeds: "
          f"{time.process_time() - t0:.0f} CPU-s")
    steps_ = res.step.values
    for seed in range(seeds):
        real = res.loss.sel(probe="real").values[:, seed]
        print(f"  seed {seed}: real loss min {real.min():.3f} final {real[-1]:.3f}")
        for k in variants:
            acc = res.target_accuracy.sel(probe=k).values[:, seed]
            j = int(acc.argmax())
            print(f"  seed {seed}: {k:16s} target acc {acc[j]:.3f}@{steps_[j]} -> {acc[-1]:.3f} "
                  f"(x{acc[-1] / acc[j]:.3f}), source acc {res.accuracy.sel(probe=k).values[-1, seed]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion_mnist"])
    ap.add_argument("--train", type=int, default=-1, metavar="STEPS",
                    help="also train the dataset's default recipe (0: its default steps) and score every variant")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("-o", nargs="*", default=[], metavar="KEY=VALUE", help="image options of the training run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data_dir = os.environ.get("DSB_DATA_DIR")
    for name in args.datasets:
        try:
            train, test = load_images(name, "train", data_dir), load_images(name, "test", data_dir)
        except Exception as err:  # noqa: BLE001  (a missing dataset is a skipped row, not a crash)
            print(f"{name}: skipped ({err})")
            continue
        t0 = time.process_time()
        real, ot = build_image_probes(train, test, ("real", "ot"), 1000, 0)
        assert ot.target is not None
        gen = torch.Generator().manual_seed(probe_seed(0, "ot"))
        src, _ = _subset(test, 1000, gen)  # the unedited images behind the ot probe
        variants, cut = edit_variants(train, test, ot)
        if name == "digits":
            print(f"{name}: Belrose pipeline emulated vs concept-erasure on RGB-replicated images, max |diff| "
                  f"{literal_check(train, test):.4f} (pixel scale ~3)")
        print(f"{name}: Belrose pipeline's float32 pseudo-inverse drops {cut} of {src[0].numel()} source dims; "
              f"covariance of edited training images vs the target's: ours {insample_cov_error(train, False):.3f}, "
              f"Belrose pipeline {insample_cov_error(train, True):.3f}")
        pr, ps = knn_predict(train, real.x), knn_predict(train, src)

        def share(pred: torch.Tensor, lab: torch.Tensor) -> str:
            return f"{float((pred == lab).float().mean()):.3f}"

        print(f"{name}: kNN-5 on real test images {share(pr, real.y)} correct; "
              f"on the unedited sources {share(ps, ot.y)}")
        for k, v in variants.items():
            x, pe = v.flatten(1), knn_predict(train, v.reshape(src.shape))
            print(f"{name}: {k:16s} kNN-5 target b {share(pe, ot.target)}, source a {share(pe, ot.y)}; pixels "
                  f"outside [0, 1] {float(((x < 0) | (x > 1)).float().mean()):.3f}, range [{float(x.min()):.2f}, "
                  f"{float(x.max()):.2f}]")
        floor = sum(float((class_stats(train).cov[c] - torch.cov(test.x[test.y == c].flatten(1).double().T)).norm()
                          / torch.cov(test.x[test.y == c].flatten(1).double().T).norm())
                    for c in range(train.num_classes)) / train.num_classes
        w = ot_shrinkage_weight(train, class_stats(train), ImageOptions(ot_shrinkage="heldout"))
        print(f"{name}: held-out covariance error, optimal shrinkage {heldout_cov_error(train, test, 'optimal'):.3f}, "
              f"heldout rule (weight {w}) {heldout_cov_error(train, test, w):.3f}, "  # type: ignore[arg-type]
              f"weight 0.2 {heldout_cov_error(train, test, 0.2):.3f}, floor {floor:.3f}; "
              f"{time.process_time() - t0:.0f} CPU-s")
        if args.train >= 0:
            opts = dict(kv.split("=", 1) for kv in args.o)
            assert ot.target is not None
            side_by_side(name, variants, (ot.y, ot.target), args.train, args.seeds, opts, data_dir)


if __name__ == "__main__":
    main()
