"""GPT-style decoder-only language model built from the shared block.

Letters used in shapes: b batch, t tokens, n streams, d model width, v vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_hc.checks import one_of, positive, probability
from lit_hc.hyper_connections import HCConfig, expand_streams, reduce_streams, stream_recompute
from lit_hc.layers import Block, layer_norm, rope_cache


@dataclass
class GPTConfig:
    """Architecture of the language model (nanoGPT names). Defaults: a small byte-level model for CPU."""

    vocab_size: int = 256
    """Tokens in the vocabulary (256 = bytes). Pad to a multiple of 64 for speed on GPU (OLMo: 50304)."""
    block_size: int = 256
    """Longest context the model accepts (and the size of the learned position table / RoPE cache)."""
    n_layer: int = 6
    """Transformer blocks (each has two sub-layers, so 2 * n_layer residual connections)."""
    n_head: int = 4
    """Attention heads; must divide n_embd."""
    n_embd: int = 256
    """Model width d."""
    dropout: float = 0.0
    """Dropout on embeddings, attention probabilities and sub-layer outputs."""
    bias: bool = True
    """Biases in linear layers and norms (OLMo: False)."""
    mlp: Literal["gelu", "swiglu"] = "gelu"
    """MLP type: GPT-2's GELU MLP or SwiGLU (OLMo, Llama)."""
    mlp_ratio: float = 4.0
    """MLP hidden width / d. For SwiGLU this is the width of each of the two input projections."""
    pos_emb: Literal["learned", "rope"] = "learned"
    """Absolute learned positions (GPT-2) or rotary embeddings in attention (OLMo)."""
    norm_affine: bool = True
    """Learnable LayerNorm gain/bias; False = OLMo's non-parametric LayerNorm (also inside DHC)."""
    hc: HCConfig = field(default_factory=HCConfig)
    """Residual variant wrapping every sub-layer."""

    def __post_init__(self) -> None:
        if isinstance(self.hc, dict):  # plain dicts from YAML / kwargs
            self.hc = HCConfig(**self.hc)
        positive("GPTConfig", vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                  n_head=self.n_head, n_embd=self.n_embd, mlp_ratio=self.mlp_ratio)
        probability("GPTConfig", dropout=self.dropout)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        one_of("GPTConfig", "mlp", self.mlp, ("gelu", "swiglu"))
        one_of("GPTConfig", "pos_emb", self.pos_emb, ("learned", "rope"))
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig.n_embd/n_head={self.n_embd // self.n_head} must be even for pos_emb='rope'")


class GPT(nn.Module):
    """Token embedding -> n streams -> blocks -> sum of streams -> final norm -> tied output head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        norm = layer_norm(affine=c.norm_affine, bias=c.bias)
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd) if c.pos_emb == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(c.n_embd, c.n_head, i, c.hc, causal=True, mlp=c.mlp, mlp_ratio=c.mlp_ratio, bias=c.bias,
                  norm_layer=norm, dropout=c.dropout, attn_dropout=c.dropout)
            for i in range(c.n_layer)
        )
        # The final norm sees the sum of n streams, n * h at init. LN(n h; eps) = LN(h; eps / n^2), so its eps
        # grows with n^2 to make HC at init compute exactly the Pre-Norm network (the paper ignores eps).
        self.norm = norm(c.n_embd, eps=1e-5 * c.hc.expansion_rate**2)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied (GPT-2, OLMo-1B)
        if c.pos_emb == "rope":
            cos, sin = rope_cache(c.block_size, c.n_embd // c.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # GPT-2 / nanoGPT: N(0, 0.02) for linear and embedding weights, zero biases.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        # GPT-2: outputs added to the residual stream get std 0.02 / sqrt(2 * n_layer); HC multiplies that by
        # its sqrt(n) factor (HC paper Sec. 4; 'divide' by default, a reading of the paper, see HCConfig).
        std = 0.02 / math.sqrt(2 * self.config.n_layer) * self.config.hc.output_init_factor()
        for block in self.blocks:
            for proj in block.output_projections():
                nn.init.normal_(proj.weight, std=std)
        # HC / mHC parameters keep the init their modules gave them (Eq. 14; mHC biases).

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (b, t) int64 -> logits (b, t, v)."""
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} exceeds GPTConfig.block_size={self.config.block_size}")
        x = self.wte(idx)  # (b, t, d)
        if self.wpe is not None:
            x = x + self.wpe.weight[:t]
        rope = (self.rope_cos[:t], self.rope_sin[:t]) if self.wpe is None else None
        H = expand_streams(self.drop(x), self.config.hc.expansion_rate)  # (b, t, n, d)
        with stream_recompute(self.config.hc, self.blocks):
            for block in self.blocks:
                H = block(H, rope)
        return self.lm_head(self.norm(reduce_streams(H)))  # (b, t, v)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """Sample max_new_tokens continuations of idx (b, t); greedy when temperature == 0."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size :])[:, -1, :]  # (b, v)
            if temperature == 0:
                next_id = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat([idx, next_id], dim=1)
        return idx
