"""S seeds of a convolutional (or MLP) model as ONE wide model: grouped convolutions, per-seed BatchNorm.

Seeds are laid side by side along the channel axis: activations are (B, S*C, H, W) with seed s
in channels [s*C, (s+1)*C). Then

- ``Conv2d(cin, cout, groups=g)`` x S == ``Conv2d(S*cin, S*cout, groups=S*g)`` with the S kernels
  concatenated along the output channels (a grouped convolution never mixes groups);
- ``BatchNorm2d(C)`` x S == ``BatchNorm2d(S*C)``: statistics are per channel, i.e. per seed, over
  that seed's own batch (running statistics and ``num_batches_tracked`` included);
- ``Linear(i, o)`` x S == a batched matmul on (B, S, i) with weights (S, o, i) (``GroupedLinear``);
- ReLU/GELU/max-pooling/spatial means/residual sums act per channel and are unchanged; Flatten
  keeps seed-major order, so an MLP's first Linear sees each seed's own pixels.

The model's own ``forward`` code runs unchanged on the wide modules. Every parameter is stored
seed-major along dim 0 (``p.view(S, -1)[s]`` is seed s), and AdamW/SGD act elementwise, so one
optimizer over the wide parameters equals S independent ones (tested against separately trained
models in ``tests/test_grouped_stack.py``). Only whitelisted layers are converted, and the wide
model is checked against the S models on a random batch when built; anything else falls back to
vmap (``engine/ensemble.py``).

Why: ``vmap`` over convolutions on CPU ran 1.49x *slower* than 4 sequential runs (issue 17)
and cannot update BatchNorm statistics. Measured in ``benchmarks/bench_seeds.py``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from dsb_widgets.engine.ensemble import ModelStack

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten,
                nn.Sequential, nn.ModuleList)


class GroupedLinear(nn.Module):
    """S independent ``Linear(i, o)`` on (B, S*i) -> (B, S*o); weight (S, o, i), bias (S, o)."""

    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.seeds, self.in_features, self.out_features = len(layers), layers[0].in_features, layers[0].out_features
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]).clone())
        self.bias = (nn.Parameter(torch.stack([m.bias.detach() for m in layers]).clone())
                     if layers[0].bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        xs = x.reshape(b, self.seeds, self.in_features).transpose(0, 1)  # (S, B, i)
        out = torch.bmm(xs, self.weight.transpose(1, 2))  # (S, B, o)
        if self.bias is not None:
            out = out + self.bias[:, None, :]
        return out.transpose(0, 1).reshape(b, self.seeds * self.out_features)


def _copy_cat(dst: torch.Tensor | None, srcs: Sequence[torch.Tensor | None]) -> None:
    """``dst`` <- the S seeds' tensors concatenated along dim 0 (all present when the layers' flags say so)."""
    present = [t for t in srcs if t is not None]
    if dst is None or len(present) != len(srcs):
        raise ValueError("the seeds' layers disagree on which parameters / buffers they have")
    dst.copy_(torch.cat(present))


def _grouped_conv(layers: list[nn.Conv2d]) -> nn.Conv2d:
    m, s = layers[0], len(layers)
    # torch's stubs type the attributes as tuple[int, ...], the constructor as tuple[int, int]
    wide = nn.Conv2d(s * m.in_channels, s * m.out_channels, m.kernel_size, m.stride, m.padding,  # type: ignore[arg-type]
                     m.dilation, groups=s * m.groups, bias=m.bias is not None,  # type: ignore[arg-type]
                     padding_mode=m.padding_mode)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([c.weight for c in layers]))
        if m.bias is not None:
            _copy_cat(wide.bias, [c.bias for c in layers])
    wide.weight.requires_grad_(m.weight.requires_grad)  # a frozen layer (airbench's whitening) stays frozen
    return wide.to(m.weight.device, m.weight.dtype)


def _grouped_bn(layers: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    m, s = layers[0], len(layers)
    wide = type(m)(s * m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    with torch.no_grad():
        if m.affine:
            _copy_cat(wide.weight, [b.weight for b in layers])
            _copy_cat(wide.bias, [b.bias for b in layers])
        if m.track_running_stats:
            _copy_cat(wide.running_mean, [b.running_mean for b in layers])
            _copy_cat(wide.running_var, [b.running_var for b in layers])
            if wide.num_batches_tracked is None or m.num_batches_tracked is None:
                raise ValueError("BatchNorm with track_running_stats but no num_batches_tracked")
            wide.num_batches_tracked.copy_(m.num_batches_tracked)
    return wide.to(next(iter([*m.parameters(), *m.buffers()])).device)


def supports_grouping(model: nn.Module) -> bool:
    """Every leaf is a Conv2d / BatchNorm2d / Linear or acts per channel (whitelist)."""
    for mod in model.modules():
        if not list(mod.children()):
            ok = isinstance(mod, (nn.Conv2d, nn.BatchNorm2d, nn.Linear) + _ELEMENTWISE)
            if not ok:
                return False
    return any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def _widen(models: list[nn.Module]) -> nn.Module:
    """A copy of models[0] whose Conv2d/BatchNorm2d/Linear children hold all S seeds."""
    wide = copy.deepcopy(models[0])

    def walk(target: nn.Module, sources: list[nn.Module]) -> None:
        for name, child in list(target.named_children()):
            subs = [getattr(m, name) for m in sources]
            if isinstance(child, nn.Conv2d):
                setattr(target, name, _grouped_conv(subs))
            elif isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(target, name, _grouped_bn(subs))
            elif isinstance(child, nn.Linear):
                setattr(target, name, GroupedLinear(subs))
            else:
                walk(child, subs)

    walk(wide, models)
    return wide


class GroupedStack(nn.Module):
    """S seeds as one wide model; the same interface as :class:`~dsb_widgets.engine.ensemble.ModelStack`.

    ``forward(x)``: x (S, B, C, H, W), one batch per seed, or with ``shared=True`` (B, C, H, W) fed
    to every seed; returns (S, B, K).
    """

    vectorized = False
    _template: nn.Module  # set with object.__setattr__: not a submodule

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.size = len(models)
        self.wide = _widen(models)
        object.__setattr__(self, "_template", copy.deepcopy(models[0]))  # not a submodule
        # original (per-seed) number of dims of each wide parameter, for decay_groups
        self._orig_dims = {name: models[0].get_parameter(self._orig_name(name)).dim()
                           for name, _ in self.wide.named_parameters()}

    @staticmethod
    def _orig_name(wide_name: str) -> str:
        return wide_name  # the wide model keeps the original module paths and parameter names

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        s = self.size
        if shared:
            xw = x.repeat(1, s, *([1] * (x.dim() - 2)))  # (B, S*C, ...)
        else:
            xw = x.transpose(0, 1).reshape(x.shape[1], s * x.shape[2], *x.shape[3:])  # (B, S*C, ...)
        out = self.wide(xw)  # (B, S*K)
        return out.reshape(out.shape[0], s, -1).transpose(0, 1)  # (S, B, K)

    def decay_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(weights to decay, the rest) by each seed's own parameter shape (nanoGPT's rule)."""
        decay: list[nn.Parameter] = []
        rest: list[nn.Parameter] = []
        for name, p in self.wide.named_parameters():
            (decay if self._orig_dims[name] >= 2 else rest).append(p)
        return decay, rest

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each seed's gradient to total 2-norm ``max_norm`` (as torch's clip on each model)."""
        grads = [p.grad for p in self.wide.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.size)
        norms = torch.stack([g.detach().float().reshape(self.size, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.view(self.size, -1).mul_(scale.to(g.dtype)[:, None])
        return norms

    def member(self, i: int) -> nn.Module:
        """Seed i as an ordinary module (a copy)."""
        model = copy.deepcopy(self._template)
        state = {}
        for name, t in self.wide.state_dict().items():
            orig = model.state_dict()[name]
            state[name] = (t.clone() if name.endswith("num_batches_tracked")
                           else t.reshape(self.size, *orig.shape)[i].clone())
        model.load_state_dict(state)
        return model.to(next(self.wide.parameters()).device).train(self.training)


@torch.no_grad()
def grouped_or_none(models: list[nn.Module], example: torch.Tensor | None = None) -> GroupedStack | None:
    """The grouped stack when every layer converts and its outputs equal the S models' on a random
    batch (eval mode, so no statistics move); else None (the caller falls back to vmap / a loop)."""
    if len(models) < 2 or not supports_grouping(models[0]):
        return None
    try:
        stack = GroupedStack(models)
    except Exception:  # noqa: BLE001  a layer we could not widen: fall back to another stacking
        return None
    if example is not None:
        modes = [m.training for m in models]
        for m in models:
            m.eval()
        stack.eval()
        try:
            ref = torch.stack([m(example) for m in models])
            got = stack(example, shared=True)
            ok = got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
        except Exception:  # noqa: BLE001  any failure of the self-check means: do not use grouping
            ok = False
        for m, mode in zip(models, modes):
            m.train(mode)
        stack.train()
        if not ok:
            return None
    return stack


# On CPU a grouped convolution loses to S dense ones once the layers are wide: per training step
# (1 thread, 4 seeds, digits 8x8, bench_seeds.py) grouped / one-after-another was 0.94x the time
# for the CNN (32-128 channels), 0.63x for the ConvNet (16-64) but 1.62x for the ResNet-18
# (64-512 channels; evaluation 1.54x). Wider models are trained one seed after another.
GROUPED_MAX_CHANNELS = 128


def max_conv_channels(model: nn.Module) -> int:
    """The most output channels of any Conv2d in ``model`` (0 without convolutions)."""
    return max((m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)), default=0)


def make_stack(models: list[nn.Module], device: torch.device, example: torch.Tensor | None = None,
               strategy: str = "auto") -> ModelStack | GroupedStack:
    """How S seeds train together, chosen per model and device (``strategy="auto"``):

    - one seed: the model itself (no vmap, no functional_call: the plain loop's cost);
    - CPU: grouped (one wide model; wins for convolutions up to :data:`GROUPED_MAX_CHANNELS`
      channels and handles BatchNorm), else vmap (BatchNorm-free models), else one after another
      (wider conv models, e.g. the ResNet-18, where the grouped kernels lose);
    - CUDA: vmap for BatchNorm-free models (one batched kernel per layer), grouped for BatchNorm
      models, else one after another (``benchmarks/bench_seeds.py`` measures all three there).

    ``strategy``: "auto" | "grouped" | "vmap" | "loop" (also from ``$DSB_STACKING``).
    """
    import os

    from dsb_widgets.engine.ensemble import ModelStack, _has_batchnorm

    strategy = os.environ.get("DSB_STACKING", strategy)
    if strategy not in ("auto", "grouped", "vmap", "loop"):
        raise ValueError(f"unknown stacking {strategy!r}; use auto, grouped, vmap or loop")
    models = [m.to(device) for m in models]
    ex = example.to(device) if example is not None else None
    if len(models) == 1 or strategy == "loop":
        return ModelStack(models, vectorize=False).to(device)
    bn = _has_batchnorm(models[0])
    if strategy == "vmap" or (strategy == "auto" and device.type == "cuda" and not bn):
        return ModelStack(models, vectorize=not bn).to(device)
    if strategy == "auto" and device.type == "cpu" and max_conv_channels(models[0]) > GROUPED_MAX_CHANNELS:
        return ModelStack(models, vectorize=False).to(device)
    grouped = grouped_or_none(models, ex)
    if grouped is not None:
        return grouped.to(device)
    return ModelStack(models).to(device)


def _per_seed(state: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """A stack's state in any of the three layouts -> one {name: tensor} per seed (a wide tensor
    is split into seed-major flat rows; :func:`load_stack_state` reshapes them)."""
    seeds: list[dict[str, torch.Tensor]] = [{} for _ in range(size)]
    for key, t in state.items():
        if key.startswith("members."):
            member, name = key[len("members."):].split(".", 1)
            seeds[int(member)][name] = t
        elif key.startswith("wide."):
            name = key[len("wide."):]
            for i in range(size):
                seeds[i][name] = t if name.endswith("num_batches_tracked") else t.reshape(size, -1)[i]
        elif key.startswith(("params.", "buf__")):
            name = key.split(".", 1)[1] if key.startswith("params.") else key[len("buf__"):]
            for i in range(size):
                seeds[i][name.replace("__", ".")] = t[i]
        else:
            raise KeyError(f"unknown model-state key {key!r}")
    return seeds


def load_stack_state(stack: ModelStack | GroupedStack, state: dict[str, torch.Tensor]) -> None:
    """Load a saved stack state into ``stack`` whatever stacking saved it (one model per seed,
    vmap, grouped), so a run resumes after the engine picked another strategy for it."""
    own = stack.state_dict()
    if set(own) == set(state):
        stack.load_state_dict(state)
        return
    seeds = _per_seed(state, stack.size)
    target = {}
    for key, t in own.items():
        if key.startswith("members."):
            i, name = key[len("members."):].split(".", 1)
            target[key] = seeds[int(i)][name].reshape(t.shape)
        elif key.startswith("wide."):
            name = key[len("wide."):]
            target[key] = seeds[0][name] if name.endswith("num_batches_tracked") else \
                torch.cat([sd[name].reshape(-1) for sd in seeds]).reshape(t.shape)
        else:  # vmap layout
            name = (key.split(".", 1)[1] if key.startswith("params.") else key[len("buf__"):]).replace("__", ".")
            target[key] = torch.stack([sd[name].reshape(t.shape[1:]) for sd in seeds])
    stack.load_state_dict(target)
