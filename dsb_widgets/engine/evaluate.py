"""Scoring a model stack on a probe set: losses, accuracies and target-label metrics per seed.

Split out of engine/loop.py (the training loop imports and re-exports these). Evaluation never
syncs the host per batch: masked positions use ``ignore_index`` instead of boolean indexing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from dsb_widgets.engine.accel import autocast
from dsb_widgets.engine.ensemble import ModelStack
from dsb_widgets.engine.grouped import GroupedStack
from dsb_widgets.engine.results import METRICS
from dsb_widgets.engine.task import Probe


def score(out: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and correct count per seed, and the number of scored labels (0-d).

    out: (S, B, ..., V) logits; labels: (B, ...) ints with -100 where not scored. Masked labels
    contribute 0 (``ignore_index``) instead of being dropped by a boolean index, so nothing here
    waits for the device (no ``bool(mask.all())`` host sync per batch on a GPU).
    """
    s, v = out.shape[0], out.shape[-1]
    logits = out.reshape(s, -1, v).float()
    lab = labels.reshape(-1)
    mask = lab != -100
    ce = F.cross_entropy(logits.reshape(-1, v), lab if s == 1 else lab.repeat(s), reduction="none",
                         ignore_index=-100).view(s, -1)
    correct = ((logits.argmax(-1) == lab) & mask).sum(1)
    return ce.sum(1), correct, mask.sum()


def score_mse(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed squared error per seed (accuracy count 0) and the number of scored values.

    Regression (``Task.loss == "mse"``): out (S, B, K), y (B, K) floats with NaN where not scored.
    """
    s = out.shape[0]
    mask = ~torch.isnan(y)
    err = (out.float() - torch.nan_to_num(y).float()) ** 2 * mask  # (S, B, K)
    return err.reshape(s, -1).sum(1), torch.zeros(s, device=out.device), int(mask.sum())


def train_loss(out: torch.Tensor, labels: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """Mean cross-entropy (or squared error, ``loss="mse"``) per seed, (S,).

    out: (S, B, ..., V); labels: (S, B, ...) (mse: (S, B, K) floats, NaN where not scored).
    """
    if loss == "mse":
        mask = ~torch.isnan(labels)
        err = (out.float() - torch.nan_to_num(labels).float()) ** 2 * mask
        return err.reshape(out.shape[0], -1).sum(1) / mask.reshape(out.shape[0], -1).sum(1).clamp_min(1)
    s, v = out.shape[0], out.shape[-1]
    if s == 1:  # one seed: torch's own reduction (fewer kernels than the per-seed masked mean below)
        lab = labels.reshape(-1)
        total = F.cross_entropy(out.reshape(-1, v).float(), lab, reduction="sum", ignore_index=-100)
        return (total / (lab != -100).sum().clamp_min(1)).reshape(1)
    ce = F.cross_entropy(out.reshape(-1, v).float(), labels.reshape(-1), reduction="none", ignore_index=-100)
    mask = (labels.reshape(s, -1) != -100).float()
    return (ce.view(s, -1) * mask).sum(1) / mask.sum(1).clamp_min(1)


@torch.no_grad()
def evaluate_probe(stack: ModelStack | GroupedStack, probe: Probe, device: torch.device, batch: int,
                   amp: bool, loss: str = "ce", outputs: dict[tuple[int, int], torch.Tensor] | None = None,
                   readout: Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   ) -> dict[str, np.ndarray]:
    """loss / accuracy (and target_* when the probe has targets) per seed, each (S,).

    ``loss="mse"``: mean squared error over the scored (non-NaN) targets; accuracy is NaN.
    ``outputs``: a cache of model outputs keyed by (id of probe.x, batch start), shared by probes
    built on the same input tensor (one forward pass for all of them).
    ``readout(stack, x, scored)``: logits (S, N, V) of only the N scored positions (``y != -100``,
    a CPU mask, so no device sync), scored against ``y[scored]`` (and ``target[scored]``) instead
    of the full ``stack(x)``: the same sums, without the unscored rows' logits (``Task.probe_readout``).
    """
    scorer = score_mse if loss == "mse" else score
    sums = {m: torch.zeros(stack.size, dtype=torch.float64, device=device) for m in METRICS}
    count: int | torch.Tensor = 0  # scorers return a 0-d tensor count
    for i in range(0, len(probe), batch):
        key = (id(probe.x), i)
        if readout is not None:  # only the scored rows; their selection depends on y: never cached
            ys = probe.y[i:i + batch].cpu()
            scored = ys != -100
            with autocast(device, amp):
                out = readout(stack, probe.x[i:i + batch].to(device, non_blocking=True), scored)
            y = ys[scored]
            tgt = None if probe.target is None else probe.target[i:i + batch].cpu()[scored]
        elif outputs is not None and key in outputs:
            out = outputs[key]
        else:
            x = probe.x[i:i + batch].to(device, non_blocking=True)
            with autocast(device, amp):
                out = stack(x, shared=True)
            if outputs is not None:
                outputs[key] = out
        if readout is None:
            y = probe.y[i:i + batch]
            tgt = None if probe.target is None else probe.target[i:i + batch]
        ls, correct, n = scorer(out, y.to(device))
        sums["loss"] += ls
        sums["accuracy"] += correct
        if tgt is not None:
            tls, tcorrect, _ = scorer(out, tgt.to(device))
            sums["target_loss"] += tls
            sums["target_accuracy"] += tcorrect
        count += n
    res = {m: (sums[m] / max(float(count), 1.0)).cpu().numpy() for m in METRICS}  # one sync per probe
    if loss == "mse":
        res["accuracy"] = np.full(stack.size, np.nan)
    if probe.target is None:
        res["target_loss"] = np.full(stack.size, np.nan)
        res["target_accuracy"] = np.full(stack.size, np.nan)
    return res


def probe_digest(probes: Iterable[Probe]) -> str:
    """SHA-256 (16 hex digits) of every probe's name and data: two results evaluated on the same
    probe sets carry the same digest (saved in the results' attrs, checked by sweeps)."""
    h = hashlib.sha256()
    for p in sorted(probes, key=lambda p: p.name):
        h.update(p.name.encode())
        for t in (p.x, p.y, p.target):
            if t is not None:
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
