"""``airbench``: a narrow BatchNorm CNN with a patch-whitening first layer, for CIFAR-10 on a CPU.

After Keller Jordan's airbench (2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
arXiv:2404.00498) and hlb-cifar10 (tysam-code, 2023): the first layer is a 2x2 convolution whose
filters are the eigenvectors of the training images' 2x2-patch covariance scaled by
``(lambda + eps)^-1/2`` (and their negatives, so the GELU after it keeps both signs), frozen;
then blocks of [3x3 conv (no bias) -> 2x2 max-pool -> BatchNorm -> GELU], global max-pool and a
linear head. Our changes for one CPU thread: one convolution per block (airbench has two),
widths ``width/4, width/2, width`` (default 32/64/128; airbench: 64/256/256), patches centred
(the bias is ``-W mu``, so the layer maps training patches to zero mean and identity covariance
on our [0, 1] pixels), no label smoothing (the engine's loss is plain cross-entropy: smoothing
would put a floor under every probe's loss, Belrose et al., ICML 2024 measure plain CE).

The whitening is computed from *training* images only (``patch_whitening``), once per run, and
handed to every seed's model, so seeds differ only in the trained layers; the whitening layer is
an ordinary ``nn.Conv2d`` (weight frozen) so grouped-seed stacking (``engine/grouped.py``) and
checkpoints treat it like any other layer.

Measured on CIFAR-10 (the JPEG-q75 copy; test accuracy on all 10,000 test images), one thread
of a shared 2-core AMD EPYC (Zen 4), ``torch.set_num_threads(1)``, CPU-seconds of the training
steps (``time.process_time``), width 128 (32/64/128), batch 256, SGD lr 0.2 momentum 0.9, weight
decay 5e-4, 5% linear warm-up then cosine, random flips, one 800-step run (seed 0):

======= ====== ============ =========
step    epochs train CPU-s  test acc.
======= ====== ============ =========
200     1.0    70.6         67.4%
400     2.0    144.2        73.7%
600     3.1    214.0        77.0%
800     4.1    285.6        78.0%
======= ====== ============ =========

So 70% is passed within 2.4 CPU-minutes (73.7% at 144 CPU-s) and the issue's 10 CPU-minutes buy
~8 epochs. ``dsb run images --dataset cifar10 --model airbench -o width=128`` (1024 steps,
warm-up 64, ~370 training CPU-s) ends at 78.95% test accuracy (81.1% with flip test-time
augmentation); its probes: ``engine/images.py``. Cost per step (batch 256, same thread): 359 ms
here; widths 64/128/256 956 ms (2.7x); two convolutions per block 467 ms (1.3x); bfloat16
autocast 197 ms (0.55x, not used: CPUs without AVX512-BF16 run it slower, and it rounds the
probes' losses); a 3x3 first conv on raw pixels instead of the whitening 277 ms, and in the same
800-step run 54.9/66.0/72.4/73.2% at 46.5/95.1/139.4/187.7 CPU-s: the whitening is worth +12.5
points at 200 steps, +4.8 at 800, +1.3 at ~140 CPU-s (73.7 vs 72.4%). Its cost for the DSB
probes: at step 0 the loss on independent-pixel maxent1 samples is 3.075 (chance 2.303) and it
never falls, because the whitening scales the patch directions real images barely use by (lambda
+ eps)^-1/2; eps = 1.0 x mean(lambda) leaves only a dip (2.304 -> 2.283 at step 8) while the
unwhitened convnet falls to 2.03 at step 16 (128-step checks, seed 0) and to 1.968@64 in its
1024-step run. Hence CIFAR-10's default model is the convnet on this schedule.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def patch_whitening(x: torch.Tensor, k: int = 2, eps: float = 5e-4, max_images: int = 5000,
                    chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Whitening filters of the ``k x k`` patches of images ``x`` (N, C, H, W).

    Returns ``(weight, bias)`` of a ``Conv2d(C, 2 C k^2, k)``: rows ``+-(lambda_i + eps_rel)^-1/2 v_i^T``
    over the eigenpairs of the patch covariance and bias ``-W mu``, so on the patches of ``x`` the
    first ``C k^2`` outputs have mean 0 and covariance ``diag(lambda / (lambda + eps_rel))`` (~ I).
    ``eps_rel = eps * mean(lambda)``: airbench's 5e-4 on unit-variance inputs, scale-free here.
    Uses the first ``max_images`` images (airbench: 5000), in chunks (bounded memory).
    """
    x = x[:max_images].to(torch.float64)
    c = x.shape[1]
    d = c * k * k
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for start in range(0, len(x), chunk):
        p = x[start:start + chunk].unfold(2, k, 1).unfold(3, k, 1)  # (n, C, H', W', k, k)
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, d)  # (n H' W', C k k): the conv weight's order
        total += p.sum(0)
        outer += p.T @ p
        count += len(p)
    mu = total / count
    cov = outer / count - torch.outer(mu, mu)
    lam, vecs = torch.linalg.eigh(cov)
    lam = lam.clamp(min=0.0)
    w = (vecs / torch.sqrt(lam + eps * lam.mean())).T  # (d, d): rows are scaled eigenvectors
    weight = torch.cat([w, -w]).reshape(2 * d, c, k, k)
    bias = -(torch.cat([w, -w]) @ mu)
    return weight.float(), bias.float()


class AirbenchNet(nn.Module):
    """whiten (2x2, frozen) -> GELU -> [conv3x3 -> maxpool2 -> BN -> GELU] x 3 -> global max -> linear.

    ``widths``: channels of the three blocks. ``whitening``: ``(weight, bias)`` from
    :func:`patch_whitening` on the training images; ``None`` keeps PyTorch's default init of that
    layer (a model built without data, e.g. in unit tests). Channels-last, as ``ConvNet``.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 128),
                 whitening: tuple[torch.Tensor, torch.Tensor] | None = None, k: int = 2) -> None:
        super().__init__()
        c = 2 * in_channels * k * k
        self.whiten = nn.Conv2d(in_channels, c, k, bias=True)
        if whitening is not None:
            with torch.no_grad():
                self.whiten.weight.copy_(whitening[0])
                self.whiten.bias.copy_(whitening[1])  # type: ignore[union-attr]  # built with bias=True
        self.whiten.weight.requires_grad_(False)  # frozen (airbench); its bias trains
        layers: list[nn.Module] = [nn.GELU()]
        for cout in widths:
            layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.MaxPool2d(2, ceil_mode=True),
                       nn.BatchNorm2d(cout), nn.GELU()]
            c = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack this overload

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(self.whiten(x)).amax(dim=(-2, -1)))
