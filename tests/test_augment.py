"""random_crop equals torchvision's RandomCrop(padding=p) window by window (Belrose et al.'s augmentation)."""

from typing import Callable

import pytest
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


# --- random_flip: torchvision's RandomHorizontalFlip(0.5), per image, from the run's generator ----------------
def _flipped(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which images of ``out`` are x's mirror images (each must be one or the other)."""
    same = (out == x).flatten(1).all(1)
    mirror = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirror).all()), "every image is itself or its left-right mirror"
    return mirror & ~same


def test_flip_mirrors_about_half_the_images_each_on_its_own() -> None:
    from dsb_widgets.engine.augment import random_flip

    x = torch.rand(4000, 2, 5, 7)  # no image is its own mirror (continuous pixels)
    out = random_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    flipped = _flipped(x, out)
    frac = float(flipped.float().mean())
    assert abs(frac - 0.5) < 0.04, frac  # Binomial(4000, 1/2): sd 0.008, this is 5 sd
    # per image, not once per batch: runs of equal decisions are as short as coin flips' (mean ~2)
    changes = int((flipped[1:] != flipped[:-1]).sum())
    assert 1700 < changes < 2300, changes
    assert random_flip(x, torch.Generator(), p=0.0) is x
    assert bool(_flipped(x, random_flip(x, torch.Generator().manual_seed(1), p=1.0)).all())


def test_flip_is_deterministic_in_the_generator_and_keeps_its_former_draws() -> None:
    """Same generator state -> same flips; the draws are exactly those the image sampler made inline
    before it moved here (``torch.rand(B) < 0.5``), so seeds' batch streams are unchanged."""
    from dsb_widgets.engine.augment import random_flip

    x = torch.rand(64, 1, 4, 4)
    a = random_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_flip(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, random_flip(x, torch.Generator().manual_seed(4)))
    g = torch.Generator().manual_seed(3)
    m = torch.rand(64, generator=g) < 0.5  # the former inline code
    assert torch.equal(a, torch.where(m[:, None, None, None], x.flip(-1), x))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    random_flip(x, g1)
    torch.rand(64, generator=g2)
    assert torch.equal(g1.get_state(), g2.get_state())  # one draw per image, nothing more


def test_augmentation_reads_nothing_back_to_the_host(monkeypatch: pytest.MonkeyPatch,
        spy_host_reads: Callable[[], list[str]]) -> None:
    """Crop and flip draw on the generator's device and select with tensor ops: no .item()/.cpu()/bool()."""
    from dsb_widgets.engine.augment import random_flip

    x = torch.rand(16, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    calls = spy_host_reads()
    random_flip(random_crop(x, 2, gen), gen)
    monkeypatch.undo()
    assert calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_augmentation_runs_on_the_device_with_a_device_generator() -> None:
    from dsb_widgets.engine.augment import random_flip

    x = torch.rand(256, 3, 8, 8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = random_flip(random_crop(x, 2, gen), gen)
    assert out.device == x.device and out.shape == x.shape
    y = random_flip(x, torch.Generator(device="cuda").manual_seed(0))
    assert abs(float(_flipped(x, y).float().mean()) - 0.5) < 0.15


def test_flip_option_mirrors_the_training_batches_of_the_image_task() -> None:
    """-o flip=true on digits: the same images are drawn, about half of them mirrored."""
    from dsb_widgets.engine.task import RunConfig, build_task, resolve_config

    base = dict(experiment="images", dataset="digits", steps=4, seeds=1, probe_size=50, probes=("real",))
    plain = build_task(resolve_config(RunConfig(**base)))  # type: ignore[arg-type]
    flipped = build_task(resolve_config(RunConfig(**base, options={"flip": True})))  # type: ignore[arg-type]
    x0, y0 = plain.sample_batch(torch.Generator().manual_seed(0), 256)
    x1, y1 = flipped.sample_batch(torch.Generator().manual_seed(0), 256)
    assert torch.equal(y0, y1)
    symmetric = (x0 == x0.flip(-1)).flatten(1).all(1)
    frac = float(_flipped(x0, x1)[~symmetric].float().mean())
    assert 0.35 < frac < 0.65, frac  # Binomial(256, 1/2): sd 0.031
