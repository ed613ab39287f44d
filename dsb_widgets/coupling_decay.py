"""Weight decay of a factored-attention model's couplings (``dsb clone --weight-decay``).

A one-layer factored model is the pseudo-likelihood inverse Potts model (Rende et al. 2024;
:mod:`dsb_widgets.potts`), and pseudo-likelihood from few samples inflates the couplings: plmDCA
adds an L2 prior lambda_J ||J||^2 (Ekeberg et al. 2013, lambda_J ~ 0.01). Here the prior is AdamW's
decoupled weight decay (Loshchilov & Hutter 2019) on the weights that carry the couplings, the
fields left free. Measured on an exactly known Potts model (tests/test_clone_regularisation.py):
M = 100 samples inflate ||J|| to 1.18 x the truth; decay 1 brings it to 0.96 x and improves the
held-out pseudo-likelihood. On real text the strength must be chosen by held-out PLL
(:mod:`dsb_widgets.clones` docstring: on TinyStories any decay made it worse).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dsb_widgets.factored_attention import FactoredAttention

__all__ = ["coupling_parameters", "clone_optimizer"]


def coupling_parameters(model: FactoredAttention) -> tuple[list[Tensor], list[Tensor]]:
    """The weights that carry the couplings, and the rest (per-position fields, read-out bias).

    A factored layer's couplings are J_ij(a, b) = sum_h A^h_ij (E V^h W^T)[b, a]. The decayed set is
    the embedding E, every layer's V, the squares' U and the read-out matrix W, plus the attention
    logits A with ``attention="free"`` (there A carries the couplings' scale: decaying E, V, W alone
    would be undone by a growing A). Row-softmax attention is scale-free, so its A is not decayed.
    Decaying them shrinks J towards 0, an L2 prior as plmDCA's lambda_J (Ekeberg et al. 2013); the
    Potts fields h_i(a) (``fields``, read-out bias) stay free."""
    free_attention = model.cfg.attention == "free"
    decay: list[Tensor] = []
    free: list[Tensor] = []
    for name, p in model.named_parameters():
        coupling = (name in ("embedding", "readout.weight") or name.endswith(".V") or name.startswith("squares.")
                    or (free_attention and name.endswith(".A")))
        (decay if coupling else free).append(p)
    return decay, free


def clone_optimizer(model: FactoredAttention, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay (Loshchilov & Hutter 2019) on :func:`coupling_parameters`
    only: each step multiplies E, V, U, W by (1 - lr * weight_decay); A, fields and biases are free."""
    decay, free = coupling_parameters(model)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": free, "weight_decay": 0.0}], lr=lr)
