"""Several seeds of one architecture trained at once.

Models without BatchNorm are stacked with ``torch.func.stack_module_state`` and run through
``vmap(functional_call)``: S seeds become one batched forward/backward, which is what makes
``--seeds 5`` cost far less than 5 runs on a GPU (see ``benchmarks/bench_engine.py``). AdamW and
SGD act elementwise, so one optimizer over the stacked parameters equals S independent ones.
Models with BatchNorm (the ResNet) keep running statistics that vmap cannot update in place;
they are trained one after another inside the same loop (same results, no batching speed-up).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _Method(nn.Module):
    """``inner.<name>(x)`` as a module's forward, so ``functional_call`` can run a method other than
    ``forward`` (its parameters are ``inner.*``)."""

    def __init__(self, inner: nn.Module, name: str) -> None:
        super().__init__()
        self.inner = inner
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.inner, self.name)(x)


class ModelStack(nn.Module):
    """S models with identical architecture; ``forward(x)`` returns outputs stacked on dim 0.

    x is (S, B, ...) (one batch per seed) or, with ``shared=True``, (B, ...) fed to every seed.
    """

    def __init__(self, models: list[nn.Module], vectorize: bool | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("ModelStack needs at least one model")
        self.size = len(models)
        self.vectorized = (not _has_batchnorm(models[0])) if vectorize is None else vectorize
        if self.vectorized:
            params, buffers = stack_module_state(models)
            self.params = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v) for k, v in params.items()})
            for k, v in buffers.items():
                self.register_buffer("buf__" + k.replace(".", "__"), v)
            self._buffer_names = list(buffers)
            base = copy.deepcopy(models[0]).to("meta")
            self._base: nn.Module
            object.__setattr__(self, "_base", base)  # not a submodule: no parameters of its own
            self._methods: dict[str, nn.Module] = {}  # method name -> _Method wrapper of _base (call())
        else:
            self.members = nn.ModuleList(models)

    def train(self, mode: bool = True) -> "ModelStack":
        super().train(mode)
        if self.vectorized:
            self._base.train(mode)
        return self

    def _call_one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        if not self.vectorized:
            outs = [m(x if shared else x[i]) for i, m in enumerate(self.members)]
            return torch.stack(outs)
        params = {k.replace("__", "."): v for k, v in self.params.items()}
        buffers = {k: getattr(self, "buf__" + k.replace(".", "__")) for k in self._buffer_names}
        fn = vmap(self._call_one, in_dims=(0, 0, None if shared else 0), randomness="different")
        return fn(params, buffers, x)

    def call(self, method: str, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """``getattr(model, method)(x)`` for every seed, stacked on dim 0 as :meth:`forward` does
        (``call("forward", x)`` is ``forward(x)``); e.g. ``call("features", x)`` then
        ``call("head", h)`` for a masked LM that scores only its masked positions."""
        if method == "forward":
            return self(x, shared)
        if not self.vectorized:
            return torch.stack([getattr(m, method)(x if shared else x[i]) for i, m in enumerate(self.members)])
        if method not in self._methods:
            self._methods[method] = _Method(self._base, method)
        params = {"inner." + k.replace("__", "."): v for k, v in self.params.items()}
        buffers = {"inner." + k: getattr(self, "buf__" + k.replace(".", "__")) for k in self._buffer_names}
        wrapped = self._methods[method]

        def one(p: dict, b: dict, xi: torch.Tensor) -> torch.Tensor:
            return functional_call(wrapped, (p, b), (xi,))

        return vmap(one, in_dims=(0, 0, None if shared else 0), randomness="different")(params, buffers, x)

    def decay_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(weights to decay, the rest): nanoGPT's ``configure_optimizers`` rule per model: every
        parameter with >= 2 dims (matmul / conv kernels and embeddings) decays; biases and norm
        scales (1-D) do not. Stacked parameters carry a leading seed dim, which is not counted."""
        lead = 1 if self.vectorized else 0
        decay: list[nn.Parameter] = []
        rest: list[nn.Parameter] = []
        for p in self.parameters():
            (decay if p.dim() - lead >= 2 else rest).append(p)
        return decay, rest

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each seed's gradient to total 2-norm ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``
        on each model alone (seeds stay independent); returns the norms before clipping, (S,)."""
        if not self.vectorized:
            return torch.stack([torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm) for m in self.members])
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.size)
        norms = torch.stack([g.detach().float().pow(2).reshape(self.size, -1).sum(1) for g in grads]).sum(0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # (S,), torch's clip_coef
        for g in grads:
            g.mul_(scale.to(g.dtype).view(-1, *([1] * (g.dim() - 1))))
        return norms

    def member(self, i: int) -> nn.Module:
        """Seed i as an ordinary module (a copy for stacked models), e.g. for Taylor terms."""
        if not self.vectorized:
            return self.members[i]
        model = copy.deepcopy(self._base).to_empty(device=next(iter(self.params.values())).device)
        state = {k.replace("__", "."): v[i].detach() for k, v in self.params.items()}
        state.update({k: getattr(self, "buf__" + k.replace(".", "__"))[i] for k in self._buffer_names})
        model.load_state_dict(state)
        return model.train(self.training)
