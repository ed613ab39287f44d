"""Masked-LM models built of L layers of *factored attention* (Rende, Gerace, Laio, Goldt 2024).

Rende et al., "A distributional simplicity bias in the learning dynamics of transformers"
(NeurIPS 2024), build *clones* of a text dataset from masked language models whose attention
weights depend only on positions. One layer (for head ``h``)::

    Attn(x)_i = sum_h sum_{j != i} A^h_ij  x_j V^h                    (B, T, d)

with ``A^h`` a learned (T, T) matrix per head whose diagonal is masked, so position ``i`` never
sees its own token, and ``V^h`` a (d, d) value matrix. Our layer equations (the paper's are not
public; NOTES), with e_j the embedding of token s_j::

    h^1   = Attn_1(e)
    h^l   = h^(l-1) + Attn_l(h^(l-1) * h^(l-1))        l = 2..L   (residual, default)
    h^l   =           Attn_l(h^(l-1) * h^(l-1))                   (``residual=False``: the plain x^2 chain)
    logit_i(a) = (W h^L_i)_a + b_a + f_i(a)             (read-out W, bias b, per-position fields f)

Why the residual. The plain chain is homogeneous: its output has degree exactly 2^(L-1), with no
lower-order terms, and at init the square of a small h shrinks (or of a large one explodes)
geometrically with depth, so deeper plain chains trained worse than shallower ones (measured in
:mod:`dsb_widgets.clones`). With the residual, h^l = h^(l-1) + (a degree-2^(l-1) term), so an
L-layer model contains the (L-1)-layer one (Attn_L = 0) and starts from it: deeper can only add
interactions, and the x^2 branch only needs to learn the many-body corrections. The residual adds
only LOWER-degree terms, so the degree bound -- the body count -- is unchanged.

How many bodies? (the paper's "2^(L-1)+1-body" claim, derived here.) With one-hot inputs
``x_j = e_{s_j}`` every Attn is linear in its input and the square doubles the degree, so h^l has
degree 2^(l-1) in the x_j (the residual adds lower degrees only) and the read-out is linear: the
logit ``logit_i(a)`` is a polynomial of degree ``D = 2^(L-1)`` in the one-hot inputs of the
*other* positions (monomials x_{j1} ... x_{jD}; a repeated index is still a function of one site).
Hence ``log p(s_i = a | s_-i)`` couples ``s_i`` with at most ``D`` other sites: interactions of up
to ``2^(L-1) + 1`` bodies, i.e. 1, 2, 3, 4, 6 layers -> 2, 3, 5, 9, 33 bodies.
``tests/test_factored_attention.py`` checks both the polynomial degree (finite differences in a
scale ``t`` of the inputs) and the body count (mixed differences over D+1 distinct sites vanish,
over D sites they do not), with and without the residual.

Masked conditionals: the ONE implementation (:meth:`FactoredAttention.conditional_logits`), used
by training, by Metropolis-Hastings (:class:`IncrementalConditionals`) and by clone scoring.
With one layer the masked diagonal makes h^1_i independent of s_i, so one forward gives every
conditional (the pseudo-likelihood of a Potts model, :mod:`dsb_widgets.potts`). With L >= 2,
s_i reaches position i through i -> j -> i, so the conditional at p is computed on a copy of the
sequence with s_p replaced by the mask token (id ``vocab_size``), which is what MLM training does.
All T masked copies come cheaply from ONE first-layer pass, because Attn_1 is linear:

    h^1(copy p)_j = h^1_j + sum_h A1^h_jp (m - e_p) V1^h        (a rank-one change per copy)

and the last layer is only needed at the masked position p itself. So for L = 2 all T
conditionals cost about one forward pass (O(T^2 d + T d^2 + T d q) per sequence), and for
L >= 3 layers 2..L-1 run on the T copies. Tests check this equals masking by hand.

Attention is NOT softmax-normalised by default: an unconstrained ``A`` can carry mixed-sign
couplings (a non-negative, row-stochastic ``A`` cannot; see NOTES). ``attention="softmax"``
gives the row-softmax variant (diagonal excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsb_widgets.incremental import SiteChains

__all__ = [
    "FactoredAttentionConfig",
    "FactoredAttention",
    "IncrementalConditionals",
    "pseudo_likelihood_loss",
    "masked_lm_loss",
    "n_bodies",
    "random_sites",
]


def n_bodies(n_layers: int) -> int:
    """Largest interaction order in the conditionals of an ``n_layers`` factored model: 2^(L-1)+1."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return 2 ** (n_layers - 1) + 1


