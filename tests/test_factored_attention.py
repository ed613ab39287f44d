"""Factored attention: polynomial degree 2^(L-1), body count 2^(L-1)+1, masking, losses."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsb_widgets.factored_attention import (
    FactoredAttention,
    FactoredAttentionConfig,
    IncrementalConditionals,
    masked_lm_loss,
    n_bodies,
    pseudo_likelihood_loss,
    random_sites,
)

torch.set_num_threads(1)


def make(n_layers: int, seed: int = 0, **kw: object) -> FactoredAttention:
    torch.manual_seed(seed)
    kw = {"branch_init": 1.0, **kw}  # full-size x^2 branches: the algebra tests need them visible
    cfg = FactoredAttentionConfig(vocab_size=4, seq_len=7, n_layers=n_layers, init_std=0.5, **kw)
    return FactoredAttention(cfg).double()


def test_n_bodies_matches_paper() -> None:
    assert [n_bodies(L) for L in (1, 2, 3, 4, 6)] == [2, 3, 5, 9, 33]


@pytest.mark.parametrize("square_width", [None, 9])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("d_embed", [None, 6])
def test_logits_are_polynomial_of_degree_2_pow_L_minus_1(n_layers: int, d_embed: int | None, residual: bool,
                                                         square_width: int | None) -> None:
    """logits(t * x) is a polynomial in t of degree exactly D = 2^(L-1): the (D+1)-th finite
    difference vanishes, the D-th equals D! * (leading coefficient) and is non-zero. The residual
    stream adds lower-degree terms only."""
    model = make(n_layers, n_heads=2, d_embed=d_embed, residual=residual, square_width=square_width)
    tokens = torch.randint(4, (3, 7), generator=torch.Generator().manual_seed(1))
    x = model.embed(tokens)
    D = 2 ** (n_layers - 1)
    with torch.no_grad():
        f = torch.stack([model.forward_embedded(t * x) for t in range(D + 2)])  # (D+2, B, T, q)

    def diff(k: int) -> torch.Tensor:
        return sum((-1) ** (k - m) * math.comb(k, m) * f[m] for m in range(k + 1))

    scale = f.abs().max()
    assert diff(D + 1).abs().max() < 1e-9 * scale
    assert diff(D).abs().max() > 1e-3 * scale


def mixed_difference(model: FactoredAttention, base: torch.Tensor, i: int, sites: tuple[int, ...]) -> torch.Tensor:
    """Delta_{j1} ... Delta_{jk} of log p(s_i = a | s_-i) - log p(s_i = 0 | s_-i) (the normaliser
    cancels), Delta_j flipping s_j from base to base + 1."""
    total = torch.zeros(model.cfg.vocab_size, dtype=torch.float64)
    for flips in itertools.product([0, 1], repeat=len(sites)):
        s = base.clone()
        for j, f in zip(sites, flips):
            s[0, j] = (s[0, j] + f) % model.cfg.vocab_size
        sign = (-1) ** (len(sites) - sum(flips))
        logp = model.conditionals(s)[0, i]
        total += sign * (logp - logp[0])
    return total


@pytest.mark.parametrize("square_width", [None, 8])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_conditionals_have_exactly_2_pow_L_minus_1_plus_1_bodies(n_layers: int, residual: bool,
                                                                 square_width: int | None) -> None:
    """log p(s_i=a|s_-i) - log p(s_i=0|s_-i) is a sum of functions of at most D = 2^(L-1) other
    sites (so with s_i: D+1 bodies): every mixed difference over D+1 distinct sites vanishes;
    over D sites it does not."""
    model = make(n_layers, d_embed=5, residual=residual)
    D = 2 ** (n_layers - 1)
    base = torch.randint(4, (1, 7), generator=torch.Generator().manual_seed(2))
    others = (1, 2, 3, 4, 5, 6)
    with torch.no_grad():
        high = mixed_difference(model, base, 0, others[: D + 1])
        exact = mixed_difference(model, base, 0, others[:D])
    assert high.abs().max() < 1e-9
    assert exact.abs().max() > 1e-4


@pytest.mark.parametrize("n_layers", [1, 2])
def test_conditionals_never_see_own_token(n_layers: int) -> None:
    model = make(n_layers)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(4, (5, 7), generator=g)
    changed = tokens.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 4
    with torch.no_grad():
        a, b = model.conditionals(tokens), model.conditionals(changed)
        torch.testing.assert_close(a[:, 3], b[:, 3])
        assert (a[:, 2] - b[:, 2]).abs().max() > 1e-6  # other sites do see it
        raw_a, raw_b = model(tokens), model(changed)
    if n_layers == 1:  # the masked diagonal suffices: one forward gives all conditionals
        torch.testing.assert_close(raw_a[:, 3], raw_b[:, 3])
    else:  # i -> j -> i leaks s_i: the raw forward is not a conditional, masking is needed
        assert (raw_a[:, 3] - raw_b[:, 3]).abs().max() > 1e-6


def masked_by_hand(model: FactoredAttention, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, q): site t read off a full forward of the sequence with s_t := mask."""
    rows = []
    for t in range(tokens.shape[1]):
        masked = tokens.clone()
        masked[:, t] = model.cfg.mask_id
        rows.append(model(masked)[:, t])
    return torch.stack(rows, 1)


