"""Masked-LM models built of L layers of *factored attention* (Rende, Gerace, Laio, Goldt 2024).

Rende et al., "A distributional simplicity bias in the learning dynamics of transformers"
(NeurIPS 2024), build *clones* of a text dataset from masked language models whose attention
weights depend only on positions. One layer (for head ``h``)::

    y_i = sum_h sum_{j != i} A^h_ij  x_j V^h                          (B, T, d)

with ``A^h`` a learned (T, T) matrix per head whose diagonal is masked, so position ``i`` never
sees its own token, and ``V^h`` a (d, d) value matrix. Layers are chained with the elementwise
activation ``x -> x**2``; a linear read-out and a softmax over the vocabulary at each position
give the conditionals ``p(s_i | s_-i)``.

How many bodies? (the paper's "2^(L-1)+1-body" claim, derived here.) With one-hot inputs
``x_j = e_{s_j}`` every layer is linear in its input and the activation squares, so

    layer 1 output:  degree 1 in the x_j
    after l layers:  degree 2^(l-1)  (each of the l-1 activations doubles the degree)

and the read-out is linear: the logit ``logit_i(a)`` is a polynomial of degree ``D = 2^(L-1)``
in the one-hot inputs of the *other* positions (monomials x_{j1} ... x_{jD}; since x_j is
one-hot, a repeated index is still a function of one site). Hence ``log p(s_i = a | s_-i)``
couples ``s_i`` with at most ``D`` other sites: interactions of up to ``2^(L-1) + 1`` bodies,
i.e. 1, 2, 3, 4, 6 layers -> 2, 3, 5, 9, 33 bodies. ``tests/test_factored_attention.py`` checks
both the polynomial degree (finite differences in a scale ``t`` of the inputs) and the body
count (mixed differences over D+1 distinct sites vanish, over D sites they do not).

Masking. With one layer the masked diagonal makes the output at ``i`` independent of ``s_i``,
so a single forward pass gives every conditional at once (this is the pseudo-likelihood of a
Potts model, see :mod:`dsb_widgets.potts`). With ``L >= 2`` it does not: ``s_i`` reaches
position ``i`` through ``i -> j -> i``. :meth:`FactoredAttention.conditionals` therefore
replaces ``s_i`` by the mask token (id ``vocab_size``) for each ``i`` in turn when ``L >= 2``,
which is what the paper's MLM training does (masked positions carry the mask token).

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

__all__ = [
    "FactoredAttentionConfig",
    "FactoredAttention",
    "pseudo_likelihood_loss",
    "masked_lm_loss",
    "n_bodies",
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

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError("seq_len must be >= 2 (a position needs another to attend to)")
        if self.attention not in ("free", "softmax"):
            raise ValueError(f"attention must be 'free' or 'softmax', got {self.attention!r}")
        if not self.readout and self.d_embed not in (None, self.vocab_size):
            raise ValueError("readout=False needs d_embed=None (one-hot) or d_embed == vocab_size")

    @property
    def d(self) -> int:
        return self.vocab_size if self.d_embed is None else self.d_embed

    @property
    def mask_id(self) -> int:
        return self.vocab_size


class FactoredAttentionLayer(nn.Module):
    """One factored-attention layer: y_i = sum_h sum_{j != i} A^h_ij x_j V^h (no softmax by default)."""

    def __init__(self, cfg: FactoredAttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        T, d, H = cfg.seq_len, cfg.d, cfg.n_heads
        self.A = nn.Parameter(cfg.init_std * torch.randn(H, T, T))  # (H, T, T)
        self.V = nn.Parameter(torch.randn(H, d, d) / d**0.5)  # (H, d, d)
        self.register_buffer("offdiag", 1.0 - torch.eye(T), persistent=False)  # (T, T)

    def attention(self) -> Tensor:
        """Effective weights (H, T, T), zero on the diagonal."""
        if self.cfg.attention == "softmax":
            masked = self.A.masked_fill(self.offdiag == 0, float("-inf"))
            return torch.softmax(masked, dim=-1)
        return self.A * self.offdiag

    def forward(self, x: Tensor) -> Tensor:  # x: (B, T, d) -> (B, T, d)
        values = torch.einsum("btd,hde->bhte", x, self.V)  # (B, H, T, d)
        return torch.einsum("hij,bhje->bie", self.attention(), values)


class FactoredAttention(nn.Module):
    """L factored layers with x**2 activation between them, linear read-out, logits (B, T, q)."""

    def __init__(self, cfg: FactoredAttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        q, d = cfg.vocab_size, cfg.d
        if cfg.d_embed is None:
            onehot = torch.cat([torch.eye(q), torch.zeros(1, q)])  # (q + 1, q); mask -> 0
            self.register_buffer("embedding", onehot)
        else:
            self.embedding = nn.Parameter(torch.randn(q + 1, d) / d**0.5)  # (q + 1, d)
        self.layers = nn.ModuleList(FactoredAttentionLayer(cfg) for _ in range(cfg.n_layers))
        self.readout = nn.Linear(d, q) if cfg.readout else None
        self.fields = nn.Parameter(torch.zeros(cfg.seq_len, q)) if cfg.field_bias else None

    def embed(self, tokens: Tensor) -> Tensor:  # (B, T) int -> (B, T, d)
        cfg = self.cfg
        if tokens.dim() != 2 or tokens.shape[1] != cfg.seq_len:
            raise ValueError(f"tokens must be (B, {cfg.seq_len}); got {tuple(tokens.shape)}")
        if tokens.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
            raise ValueError("tokens must be integer ids; use forward_embedded for float inputs")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > cfg.mask_id):
            raise ValueError(f"token ids must lie in [0, {cfg.mask_id}] ({cfg.mask_id} = mask)")
        return self.embedding[tokens]

    def forward_embedded(self, x: Tensor) -> Tensor:  # (B, T, d) -> logits (B, T, q)
        for k, layer in enumerate(self.layers):
            if k > 0:
                x = x * x  # the x^2 activation doubles the polynomial degree
            x = layer(x)
        logits = self.readout(x) if self.readout is not None else x
        return logits + self.fields if self.fields is not None else logits

    def forward(self, tokens: Tensor) -> Tensor:  # (B, T) int -> logits (B, T, q)
        """Logits at every position. Put ``cfg.mask_id`` at positions to predict when L >= 2."""
        return self.forward_embedded(self.embed(tokens))

    def conditionals(self, tokens: Tensor, chunk: int = 4096) -> Tensor:
        """log p(s_t = a | s_-t) for every t (B, T, q); position t's row never depends on s_t.

        One forward pass when n_layers == 1 (masked diagonal); otherwise position t is replaced
        by the mask token for each t in turn (B*T sequences, in chunks of ``chunk`` rows).
        """
        if self.cfg.n_layers == 1:
            return F.log_softmax(self(tokens), dim=-1)
        B, T = tokens.shape
        eye = torch.eye(T, dtype=torch.bool, device=tokens.device)  # (T, T)
        masked = torch.where(eye, self.cfg.mask_id, tokens[:, None, :])  # (B, T, T)
        masked = masked.reshape(B * T, T)
        rows = torch.arange(B * T, device=tokens.device)
        out = []
        for lo in range(0, B * T, chunk):
            logits = self(masked[lo : lo + chunk])  # (b, T, q)
            out.append(logits[rows[: logits.shape[0]], rows[lo : lo + logits.shape[0]] % T])
        return F.log_softmax(torch.cat(out).reshape(B, T, -1), dim=-1)


def pseudo_likelihood_loss(model: FactoredAttention, tokens: Tensor) -> Tensor:
    """Mean over sequences and sites of -log p(s_i | s_-i) (nats), Besag's pseudo-likelihood.

    For one layer this is one forward pass: the masked diagonal already removes s_i from the
    prediction at i, so the logits at all positions are the T conditionals of one sequence.
    For L >= 2 each site is masked in turn (see :meth:`FactoredAttention.conditionals`).
    """
    logp = model.conditionals(tokens)  # (B, T, q)
    return -logp.gather(-1, tokens[..., None]).mean()


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
