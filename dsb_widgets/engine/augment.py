"""Training-time augmentation of image batches: random crops of the zero-padded image, random flips.

Belrose et al. (ICML 2024, EleutherAI/features-across-time ``train_vision.py``) train every
vision model with ``RandomCrop(h, padding=h // 8)`` and horizontal flips (plus RandAugment):
each image is shifted by up to ``h // 8`` pixels in each direction, the uncovered border filled
with zeros. Probes are built from the *unaugmented* training statistics, as theirs are.

Opt-in here (``-o crop=3 -o flip=true`` is their recipe on 28x28 images, less RandAugment); the
defaults train without it. Measured on Fashion-MNIST (convnet, SGD lr 0.1, 2048 steps, seed 0,
the run's 1000-image ``ot`` probe; OT target accuracy max@step -> final): no augmentation
0.711@256 -> 0.632 (x0.889, real loss 0.301 at the end), crop 0.660@323 -> 0.595 (x0.902, 0.316),
flip 0.691@1625 -> 0.655 (x0.948, 0.284), crop + flip 0.648@81 -> 0.539 (x0.832, 0.320); crop + flip
over the default 4096 steps 0.657@203 -> 0.548 (x0.834, real 0.290 = its minimum, 89.9%). In every
case the accuracy on the *source* label stays at 2-5% and on the same edited images clipped to
[0, 1] the fall disappears (crop + flip: 0.770 at the end is the maximum): augmentation makes the
late network react more to the edit's out-of-range pixels, it does not make it see the source
class through the edit (``gaussian_ot.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_crop(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Each image of x (B, C, H, W) shifted by its own offset in [-pad, pad]^2, zeros shifted in.

    Equal to torchvision's ``RandomCrop((H, W), padding=pad)`` per image: the (H, W) window at
    a uniform offset of the zero-padded (H + 2 pad, W + 2 pad) image. Offsets are drawn from
    ``generator`` (on its own device, so a CUDA generator needs no host sync). pad 0: x itself.
    """
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    dev = generator.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    rows = torch.arange(h, device=x.device)[None, :] + oy[:, None]  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] + ox[:, None]  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp[bi, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced dims first
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Each image of x (B, C, H, W) mirrored left-right (last axis) with probability ``p``, per image.

    torchvision's ``RandomHorizontalFlip(p)`` applied to each image on its own (airbench and
    Belrose et al. flip half the images of every batch). One uniform draw per image,
    ``torch.rand(B, generator=generator) < p``, from ``generator`` on its own device (a CUDA
    generator draws on the GPU: no host sync); flipped images are selected with ``torch.where``,
    so nothing is read back. Same draws as the sampler's former inline flip: seeds' streams are
    unchanged. p 0: x itself (no draw).
    """
    if p <= 0:
        return x
    m = (torch.rand(x.shape[0], generator=generator, device=generator.device) < p).to(x.device, non_blocking=True)
    return torch.where(m[:, None, None, None], x.flip(-1), x)  # (B, C, H, W)
