"""Grouped-convolution seed stacking (engine/grouped.py) equals separately trained models."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
from torch import nn

from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.grouped import GroupedStack, grouped_or_none, load_stack_state, make_stack, supports_grouping
from dsb_widgets.engine.optim import SGD
from dsb_widgets.models.vision import VisionConfig, make_vision_model

S = 3


def _models(name: str, shape=(1, 8, 8), n: int = S) -> list[nn.Module]:
    out = []
    for s in range(n):
        torch.manual_seed(100 + s)
        out.append(make_vision_model(name, VisionConfig(shape, 10, width=32)))
    return out


@pytest.fixture
def float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("name", ["mlp", "cnn", "convnet", "airbench", "resnet"])
def test_grouped_training_equals_separate_models(name: str, float64: None) -> None:
    """The exactness oracle: S models trained one by one vs the grouped stack, same batches, in
    float64. (In float32 the ResNet-18 on 8x8 inputs, whose last stage normalises 1x1 maps over 6
    samples, amplifies the two paths' rounding differences ~1000x per step: 0.002 of the tolerance
    after one step, 2.6-105x it after two depending on the thread count; in float64 the paths agree
    to 1e-14 after three steps, measured.) Adam's g/|g| would amplify differences where a gradient
    is ~0, and equals torch's elementwise anyway (test_engine_optim)."""
    import copy

    n = 2 if name == "resnet" else S  # ResNet-18 is 11M parameters per seed: keep the test short
    models = _models(name, n=n)
    separate = [copy.deepcopy(m) for m in models]
    stack = grouped_or_none(models, torch.rand(4, 1, 8, 8))
    assert isinstance(stack, GroupedStack)
    opts = [SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for m in separate]
    opt = SGD(stack.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.rand(n, 6, 1, 8, 8, generator=gen)  # a different batch per seed
        y = torch.randint(0, 10, (n, 6), generator=gen)
        for s, (m, o) in enumerate(zip(separate, opts)):
            m.train()
            loss = nn.functional.cross_entropy(m(x[s]), y[s])
            o.zero_grad()
            loss.backward()
            o.step()
        stack.train()
        out = stack(x)  # (S, B, K)
        loss = sum(nn.functional.cross_entropy(out[s], y[s]) for s in range(n))
        opt.zero_grad()
        loss.backward()  # seeds are independent: the sum's gradient is each seed's own
        opt.step()
    for s, m in enumerate(separate):
        got = stack.member(s).state_dict()
        for k, v in m.state_dict().items():  # parameters AND BatchNorm running statistics
            torch.testing.assert_close(got[k], v, rtol=1e-9, atol=1e-11, msg=f"{name} seed {s} {k}")
    xe = torch.rand(5, 1, 8, 8)
    stack.eval()
    ref = torch.stack([m.eval()(xe) for m in separate])
    torch.testing.assert_close(stack(xe, shared=True), ref, rtol=1e-9, atol=1e-11)


def test_decay_groups_clip_and_member_state_round_trip() -> None:
    models = _models("convnet")
    loop = ModelStack([m for m in models], vectorize=False)
    stack = GroupedStack(models)
    d_loop, r_loop = loop.decay_groups()
    d, r = stack.decay_groups()
    assert sum(p.numel() for p in d) == sum(p.numel() for p in d_loop)
    assert sum(p.numel() for p in r) == sum(p.numel() for p in r_loop)
    # a state saved by the loop-stacked engine loads into the grouped stack
    fresh = GroupedStack(_models("convnet"))
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_stack_state(fresh, loop.state_dict())
    for k, v in stack.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # ... and every layout into every other: a resumed run may pick another strategy
    mlp = _models("mlp")
    stacks = [ModelStack(mlp, vectorize=True), ModelStack(mlp, vectorize=False), GroupedStack(mlp)]
    x = torch.rand(4, 1, 8, 8)
    ref = stacks[0](x, shared=True)
    for src in stacks:
        for dst in (ModelStack(_models("mlp"), vectorize=True), ModelStack(_models("mlp"), vectorize=False),
                    GroupedStack(_models("mlp"))):
            with torch.no_grad():
                for p in dst.parameters():
                    p.zero_()
            load_stack_state(dst, src.state_dict())
            torch.testing.assert_close(dst(x, shared=True), ref)
    # per-seed clipping equals torch's clip on each model alone
    x = torch.rand(S, 4, 1, 8, 8)
    stack(x).square().sum().backward()
    sep = [stack.member(s) for s in range(S)]
    for s, m in enumerate(sep):
        m(x[s]).square().sum().backward()
    norms = stack.clip_grad_norm_(0.1)
    for s, m in enumerate(sep):
        ref = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
        torch.testing.assert_close(norms[s], ref, rtol=1e-4, atol=1e-6)


def test_unsupported_layers_fall_back() -> None:
    class WithNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.lin(x))

    assert not supports_grouping(WithNorm())
    assert grouped_or_none([WithNorm(), WithNorm()], torch.rand(2, 4)) is None
    stack = make_stack([WithNorm(), WithNorm()], torch.device("cpu"), torch.rand(2, 4))
    assert isinstance(stack, ModelStack) and stack.vectorized
    single = make_stack([WithNorm()], torch.device("cpu"))
    assert isinstance(single, ModelStack) and not single.vectorized  # one seed: no vmap
    assert isinstance(make_stack(_models("cnn"), torch.device("cpu"), torch.rand(2, 1, 8, 8)), GroupedStack)
