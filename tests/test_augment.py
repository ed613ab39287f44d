"""random_crop equals torchvision's RandomCrop(padding=p) window by window (Belrose et al.'s augmentation)."""

import torch

from dsb_widgets.engine.augment import random_crop


def _reference(x: torch.Tensor, pad: int, oy: int, ox: int) -> torch.Tensor:
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return xp[:, oy:oy + x.shape[-2], ox:ox + x.shape[-1]]


def test_each_image_is_a_window_of_the_zero_padded_image() -> None:
    x = torch.rand(64, 2, 7, 9)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous()
    offsets = set()
    for i in range(len(x)):
        hits = [(oy, ox) for oy in range(5) for ox in range(5) if torch.equal(out[i], _reference(x[i], 2, oy, ox))]
        assert hits, f"image {i} is not a padded window"
        offsets.add(hits[0])
    assert len(offsets) > 12  # offsets are drawn per image, not once per batch (25 possible)


def test_offsets_cover_the_range_uniformly_and_pad_zero_is_identity() -> None:
    x = torch.zeros(4000, 1, 5, 5)
    x[:, :, 2, 2] = 1.0  # a single bright pixel: its new position is the offset
    out = random_crop(x, 1, torch.Generator().manual_seed(1))
    pos = out[:, 0].flatten(1).argmax(1)
    counts = torch.bincount(pos, minlength=25).reshape(5, 5)[1:4, 1:4].flatten().float()
    assert counts.sum() == 4000 and (counts / 4000 - 1 / 9).abs().max() < 0.02
    assert random_crop(x, 0, torch.Generator()) is x


def test_deterministic_in_the_generator() -> None:
    x = torch.rand(8, 1, 6, 6)
    a = random_crop(x, 1, torch.Generator().manual_seed(3))
    b = random_crop(x, 1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_crop_option_shifts_the_training_batches_of_the_image_task() -> None:
    """-o crop=1 on digits: every batch image is a 1-pixel-padded window of a training image."""
    from dsb_widgets.engine.task import RunConfig, build_task, resolve_config

    base = dict(experiment="images", dataset="digits", steps=4, seeds=1, probe_size=50, probes=("real",))
    plain = build_task(resolve_config(RunConfig(**base)))  # type: ignore[arg-type]
    cropped = build_task(resolve_config(RunConfig(**base, options={"crop": 1})))  # type: ignore[arg-type]
    x0, y0 = plain.sample_batch(torch.Generator().manual_seed(0), 32)
    x1, y1 = cropped.sample_batch(torch.Generator().manual_seed(0), 32)
    assert torch.equal(y0, y1) and not torch.equal(x0, x1)  # same images drawn, then shifted
    for a, b in zip(x0, x1):
        assert any(torch.equal(b, _reference(a, 1, oy, ox)) for oy in range(3) for ox in range(3))
