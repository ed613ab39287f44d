"""Per-dataset defaults of the image experiment and the convnet they pick."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dsb_widgets.engine import RunConfig
from dsb_widgets.engine.task import resolve_config
from dsb_widgets.models.airbench import AirbenchNet, patch_whitening
from dsb_widgets.models.vision import VisionConfig, init_statistics, make_vision_model


def test_28x28_datasets_default_to_the_convnet_and_flags_still_win() -> None:
    for name in ("mnist", "fashion_mnist"):
        cfg = resolve_config(RunConfig(dataset=name))
        # Belrose et al.'s recipe at 16,384 steps (benchmarks/ot_fall/README.md); CIFAR-10 keeps airbench's
        assert (cfg.model, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.steps) == ("convnet", "adamw", 1e-3, 128, 16384)
        assert (cfg.weight_decay, cfg.warmup, cfg.options["crop"]) == (0.05, 2000, 3)
        assert "maxent3" in cfg.probes
    cifar = resolve_config(RunConfig(dataset="cifar10"))
    assert (cifar.model, cifar.lr, cifar.batch_size, cifar.steps, cifar.warmup) == ("convnet", 0.2, 256, 1024, 64)
    assert cifar.weight_decay == 5e-4
    assert (cifar.options["width"], cifar.options["flip"]) == (512, True)
    svhn = resolve_config(RunConfig(dataset="svhn"))
    assert (svhn.model, svhn.options["flip"]) == ("convnet", False)  # digits are not mirror-symmetric
    assert resolve_config(RunConfig(dataset="cifar10", model="airbench", options={"width": 128})).model == "airbench"
    assert resolve_config(RunConfig(dataset="mnist")).options["flip"] is False
    for name in ("mnist", "fashion_mnist"):  # ot_shrinkage.py's cross-validated weight; CIFAR: PPCA maps
        assert resolve_config(RunConfig(dataset=name)).options["ot_shrinkage"] == "heldout"
        mine = resolve_config(RunConfig(dataset=name, options={"ot_shrinkage": "none"}))
        assert mine.options["ot_shrinkage"] == "none"
    assert cifar.options.get("ot_shrinkage", "optimal") == "optimal"  # the field default
    digits = resolve_config(RunConfig())
    assert (digits.dataset, digits.model, digits.optimizer) == ("digits", "mlp", "adamw")
    assert digits.options.get("ot_shrinkage", "optimal") == "optimal"
    mine = resolve_config(RunConfig(dataset="fashion_mnist", model="mlp", lr=0.01, options={"width": 64}))
    assert (mine.model, mine.lr, mine.options["width"], mine.optimizer) == ("mlp", 0.01, 64, "adamw")


def test_convnet_shapes_and_channels_last() -> None:
    for shape in ((1, 28, 28), (3, 32, 32), (1, 8, 8)):
        net = make_vision_model("convnet", VisionConfig(shape, 10, width=256))
        out = net(torch.rand(5, *shape))
        assert out.shape == (5, 10)
        assert net.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def _smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Correlated RGB images (blurred noise + a colour cast): strongly non-white 2x2 patches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)  # neighbouring pixels correlate
    return 0.5 * x + 0.5 * x.mean(1, keepdim=True) + 0.1  # channels correlate, mean far from 0


def test_patch_whitening_whitens_training_patches() -> None:
    """On the training images' 2x2 patches the whitening layer's outputs have mean 0 and covariance
    diag(lambda / (lambda + eps)) in the eigenbasis: identity for eps -> 0; the second half of the
    channels is the negated first half."""
    x = _smooth_images(200)
    weight, bias = patch_whitening(x, eps=1e-9)
    out = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double())  # (N, 24, 15, 15)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 24)
    torch.testing.assert_close(flat[:, 12:], -flat[:, :12])
    white = flat[:, :12]
    cov = torch.cov(white.T, correction=0)
    torch.testing.assert_close(white.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=2e-3, rtol=0)
    raw = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    assert torch.linalg.cond(torch.cov(raw.T)) > 100  # the input was far from white
    # with the default eps the weakest directions are shrunk, never amplified past 1
    w2, b2 = patch_whitening(x)
    eig = torch.linalg.eigvalsh(torch.cov(torch.nn.functional.conv2d(x, w2, b2)[:, :12].permute(0, 2, 3, 1)
                                          .reshape(-1, 12).T.double(), correction=0))
    assert eig.max() < 1.0 + 1e-3 and eig.min() > 0.1


def test_patch_whitening_uses_only_the_images_given() -> None:
    """The filters are a function of the training images passed (here: the first max_images)."""
    x = _smooth_images(300)
    a = patch_whitening(x, max_images=100)
    b = patch_whitening(x[:100])
    c = patch_whitening(x[100:200])
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[0], c[0], atol=1e-3)


def test_airbench_model_frozen_whitening_channels_last_and_learns() -> None:
    """Shapes on 28x28 / 32x32 / 8x8; whitening frozen and equal for every seed; the model fits a
    small two-class set of textures (loss falls well below chance, training accuracy 100%)."""
    for shape in ((1, 28, 28), (3, 32, 32), (1, 8, 8)):
        init = init_statistics("airbench", torch.rand(64, *shape))
        net = make_vision_model("airbench", VisionConfig(shape, 10, width=32), init)
        assert isinstance(net, AirbenchNet)
        assert net(torch.rand(5, *shape)).shape == (5, 10)
        assert net.whiten.bias is not None and net.whiten.bias.requires_grad
        assert not net.whiten.weight.requires_grad
        assert net.features[1].weight.is_contiguous(memory_format=torch.channels_last)
    x = _smooth_images(64, seed=1)
    y = torch.arange(64) % 2
    x[y == 1] = x[y == 1].transpose(-1, -2).flip(-1)  # class 1: the same textures turned 90 degrees
    x[y == 1, :, ::4] += 0.3  # ... with horizontal stripes
    init = init_statistics("airbench", x)
    models: list[AirbenchNet] = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = make_vision_model("airbench", VisionConfig((3, 16, 16), 2, width=32), init)
        assert isinstance(model, AirbenchNet)
        models.append(model)
    torch.testing.assert_close(models[0].whiten.weight, models[1].whiten.weight)  # same whitening, all seeds
    assert not torch.allclose(models[0].head.weight, models[1].head.weight)
    net = models[0]
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    frozen = net.whiten.weight.clone()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(net.whiten.weight, frozen)
    net.eval()
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(net(x), y).item() < 0.1  # chance: ln 2 = 0.69
        assert (net(x).argmax(1) == y).all()


def test_heldout_ot_shrinkage_is_selected_cached_and_in_the_probe_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-o ot_shrinkage=heldout``: the OT probe uses the weight ``heldout_shrinkage`` selects on the
    training split (equal to the probe built with that fixed weight), the selection rule is part of
    the probe's cache key, and PPCA maps (CIFAR-sized) refuse it with a one-line fix."""
    from sklearn.datasets import load_digits

    from dsb_widgets import probe_cache
    from dsb_widgets.data.common import ImageData
    from dsb_widgets.engine.image_probes import build_image_probes, class_stats
    from dsb_widgets.errors import ConfigError
    from dsb_widgets.ot_shrinkage import SPEC, heldout_shrinkage

    monkeypatch.setenv("DSB_PROBE_CACHE", "0")
    keys: list[dict[str, Any]] = []
    real_cached = probe_cache.cached

    def recording(kind: str, prov: dict[str, Any], build: Any) -> Any:
        keys.append(prov)
        return real_cached(kind, prov, build)

    monkeypatch.setattr(probe_cache, "cached", recording)
    d = load_digits()
    x, y = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target)
    train = ImageData(x[:1400], y[:1400], [str(i) for i in range(10)], "digits")
    test = ImageData(x[1400:], y[1400:], [str(i) for i in range(10)], "digits")
    w = heldout_shrinkage(train.x, train.y, class_stats(train)).weight
    held, = build_image_probes(train, test, ("ot",), 100, 0, {"ot_shrinkage": "heldout"})
    fixed, = build_image_probes(train, test, ("ot",), 100, 0, {"ot_shrinkage": str(w)})
    torch.testing.assert_close(held.x, fixed.x)
    ot_keys = [k for k in keys if k.get("probe") == "ot"]
    assert ot_keys[0]["ot_shrinkage_rule"] == SPEC and "ot_shrinkage_rule" not in ot_keys[1]
    assert any(k.get("kind") == "ot_shrinkage" and k.get("rule") == SPEC for k in keys)
    with pytest.raises(ConfigError, match="ot_shrinkage=optimal"):
        build_image_probes(train, test, ("ot",), 100, 0, {"ot_shrinkage": "heldout", "ot_rank": 8})
