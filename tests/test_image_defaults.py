"""Per-dataset defaults of the image experiment and the convnet they pick."""

from __future__ import annotations

import torch

from dsb_widgets.engine import RunConfig
from dsb_widgets.engine.task import resolve_config
from dsb_widgets.models.vision import VisionConfig, make_vision_model


def test_28x28_datasets_default_to_the_convnet_and_flags_still_win() -> None:
    for name in ("mnist", "fashion_mnist"):
        cfg = resolve_config(RunConfig(dataset=name))
        assert (cfg.model, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.steps) == ("convnet", "sgd", 0.1, 128, 4096)
        assert "maxent3" in cfg.probes
    assert resolve_config(RunConfig(dataset="cifar10")).options["width"] == 512
    digits = resolve_config(RunConfig())
    assert (digits.dataset, digits.model, digits.optimizer) == ("digits", "mlp", "adamw")
    mine = resolve_config(RunConfig(dataset="fashion_mnist", model="mlp", lr=0.01, options={"width": 64}))
    assert (mine.model, mine.lr, mine.options["width"], mine.optimizer) == ("mlp", 0.01, 64, "sgd")


def test_convnet_shapes_and_channels_last() -> None:
    for shape in ((1, 28, 28), (3, 32, 32), (1, 8, 8)):
        net = make_vision_model("convnet", VisionConfig(shape, 10, width=256))
        out = net(torch.rand(5, *shape))
        assert out.shape == (5, 10)
        assert net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
