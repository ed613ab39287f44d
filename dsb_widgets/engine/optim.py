"""AdamW and SGD (momentum) in a few foreach ops, equal to torch's, without importing torch._dynamo.

Why not ``torch.optim``: every ``torch.optim.Optimizer`` method (``add_param_group``,
``zero_grad``, ``step``, ``state_dict``) is wrapped in ``torch._disable_dynamo``, whose first call
imports ``torch._dynamo``: 1.5 CPU-s, about a third of the fixed cost of a short run here
(issue 17 profiled 23% of a 1,024-step digits run in it). These two classes do the same
arithmetic as torch's single-tensor CPU paths, op for op, with ``torch._foreach_*`` kernels
(one call per group instead of a Python loop over parameters), so results are bit-identical to
``torch.optim.AdamW(foreach=False)`` / ``torch.optim.SGD(foreach=False)`` on CPU
(``tests/test_engine_optim.py``). ``state_dict()`` has torch's layout, so a run saved by the
torch optimizers resumes here and vice versa.

AdamW: Loshchilov & Hutter, "Decoupled weight decay regularization" (ICLR 2019):
p <- p (1 - lr wd); m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
SGD (PyTorch's momentum form, dampening 0): g <- g + wd p; b <- mu b + g (b = g at t = 1);
p <- p - lr b.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor


class _Optimizer:
    """Parameter groups, per-parameter state and torch's state_dict layout."""

    # torch's fixed settings for these paths, written into state_dict() so torch.optim loads it
    _torch_keys: dict[str, Any] = {"maximize": False, "foreach": None, "differentiable": False, "fused": None}

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def _live(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        ps = [p for p in group["params"] if p.grad is not None]
        return ps, [p.grad for p in ps]

    def state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append({**self._torch_keys, **{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        saved = sd["param_groups"]
        if len(saved) != len(self.param_groups) or any(len(a["params"]) != len(b["params"])
                                                       for a, b in zip(saved, self.param_groups)):
            raise ValueError("loaded optimizer state has a different parameter layout")
        params = [p for g in self.param_groups for p in g["params"]]
        ids = [i for g in saved for i in g["params"]]
        self.state = {}
        for i, p in zip(ids, params):
            if i in sd["state"]:
                # step stays a CPU scalar (a state loaded onto a GPU would otherwise sync at .item())
                self.state[p] = {k: (v.to("cpu", copy=True) if k == "step" else v.to(p.device, p.dtype, copy=True))
                                 if isinstance(v, Tensor) else v for k, v in sd["state"][i].items()}
        for g, s in zip(self.param_groups, saved):
            g.update({k: v for k, v in s.items() if k != "params"})


class AdamW(_Optimizer):
    """``torch.optim.AdamW`` (no amsgrad / maximize), same state and results."""

    _torch_keys = {**_Optimizer._torch_keys, "amsgrad": False, "capturable": False, "decoupled_weight_decay": True}

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            ps, grads = self._live(g)
            if not ps:
                continue
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for p in ps:
                if p not in self.state:
                    self.state[p] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
            st = [self.state[p] for p in ps]
            m, v = [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st]
            steps = []
            for s in st:  # CPU scalars, as torch keeps them (no device sync)
                s["step"] += 1
                steps.append(s["step"].item())
            if wd != 0:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_lerp_(m, grads, 1 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, [(1 - b2 ** t) ** 0.5 for t in steps])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(ps, m, denom, [-(lr / (1 - b1 ** t)) for t in steps])


class SGD(_Optimizer):
    """``torch.optim.SGD`` with momentum (no dampening / nesterov), same state and results."""

    _torch_keys = {**_Optimizer._torch_keys, "dampening": 0, "nesterov": False}

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            ps, grads_list = self._live(g)
            if not ps:
                continue
            grads: list[Tensor] | tuple[Tensor, ...] = grads_list
            lr, mu, wd = g["lr"], g["momentum"], g["weight_decay"]
            if wd != 0:
                grads = torch._foreach_add(grads, ps, alpha=wd)
            if mu != 0:
                fresh = [i for i, p in enumerate(ps) if self.state.get(p, {}).get("momentum_buffer") is None]
                old = [i for i in range(len(ps)) if i not in set(fresh)]
                for i in fresh:
                    self.state[ps[i]] = {"momentum_buffer": grads[i].detach().clone()}
                if old:
                    bufs = [self.state[ps[i]]["momentum_buffer"] for i in old]
                    torch._foreach_mul_(bufs, mu)
                    torch._foreach_add_(bufs, [grads[i] for i in old])
                grads = [self.state[p]["momentum_buffer"] for p in ps]
            torch._foreach_add_(ps, grads, alpha=-lr)
