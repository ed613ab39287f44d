"""k-body reference models for the many-body ladder (the dashed lines of Rende, Gerace, Laio,
Goldt, NeurIPS 2024, Fig. 2): energy-based models with interactions of at most k bodies, fitted by
pseudo-likelihood (Besag 1975) on the ladder's training data.

Structure (it must match the generator's, :func:`dsb_widgets.manybody_model.random_manybody`, or
the reference measures a parameter count instead of an interaction order):

- pairs: ALL pairs with a free q x q table each (the generator's pairs are dense);
- m-body terms, m = 3..k: only on CONTIGUOUS windows (the generator's 3- and 4-body terms are),
  and *factored* (``heads`` = R): T_m[w] = sum_r C[w, r] S_r, a strength per window and head
  times a colour tensor S_r (q^m) shared by every window -- the m-body analogue of factored
  attention's J_ij = sum_h A^h_ij V^h, and the generator's form (there, R = 1 and S is a product
  of +-1 colour features).

Why not free tables: a free q^4 table per window is 17 x 10^4 = 170,000 parameters for 25,600
sequences, ~2.5 samples per entry. Measured on the ladder's default data (seed 0, 90/10 split of
the training set, L2 1e-4): free 4-body tables (L-BFGS 100 iterations) train 1.754 / held-out
1.900 nats, factored (R = 1, 150 iterations) train 1.462 / held-out 1.559, true Hamiltonian 1.497
(L2 1e-5: 1.560; 1e-3: 1.741; in ``ladder()`` the selected 1e-4 gives 1.554). A CP form with
per-window, per-slot features (c_w prod_m phi_wm(a_m)) got stuck at 2.02 from random starts.

Regularisation: an L2 penalty ``l2`` * sum of squared parameters, chosen on a validation split
carved from the TRAINING data (:func:`select_reference`); the test set is never used to choose.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dsb_widgets.manybody_model import ManyBody

__all__ = ["fit_reference", "select_reference"]


def fit_reference(train: Tensor, q: int, bodies: int, l2: float = 1e-5, iters: int = 150,
                  test: Tensor | None = None, heads: int | None = 1,
                  init: ManyBody | None = None) -> tuple[ManyBody, dict[str, float]]:
    """The k-body reference (k = ``bodies`` in 2, 3, 4): fields, all pair couplings and (k >= 3)
    factored (``heads``) or free (``heads=None``) tables on the contiguous windows of m = 3..k sites,
    fitted by pseudo-likelihood + ``l2`` * sum of squared parameters with full-batch L-BFGS
    (``iters`` iterations at most; ``init``: a model of the same shape to start from)."""
    if bodies not in (2, 3, 4):
        raise ValueError(f"reference bodies must be 2, 3 or 4, got {bodies}")
    L = train.shape[1]
    model = ManyBody(L, q, orders=tuple(range(3, bodies + 1)), heads=heads)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.requires_grad_(True)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model.logits(train).reshape(-1, q), train.reshape(-1))
        loss = loss + l2 * sum((p * p).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    model.requires_grad_(False)
    out = {"train_loss": model.conditional_loss(train), "l2": l2}
    if test is not None:
        out["test_loss"] = model.conditional_loss(test)
    return model, out


def select_reference(train: Tensor, q: int, bodies: int, l2_grid: tuple[float, ...] = (1e-5, 1e-4),
                     val_frac: float = 0.1, iters: int = 150, test: Tensor | None = None,
                     heads: int | None = 1, seed: int = 0) -> tuple[ManyBody, dict[str, Any]]:
    """:func:`fit_reference` with its L2 chosen on a validation split of ``train``: every ``l2`` in
    the grid is fitted on the other (1 - ``val_frac``) of the training data; the best on validation
    is refitted on all of it, starting from the chosen model (``iters`` // 4 iterations). Returns
    the model and train/test loss, the chosen l2 and each candidate's validation loss."""
    if not 0.0 < val_frac < 1.0 or not l2_grid:
        raise ValueError("select_reference needs 0 < val_frac < 1 and a non-empty l2_grid")
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(val_frac * train.shape[0]))
    fit, val = train[perm[n_val:]], train[perm[:n_val]]
    best: tuple[float, float, ManyBody] | None = None
    vals: dict[float, float] = {}
    for l2 in l2_grid:
        m, out = fit_reference(fit, q, bodies, l2, iters, test=val, heads=heads)
        vals[l2] = out["test_loss"]
        if best is None or out["test_loss"] < best[0]:
            best = (out["test_loss"], l2, m)
    assert best is not None
    model, out = fit_reference(train, q, bodies, best[1], max(1, iters // 4), test=test, heads=heads, init=best[2])
    return model, {**out, "val_loss": best[0], "val_losses": vals}
