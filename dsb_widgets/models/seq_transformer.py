"""Sequence regressors for the symmetry experiment: a bidirectional transformer and an MLP control.

``SeqTransformer`` reads n continuous tokens x_i in R^d (B, n, d), embeds them linearly, adds a
*learned* positional embedding (the only thing that lets it break permutation symmetry: without
it the model is exactly S_n invariant and could fit only the trivial sector), runs the GPT's
pre-LN blocks with ``causal=False`` (softmax attention, GELU MLP), mean-pools over positions and
maps to K outputs (one per target sector). GPT-2 initialisation, N(0, 0.02), for the embeddings.

``SeqMLP`` is the control of Lavie et al.'s claim: a fully connected network on the flattened
context (B, n*d). Its initialisation is rotation invariant in R^{n d}, so any two unit-norm
*linear* targets (e.g. the ``trivial`` and ``standard`` sectors with ``feature="linear"``) are
learned at exactly the same rate in distribution: it has no S_n bias, only a transformer does.
No BatchNorm or dropout (the engine stacks seeds with ``torch.func.vmap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dsb_widgets.models.gpt import Block, GPTConfig

SEQ_MODELS = ("transformer", "mlp")


@dataclass(frozen=True)
class SeqConfig:
    context: int  # n positions
    dim: int  # d, token dimension
    outputs: int  # K, one per sector
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    pos_std: float = 0.02  # initial scale of the learned positional embedding
    width: int = 256  # MLP control hidden width

    def __post_init__(self) -> None:
        if self.context < 1 or self.dim < 1 or self.outputs < 1:
            raise ValueError(f"need context, dim, outputs >= 1; got {self}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")


class SeqTransformer(nn.Module):
    """(B, n, d) contexts -> (B, K) regression outputs; softmax attention, learned positions."""

    def __init__(self, cfg: SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        gcfg = GPTConfig(vocab_size=2, context=cfg.context, n_layer=cfg.n_layer, n_head=cfg.n_head,
                         d_model=cfg.d_model, causal=False)
        self.embed = nn.Linear(cfg.dim, cfg.d_model)
        self.wpe = nn.Parameter(torch.randn(cfg.context, cfg.d_model) * cfg.pos_std)  # (n, C)
        self.blocks = nn.ModuleList(Block(gcfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.outputs)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim >= 2 and name != "wpe":
                resid = name.endswith(("proj.weight", "mlp.2.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer) if resid else 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, n, d)
        if n != self.cfg.context:
            raise ValueError(f"context length {n} != the model's {self.cfg.context}; pass --context {n}")
        h = self.embed(x) + self.wpe  # (B, n, C)
        for block in self.blocks:
            h = block(h)  # (B, n, C)
        return self.head(self.ln_f(h).mean(dim=1))  # (B, K)


class SeqMLP(nn.Module):
    """(B, n, d) -> flatten (B, n d) -> 2 hidden GELU layers -> (B, K); no S_n structure."""

    def __init__(self, cfg: SeqConfig) -> None:
        super().__init__()
        w = cfg.width
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(cfg.context * cfg.dim, w), nn.GELU(),
                                 nn.Linear(w, w), nn.GELU(), nn.Linear(w, cfg.outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, K)


def make_seq_model(name: str, cfg: SeqConfig) -> nn.Module:
    if name == "transformer":
        return SeqTransformer(cfg)
    if name == "mlp":
        return SeqMLP(cfg)
    raise ValueError(f"unknown model {name!r}; pass --model one of: {', '.join(SEQ_MODELS)}")