@pytest.mark.parametrize("square_width", [None, 8])
@pytest.mark.parametrize("attention", ["free", "softmax"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("n_layers", [1, 2, 3, 4])
def test_rank_one_masked_conditionals_equal_masking_by_hand(n_layers: int, residual: bool, attention: str,
                                                            square_width: int | None) -> None:
    """The one implementation (first layer once + rank-one copies, last layer at the site only)
    equals T forwards with the site masked, for all sites, chosen sites and in chunks."""
    model = make(n_layers, n_heads=2, d_embed=5, residual=residual, attention=attention, square_width=square_width)
    tokens = torch.randint(4, (5, 7), generator=torch.Generator().manual_seed(4))
    sites = random_sites(5, 7, 3, torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = masked_by_hand(model, tokens)
        torch.testing.assert_close(model.conditional_logits(tokens, chunk=2), want)
        torch.testing.assert_close(model.conditional_logits(tokens, sites), want[torch.arange(5)[:, None], sites])
        pll = -torch.log_softmax(want, -1).gather(-1, tokens[..., None]).mean()
        torch.testing.assert_close(pseudo_likelihood_loss(model, tokens), pll)


@pytest.mark.parametrize("square_width", [None, 8])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_incremental_update_equals_recomputing(n_layers: int, square_width: int | None) -> None:
    """IncrementalConditionals.propose (rank-one update of the first layer) equals recomputing the
    conditionals of the changed sequences, for several changes in a row."""
    model = make(n_layers, n_heads=2, d_embed=5, square_width=square_width)
    g = torch.Generator().manual_seed(6)
    s = torch.randint(4, (6, 7), generator=g)
    inc = IncrementalConditionals(model)
    with torch.no_grad():
        out, state = inc.start(s)
        torch.testing.assert_close(out, model.conditional_logits(s))
        for t in (3, 0, 3, 6):
            new = torch.randint(4, (6,), generator=g)
            s2 = s.clone()
            s2[:, t] = new
            out, state = inc.propose(s2, state, t, s[:, t], new)
            torch.testing.assert_close(out, model.conditional_logits(s2))
            s = s2


def test_residual_model_contains_the_shallower_one() -> None:
    """With the x^2 branch of layer 2 switched off (V = 0) a residual 2-layer model computes exactly
    the 1-layer model with the same first layer: deeper models nest the shallower ones."""
    one, two = make(1, n_heads=2, d_embed=5), make(2, n_heads=2, d_embed=5)
    two.load_state_dict({**two.state_dict(), **{k: v for k, v in one.state_dict().items()}}, strict=False)
    with torch.no_grad():
        two.layers[1].V.zero_()
        s = torch.randint(4, (5, 7), generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(two.conditionals(s), one.conditionals(s))


def test_softmax_attention_rows_are_stochastic_and_nonnegative() -> None:
    model = make(1, attention="softmax")
    W = model.layers[0].attention()
    assert (W >= 0).all() and W.diagonal(dim1=-2, dim2=-1).abs().max() == 0
    torch.testing.assert_close(W.sum(-1), torch.ones_like(W.sum(-1)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.05, 1.0))
def test_masked_lm_loss_is_finite_and_positive(seed: int, rate: float) -> None:
    model = make(2, seed=seed % 7)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, (8, 7), generator=g)
    loss = masked_lm_loss(model, tokens, rate, generator=g)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.layers[0].A.grad is not None


def test_training_lowers_pseudo_likelihood_to_uniform_bound() -> None:
    """On i.i.d. uniform tokens nothing is learnable: PL loss must approach log q, not below."""
    torch.manual_seed(0)
    model = FactoredAttention(FactoredAttentionConfig(vocab_size=4, seq_len=6))
    tokens = torch.randint(4, (2000, 6), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss = pseudo_likelihood_loss(model, tokens)
        loss.backward()
        opt.step()
    assert abs(loss.item() - math.log(4)) < 0.02


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_size=0, seq_len=5), "vocab_size"),
        (dict(vocab_size=3, seq_len=1), "seq_len"),
        (dict(vocab_size=3, seq_len=5, attention="linear"), "attention"),
        (dict(vocab_size=3, seq_len=5, readout=False, d_embed=8), "readout=False"),
        (dict(vocab_size=3, seq_len=5, square_width=0), "square_width"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FactoredAttentionConfig(**kwargs)


def test_bad_tokens_raise() -> None:
    model = make(1)
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.full((2, 7), 9))
    with pytest.raises(ValueError, match="integer ids"):
        model(torch.zeros(2, 7))


@pytest.mark.parametrize("square_width", [None, 8])
def test_grow_from_reproduces_the_shallower_model_and_then_learns(square_width: int | None) -> None:
    """Progressive stacking: a 3-layer model grown from a 1-layer one has its conditionals exactly;
    its new branches get gradients (V has one), so training can add the higher orders."""
    one = make(1, n_heads=2, d_embed=5, square_width=square_width)
    three = FactoredAttention(FactoredAttentionConfig(vocab_size=4, seq_len=7, n_layers=3, n_heads=2, d_embed=5,
                                                      init_std=0.5, square_width=square_width)).double().grow_from(one)
    s = torch.randint(4, (5, 7), generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(three.conditionals(s), one.conditionals(s).detach())
    pseudo_likelihood_loss(three, s).backward()
    assert three.layers[2].V.grad is not None and three.layers[2].V.grad.abs().max() > 0
    with pytest.raises(ValueError, match="deeper"):
        make(1).grow_from(three)
