"""The engine's AdamW / SGD (dsb_widgets.engine.optim) equal torch.optim's op for op, without dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from dsb_widgets.engine.optim import SGD, AdamW


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _groups(model: nn.Module, wd: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


def _train(model: nn.Module, opt, steps: int, start: int = 0) -> None:
    gen = torch.Generator().manual_seed(123 + start)
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = 0.05 / (1 + t + start)  # the loop sets lr per step, as the engine does
        x = torch.randn(8, 6, generator=gen)
        loss = model(x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_bit_identical_to_torch_and_state_dicts_interchange(kind: str) -> None:
    make = {
        "adamw": (lambda ps: AdamW(ps, lr=0.05, betas=(0.9, 0.95)),
                  lambda ps: torch.optim.AdamW(ps, lr=0.05, betas=(0.9, 0.95), foreach=False)),
        "sgd": (lambda ps: SGD(ps, lr=0.05, momentum=0.9),
                lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, foreach=False)),
    }[kind]
    ours_m, ref_m = _model(0), _model(0)
    ours, ref = make[0](_groups(ours_m, 0.05)), make[1](_groups(ref_m, 0.05))
    _train(ours_m, ours, 7)
    _train(ref_m, ref, 7)
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        assert torch.equal(a, b)
    # torch's state -> ours (a run saved by torch.optim resumes here), and ours -> torch
    cont_m, back_m = _model(9), _model(9)
    cont_m.load_state_dict(ref_m.state_dict())
    back_m.load_state_dict(ref_m.state_dict())
    cont, back = make[0](_groups(cont_m, 0.05)), make[1](_groups(back_m, 0.05))
    cont.load_state_dict(ref.state_dict())
    back.load_state_dict(ours.state_dict())
    _train(ref_m, ref, 3, start=7)
    _train(cont_m, cont, 3, start=7)
    _train(back_m, back, 3, start=7)
    for a, b, c in zip(cont_m.parameters(), ref_m.parameters(), back_m.parameters()):
        assert torch.equal(a, b) and torch.equal(c, b)


def test_engine_training_step_does_not_import_dynamo() -> None:
    code = ("import sys, torch\n"
            "from dsb_widgets.engine.optim import AdamW\n"
            "m = torch.nn.Linear(3, 2); o = AdamW(m.parameters())\n"
            "m(torch.randn(4, 3)).sum().backward(); o.step(); o.zero_grad(); o.state_dict()\n"
            "print('torch._dynamo' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_digits_read_without_sklearn_equal_sklearns() -> None:
    from sklearn.datasets import load_digits

    from dsb_widgets.data.images import _digits_raw

    images, target = _digits_raw()
    ref = load_digits()
    assert images.shape == (1797, 8, 8) and (images == ref.images).all() and (target == ref.target).all()
    code = ("import sys\nfrom dsb_widgets.data import load_images\n"
            "d = load_images('digits', split='train')\nprint(len(d), 'sklearn' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1438", "False"]