@dataclass(frozen=True)
class FactoredAttentionConfig:
    """Configuration of a factored-attention MLM (nanoGPT-style).

    vocab_size: number of real tokens q; the mask token gets id ``vocab_size``.
    seq_len:    sequence length T (attention weights are a (T, T) parameter per head).
    d_embed:    None -> one-hot embedding (d = q, mask = zero vector); int -> learned embedding.
    readout:    linear read-out d -> q; ``False`` (only with d = q) reads logits off directly,
                so one layer is exactly J_ij(a, b) = sum_h A^h_ij V^h[b, a].
    field_bias: learned per-position bias h_i(a) on the logits (the Potts fields).
    init_std:   std of A at init (V, read-out: 1/sqrt(d)).
    residual:   h^l = h^(l-1) + Attn_l(h^(l-1)^2) (True) or the plain chain Attn_l(h^(l-1)^2).
    branch_init: V of layers l >= 2 starts at ``branch_init / sqrt(d)`` times a Gaussian (residual
                only), so a deeper model starts close to the shallower one.
    square_width: None -> layers l >= 2 square h itself (d features); int m -> they square m learned
                linear features, Attn_l((h U_l)^2) with U_l (d, m) and V_l (H, m, d): a wider quadratic
                form per layer, same polynomial degree and body count.
    """

    vocab_size: int
    seq_len: int
    n_layers: int = 1
    n_heads: int = 1
    d_embed: int | None = None
    attention: Literal["free", "softmax"] = "free"
    readout: bool = True
    field_bias: bool = True
    init_std: float = 0.1
    residual: bool = True
    branch_init: float = 0.1
    square_width: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError("seq_len must be >= 2 (a position needs another to attend to)")
        if self.attention not in ("free", "softmax"):
            raise ValueError(f"attention must be 'free' or 'softmax', got {self.attention!r}")
        if self.square_width is not None and self.square_width < 1:
            raise ValueError(f"square_width must be >= 1 or None, got {self.square_width}")
        if not self.readout and self.d_embed not in (None, self.vocab_size):
            raise ValueError("readout=False needs d_embed=None (one-hot) or d_embed == vocab_size")

    @property
    def d(self) -> int:
        return self.vocab_size if self.d_embed is None else self.d_embed

    @property
    def mask_id(self) -> int:
        return self.vocab_size


class FactoredAttentionLayer(nn.Module):
    """One factored-attention layer: Attn(x)_i = sum_h sum_{j != i} A^h_ij x_j V^h (no softmax by default)."""

    offdiag: Tensor  # buffer (T, T)

    def __init__(self, cfg: FactoredAttentionConfig, v_scale: float = 1.0, d_in: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        T, d, H = cfg.seq_len, cfg.d, cfg.n_heads
        m = d if d_in is None else d_in
        self.A = nn.Parameter(cfg.init_std * torch.randn(H, T, T))  # (H, T, T)
        self.V = nn.Parameter(v_scale * torch.randn(H, m, d) / m**0.5)  # (H, m, d)
        self.register_buffer("offdiag", 1.0 - torch.eye(T), persistent=False)  # (T, T)

    def attention(self) -> Tensor:
        """Effective weights (H, T, T), zero on the diagonal."""
        if self.cfg.attention == "softmax":
            masked = self.A.masked_fill(self.offdiag == 0, float("-inf"))
            return torch.softmax(masked, dim=-1)
        return self.A * self.offdiag

    def values(self, x: Tensor) -> Tensor:  # (..., m) -> (..., H, d)
        return torch.einsum("...d,hde->...he", x, self.V)

    def mix(self, values: Tensor) -> Tensor:  # (..., T, H, d) -> (..., T, d)
        return torch.einsum("hij,...jhe->...ie", self.attention(), values)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, d) -> (B, T, d)
        return self.mix(self.values(x))


