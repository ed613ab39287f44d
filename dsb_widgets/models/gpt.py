"""A small GPT: causal transformer language model in one readable file (after nanoGPT).

Used by the text experiment (``dsb run text --model gpt``) to reproduce Belrose et al. (ICML
2024, Sec. 5): a causal LM trained on real text first fits the unigram statistics of its data,
then the bigram ones; its loss on unigram / bigram sequences falls, then rises.

Pre-LayerNorm blocks, learned absolute positions, GELU MLP, output head tied to the token
embedding (applied as ``F.linear(h, wte.weight)``, no parameter sharing tricks, so
``torch.func.stack_module_state`` + ``vmap`` train several seeds at once). No dropout, no
buffers updated in place, no BatchNorm: the model is a pure function of its parameters.

Measured (torch 2.13 CPU, one thread, one seed, batch 32 x 64 tokens, V = 1000, n_layer 2,
n_head 4, d_model 128: 0.53M parameters): ~10.7k training tokens per CPU-second (forward,
backward, AdamW). Attention is written out: ``F.scaled_dot_product_attention`` has no vmap
batching rule on CPU and was ~1.6x slower under the engine's vmap (measured side by side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int  # V: input ids and output classes
    context: int  # T_max: longest sequence (learned positions)
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 128  # C
    mlp_ratio: int = 4
    causal: bool = True  # False gives a bidirectional encoder (same blocks, no mask)

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}; change one of them")
        if self.vocab_size < 2 or self.context < 1 or self.n_layer < 1:
            raise ValueError(f"need vocab_size >= 2, context >= 1, n_layer >= 1; got {self}")


class SelfAttention(nn.Module):
    """Multi-head self-attention (causal unless ``cfg.causal`` is False)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.causal = cfg.n_head, cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        q, k, v = self.qkv(x).split(c, dim=-1)  # each (B, T, C)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))  # (B, H, T, C/H)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
        if self.causal:  # explicit mask (see the module docstring on SDPA under vmap)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (T, T)
            att = att.masked_fill(~mask, float("-inf"))
        y = att.softmax(dim=-1) @ v  # (B, H, T, C/H)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, V); position t sees tokens 0..t."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer), zero biases."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim >= 2:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape  # (B, T)
        if t > self.cfg.context:
            raise ValueError(f"sequence length {t} exceeds the model context {self.cfg.context}; pass --context {t}")
        pos = torch.arange(t, device=idx.device)  # (T,)
        h = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            h = block(h)  # (B, T, C)
        return F.linear(self.ln_f(h), self.wte.weight)  # (B, T, V), head tied to the embedding
