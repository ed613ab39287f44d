"""Small exactly enumerable MH targets shared by the sampler and tempering tests.

L = 5 sites, Q = 3 colours: 243 states, so pi(s) ∝ exp(-E(s)) is known exactly
(:func:`dsb_widgets.potts.exact_distribution`) and sampled marginals can be z-tested against it.
"""

from __future__ import annotations

import torch

from dsb_widgets.factored_attention import FactoredAttention, FactoredAttentionConfig, IncrementalConditionals
from dsb_widgets.mh_sampler import pll_energy
from dsb_widgets.potts import PottsModel, exact_distribution, symmetrize_couplings

L, Q = 5, 3


def small_potts(seed: int = 0, scale: float = 0.8) -> PottsModel:
    """A random symmetric Potts model on (L, Q): couplings scale x N(0, 1), fields 0.5 x N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    J = symmetrize_couplings(scale * torch.randn(L, L, Q, Q, generator=g, dtype=torch.float64))
    return PottsModel(J, 0.5 * torch.randn(L, Q, generator=g, dtype=torch.float64))


def pll_target(fast: bool) -> tuple[object, torch.Tensor, torch.Tensor]:
    """(conditionals, states (243, L), pi(states)) of the PLL target exp(sum_t log p(s_t | s_-t)):
    fast = a 2-layer factored model on the incremental path, else the generic loop on Potts
    conditionals."""
    if fast:
        torch.manual_seed(2)
        model = FactoredAttention(FactoredAttentionConfig(vocab_size=Q, seq_len=L, n_layers=2, n_heads=2,
                                                          d_embed=4, init_std=0.8)).double()
        states, target = exact_distribution(pll_energy(IncrementalConditionals(model)), L, Q)
        return IncrementalConditionals(model), states, target
    potts = small_potts()
    states, target = exact_distribution(pll_energy(potts.conditionals), L, Q)
    return potts.conditionals, states, target