class FactoredAttention(nn.Module):
    """L factored layers (x**2 between them, residual by default), linear read-out, logits (B, T, q)."""

    def __init__(self, cfg: FactoredAttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        q, d = cfg.vocab_size, cfg.d
        if cfg.d_embed is None:
            onehot = torch.cat([torch.eye(q), torch.zeros(1, q)])  # (q + 1, q); mask -> 0
            self.register_buffer("embedding", onehot)
        else:
            self.embedding = nn.Parameter(torch.randn(q + 1, d) / d**0.5)  # (q + 1, d)
        branch = cfg.branch_init if cfg.residual else 1.0
        # typed as the list of layers it indexes and iterates like (ModuleList items are bare Modules)
        m = cfg.square_width
        self.layers: list[FactoredAttentionLayer] = nn.ModuleList(  # type: ignore[assignment]
            FactoredAttentionLayer(cfg, 1.0 if k == 0 else branch, None if k == 0 else m) for k in range(cfg.n_layers)
        )
        # U_l (d, m) of layers l >= 2 (empty when square_width is None: they square h itself)
        self.squares = nn.ParameterList(
            nn.Parameter(torch.randn(d, m) / d**0.5) for _ in range(cfg.n_layers - 1) if m is not None)
        self.readout = nn.Linear(d, q) if cfg.readout else None
        self.fields = nn.Parameter(torch.zeros(cfg.seq_len, q)) if cfg.field_bias else None

    @torch.no_grad()
    def grow_from(self, shallower: "FactoredAttention") -> "FactoredAttention":
        """Copy a trained shallower model (same config but ``n_layers``) into this one and switch the
        extra x^2 branches off (their V = 0): with the residual the result computes exactly the
        shallower model's conditionals, so training continues from it (progressive stacking)."""
        deeper = self.cfg.n_layers > shallower.cfg.n_layers
        if shallower.cfg.n_layers > self.cfg.n_layers or (deeper and not self.cfg.residual):
            raise ValueError("grow_from needs a residual model at least as deep (deeper) as the source")
        own = self.state_dict()
        for k, v in shallower.state_dict().items():
            own[k].copy_(v)
        for layer in self.layers[shallower.cfg.n_layers :]:
            layer.V.zero_()
        return self

    # ------------------------------------------------------------------ plain forward
    def embed(self, tokens: Tensor) -> Tensor:  # (B, T) int -> (B, T, d)
        cfg = self.cfg
        if tokens.dim() != 2 or tokens.shape[1] != cfg.seq_len:
            raise ValueError(f"tokens must be (B, {cfg.seq_len}); got {tuple(tokens.shape)}")
        if tokens.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
            raise ValueError("tokens must be integer ids; use forward_embedded for float inputs")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > cfg.mask_id):
            raise ValueError(f"token ids must lie in [0, {cfg.mask_id}] ({cfg.mask_id} = mask)")
        return self.embedding[tokens]

    def _square(self, k: int, h: Tensor) -> Tensor:
        """Input of layer k >= 1 (0-based): h * h, or (h U_k)^2 with ``square_width`` (..., m)."""
        z = h if self.cfg.square_width is None else h @ self.squares[k - 1]
        return z * z

    def _step(self, k: int, h: Tensor) -> Tensor:
        """h^l from h^(l-1) (..., T, d), layer index k = l - 1 >= 1: x^2 doubles the polynomial degree."""
        branch = self.layers[k](self._square(k, h))
        return h + branch if self.cfg.residual else branch

    def _head(self, h: Tensor, pos: Tensor | None = None) -> Tensor:
        """Read-out (..., d) -> logits (..., q); ``pos`` (same leading shape) picks the fields."""
        logits = self.readout(h) if self.readout is not None else h
        if self.fields is None:
            return logits
        return logits + (self.fields if pos is None else self.fields[pos])

    def forward_embedded(self, x: Tensor) -> Tensor:  # (B, T, d) -> logits (B, T, q)
        h = self.layers[0](x)
        for k in range(1, len(self.layers)):
            h = self._step(k, h)
        return self._head(h)

    def forward(self, tokens: Tensor) -> Tensor:  # (B, T) int -> logits (B, T, q)
        """Logits at every position. Put ``cfg.mask_id`` at positions to predict when L >= 2."""
        return self.forward_embedded(self.embed(tokens))

    # ------------------------------------------------------------------ masked conditionals
    def first_layer(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Values u (B, T, H, d) and output h^1 (B, T, d) of the unmasked sequence."""
        u = self.layers[0].values(self.embed(tokens))
        return u, self.layers[0].mix(u)

    def logits_from_first_layer(self, u: Tensor, h1: Tensor, sites: Tensor | None = None) -> Tensor:
        """Logits of p(s_p | s_-p) at sites p (B, K) (default every site, K = T): (B, K, q).

        Each is computed on the copy of the sequence with s_p replaced by the mask token; the copies'
        first layer is h^1 plus a rank-one term (module docstring), the last layer is evaluated at p only.
        """
        B, T, H, d = u.shape
        if sites is None:
            sites = torch.arange(T, device=u.device).expand(B, T)
        K = sites.shape[1]
        bk = (torch.arange(B, device=u.device)[:, None], sites)  # index (B, K) into (B, T, ...)
        if len(self.layers) == 1:  # zero diagonal: h^1_p never saw s_p
            return self._head(h1[bk], sites)
        first = self.layers[0]
        u_mask = first.values(self.embedding[self.cfg.mask_id])  # (H, d)
        du = u_mask - u[bk]  # (B, K, H, d): value change at the masked site
        col = first.attention().permute(2, 1, 0)[sites]  # (B, K, T, H): A1^h_{j p}
        h = h1[:, None] + torch.einsum("bkjh,bkhe->bkje", col, du)  # (B, K, T, d): h^1 of each copy
        for k in range(1, len(self.layers) - 1):
            h = self._step(k, h)
        last = self.layers[-1]
        row = last.attention().permute(1, 0, 2)[sites]  # (B, K, H, T): A_L^h_{p j}
        z = self._square(len(self.layers) - 1, h)  # (B, K, T, m)
        branch = torch.einsum("bkhj,bkje,hef->bkf", row, z, last.V)  # only position p of copy p
        h_p = h[bk[0], torch.arange(K, device=u.device)[None, :], sites]  # (B, K, d)
        out = h_p + branch if self.cfg.residual else branch
        return self._head(out, sites)

    def conditional_logits(self, tokens: Tensor, sites: Tensor | None = None, chunk: int = 1024) -> Tensor:
        """Raw logits of p(s_p | s_-p) (B, K, q) at ``sites`` (B, K) (default all: (B, T, q));
        row p never depends on s_p. Sequences are processed ``chunk`` at a time."""
        out = []
        for lo in range(0, tokens.shape[0], chunk):
            u, h1 = self.first_layer(tokens[lo : lo + chunk])
            out.append(self.logits_from_first_layer(u, h1, None if sites is None else sites[lo : lo + chunk]))
        return torch.cat(out)

    def conditionals(self, tokens: Tensor, sites: Tensor | None = None, chunk: int = 1024) -> Tensor:
        """log p(s_p = a | s_-p) (B, T, q) for every p (or (B, K, q) at ``sites``)."""
        return F.log_softmax(self.conditional_logits(tokens, sites, chunk), dim=-1)


class IncrementalConditionals:
    """The factored model's conditionals for Metropolis-Hastings, updated incrementally.

    Implements the sampler's protocol (:mod:`dsb_widgets.mh_sampler`): ``start(tokens)`` gives the
    raw conditional logits (B, T, q) and a state; ``propose(tokens, state, t, new)`` gives them for
    the sequences with s_t := new. The state is the first layer (u, h^1) (plus the logits when
    L = 1), and changing one token changes it by a rank-one term:

        h^1_j += sum_h A1^h_jt (e_new - e_old) V1^h,        u_t = e_new V1

    For L = 1 the logits change by the same term through the (linear) read-out, O(T q) per chain
    instead of a forward pass; for L >= 2 the masked copies are rebuilt from the updated first
    layer (:meth:`FactoredAttention.logits_from_first_layer`). Calling the object is the plain
    (non-incremental) conditionals function. ``begin`` is the sampler's fast path
    (:class:`~dsb_widgets.incremental.SiteChains`: all chains batched, only the proposed sequence's
    energy computed per proposal, no (B, T, q) conditionals kept), used for energy "pll"/"scores".
    """

    def __init__(self, model: FactoredAttention) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, tokens: Tensor) -> Tensor:
        return self.model.conditional_logits(tokens)

    @torch.no_grad()
    def begin(self, tokens: Tensor, energy: str = "pll") -> SiteChains:
        """State of B chains for the sampler's fast path (:mod:`dsb_widgets.incremental`)."""
        return SiteChains(self.model, tokens, energy)

    @torch.no_grad()
    def start(self, tokens: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        m = self.model
        first = m.layers[0]
        self._ev = first.values(m.embedding)  # (q + 1, H, d): values of every token
        self._att = first.attention()  # (H, T, T)
        if m.readout is not None:
            self._evw = self._ev @ m.readout.weight.T  # (q + 1, H, q)
        else:
            self._evw = self._ev
        u, h1 = m.first_layer(tokens)
        out = m.logits_from_first_layer(u, h1)
        return out, ((out,) if len(m.layers) == 1 else (u, h1))

    @torch.no_grad()
    def propose(self, tokens: Tensor, state: tuple[Tensor, ...], t: int, old: Tensor,
                new: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``tokens`` (B, T) already hold ``new`` at t; ``old`` (B,) the previous tokens there."""
        col = self._att[:, :, t]  # (H, T): A1^h_{j t}
        if len(self.model.layers) == 1:  # logits are linear in the first layer
            logits = state[0] + torch.einsum("hj,bhq->bjq", col, self._evw[new] - self._evw[old])
            return logits, (logits,)
        u, h1 = state
        h1 = h1 + torch.einsum("hj,bhe->bje", col, self._ev[new] - self._ev[old])
        u = u.clone()
        u[:, t] = self._ev[new]
        return self.model.logits_from_first_layer(u, h1), (u, h1)


def pseudo_likelihood_loss(model: FactoredAttention, tokens: Tensor, sites: Tensor | None = None,
                           chunk: int = 1024) -> Tensor:
    """Mean over sequences and sites of -log p(s_i | s_-i) (nats), Besag's pseudo-likelihood.

    ``sites`` (B, K): score only these sites (each masked alone; a stochastic pseudo-likelihood).
    For one layer the masked diagonal already removes s_i from the prediction at i; for L >= 2
    each site is masked in turn (:meth:`FactoredAttention.logits_from_first_layer`).
    """
    logits = model.conditional_logits(tokens, sites, chunk)  # (B, K, q)
    target = tokens if sites is None else tokens.gather(1, sites)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def random_sites(B: int, T: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k distinct random sites per sequence: (B, k) int64."""
    return torch.rand(B, T, generator=generator).argsort(dim=1)[:, :k]


def masked_lm_loss(
    model: FactoredAttention, tokens: Tensor, mask_rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """BERT-style loss: replace a random ``mask_rate`` fraction of positions by the mask token and
    score -log p(s_i | unmasked) on them (at least one position per sequence is masked)."""
    if not 0.0 < mask_rate <= 1.0:
        raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}")
    B, T = tokens.shape
    u = torch.rand(B, T, generator=generator, device=tokens.device)
    mask = u < mask_rate
    mask[torch.arange(B, device=tokens.device), u.argmin(dim=1)] = True
    logits = model(torch.where(mask, model.cfg.mask_id, tokens))  # (B, T, q)
    return F.cross_entropy(logits[mask], tokens[mask])
