"""A small BERT-style masked language model (Devlin et al. 2019), as used by Rende et al. 2024.

Rende, Gerace, Laio, Goldt (NeurIPS 2024) train a BERT on TinyStories and evaluate its masked-LM
loss on *clones* of the data that keep token interactions only up to a chosen order
(:mod:`dsb_widgets.clones`). This is that model at a size that trains on a CPU:

    tokens (B, T) -> token embedding (V + 1 rows: the mask token is id V) + position embedding
      -> n_layer x [x + MHA(LN(x)); x + MLP(LN(x))]   (pre-LN, bidirectional attention)
      -> LN -> linear read-out -> logits (B, T, V)

No dropout and no BatchNorm: the forward pass is a pure function of the parameters, so the
engine's :class:`~dsb_widgets.engine.ensemble.ModelStack` trains several seeds at once with
``vmap(functional_call)``. Attention is written out (softmax(QK^T / sqrt(d_head)) V) rather than
through ``scaled_dot_product_attention`` so it vmaps on every backend.

Masking (:func:`mask_tokens`): BERT's recipe; each position is selected with probability ``p``
(at least one per sequence); of the selected, 80% become the mask token, 10% a uniformly random
real token and 10% stay unchanged; labels are -100 at unselected positions (the engine's
"not scored" value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dsb_widgets.models.gpt import Block, GPTConfig

__all__ = ["BertConfig", "Bert", "mask_tokens", "IGNORE"]

IGNORE = -100  # label of positions that are not scored


@dataclass(frozen=True)
class BertConfig:
    """vocab_size: real tokens V (mask id = V); context: sequence length T (max positions)."""

    vocab_size: int
    context: int
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    mlp_ratio: int = 4
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "d_model", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"BertConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")

    @property
    def mask_id(self) -> int:
        return self.vocab_size


class Bert(nn.Module):
    """Masked LM: ``forward(tokens (B, T') int64, T' <= context) -> logits (B, T', V)``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size + 1, cfg.d_model)  # + the mask token
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        # the GPT's pre-LN blocks without the causal mask: a masked LM sees both sides
        enc = GPTConfig(vocab_size=cfg.vocab_size, context=cfg.context, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        d_model=cfg.d_model, mlp_ratio=cfg.mlp_ratio, causal=False)
        self.blocks = nn.ModuleList(Block(enc) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.positions: Tensor
        self.register_buffer("positions", torch.arange(cfg.context), persistent=False)  # (T,)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 scaling of the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def features(self, tokens: Tensor) -> Tensor:  # (B, T) int -> (B, T, d), the read-out's input
        """Final-LN features; ``forward = head(features)``. Scoring only the masked positions,
        ``head(features(x)[labels != IGNORE])``, skips the (B, T, V) logits of unscored positions
        (same loss and gradients; the read-out is most of a small BERT's cost at V = 1,000)."""
        T = tokens.shape[-1]
        if tokens.dim() != 2 or self.cfg.context < T:
            raise ValueError(f"tokens must be (B, T) with T <= {self.cfg.context}; got {tuple(tokens.shape)}")
        x = self.tok(tokens) + self.pos(self.positions[:T])  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, tokens: Tensor) -> Tensor:  # (B, T) int -> (B, T, V)
        return self.head(self.features(tokens))


def mask_tokens(
    x: Tensor,
    gen: torch.Generator | None,
    mask_id: int,
    p: float = 0.15,
    random_frac: float = 0.1,
    keep_frac: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """BERT masking of x (B, T) ints in [0, mask_id): returns (x_masked, labels), both (B, T).

    Each position is selected with probability ``p`` (and at least one per sequence); a selected
    position becomes ``mask_id`` (prob. 1 - random_frac - keep_frac), a uniform random token in
    [0, mask_id) (random_frac) or stays itself (keep_frac). labels = x where selected, else -100.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"mask probability p must be in (0, 1], got {p}")
    if random_frac < 0 or keep_frac < 0 or random_frac + keep_frac > 1:
        raise ValueError("random_frac and keep_frac must be >= 0 with random_frac + keep_frac <= 1")
    if x.dim() != 2:
        raise ValueError(f"x must be (B, T) token ids, got shape {tuple(x.shape)}")
    B, T = x.shape
    dev = gen.device if gen is not None else x.device  # draws where the generator lives (no host copy)
    u = torch.rand(B, T, generator=gen, device=dev).to(x.device)  # (B, T)
    selected = u < p
    selected[torch.arange(B, device=x.device), u.argmin(dim=1)] = True
    kind = torch.rand(B, T, generator=gen, device=dev).to(x.device)  # < 1 - r - k: mask; then random; then keep
    rand_tok = torch.randint(0, mask_id, (B, T), generator=gen, device=dev).to(x.device)
    cut = 1.0 - random_frac - keep_frac
    replaced = torch.where(kind < cut, torch.full_like(x, mask_id), torch.where(kind < cut + random_frac, rand_tok, x))
    x_masked = torch.where(selected, replaced, x)
    labels = torch.where(selected, x, torch.full_like(x, IGNORE))
    return x_masked, labels
