"""Vision Transformer (Dosovitskiy et al. 2021) built from the shared block.

Letters used in shapes: b batch, t tokens (patches + class token), n streams, d model width, c classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn

from lit_hc.checks import one_of, positive, probability
from lit_hc.hyper_connections import HCConfig, expand_streams, reduce_streams, stream_recompute
from lit_hc.layers import Block, layer_norm


@dataclass
class ViTConfig:
    """Architecture of the image classifier. Defaults: a small ViT for 32x32 images on CPU."""

    image_size: int = 32
    """Input height = width in pixels; must be divisible by patch_size."""
    patch_size: int = 4
    """Side of the square patches that become tokens."""
    in_chans: int = 3
    """Image channels."""
    num_classes: int = 10
    """Output classes."""
    dim: int = 192
    """Model width d."""
    depth: int = 6
    """Transformer blocks."""
    heads: int = 3
    """Attention heads; must divide dim."""
    mlp_ratio: float = 4.0
    """MLP hidden width / d."""
    dropout: float = 0.0
    """Dropout after the embeddings and on sub-layer outputs (paper App. E: 0.1)."""
    drop_path: float = 0.0
    """Stochastic-depth rate of the last block, increasing linearly from 0 over depth."""
    global_pool: Literal["token", "avg"] = "token"
    """Class token (original ViT) or the mean of the patch tokens."""
    hc: HCConfig = field(default_factory=HCConfig)
    """Residual variant wrapping every sub-layer."""

    def __post_init__(self) -> None:
        if isinstance(self.hc, dict):
            self.hc = HCConfig(**self.hc)
        positive("ViTConfig", image_size=self.image_size, patch_size=self.patch_size, in_chans=self.in_chans,
                 num_classes=self.num_classes, dim=self.dim, depth=self.depth, heads=self.heads,
                 mlp_ratio=self.mlp_ratio)
        probability("ViTConfig", dropout=self.dropout, drop_path=self.drop_path)
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"ViTConfig.dim={self.dim} must be divisible by heads={self.heads}")
        one_of("ViTConfig", "global_pool", self.global_pool, ("token", "avg"))


class ViT(nn.Module):
    """Patches + class token + positions -> n streams -> blocks -> sum of streams -> norm -> pool -> head."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        norm = layer_norm(eps=1e-6)  # timm's ViT norm
        self.patch_embed = PatchEmbed(c.image_size, c.patch_size, c.in_chans, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, c.dim))
        self.pos_drop = nn.Dropout(c.dropout)
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]  # linear, as timm
        self.blocks = nn.ModuleList(
            Block(c.dim, c.heads, i, c.hc, causal=False, mlp="gelu", mlp_ratio=c.mlp_ratio, norm_layer=norm,
                  dropout=c.dropout, drop_path=rates[i])
            for i in range(c.depth)
        )
        self.norm = norm(c.dim, eps=1e-6 * c.hc.expansion_rate**2)  # sees n * h at init: see GPT
        self.head = nn.Linear(c.dim, c.num_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # timm ViT: truncated normal 0.02 for linear weights and positions, zero biases, tiny class token.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        # Patch projection like a linear layer (fan-in uniform, as timm's jax init does for the conv).
        w = self.patch_embed.proj.weight
        nn.init.uniform_(w, -1 / math.sqrt(w[0].numel()), 1 / math.sqrt(w[0].numel()))
        # Sub-layer outputs get HC's sqrt(n) factor (HC paper Sec. 4; 'divide' by default, see HCConfig).
        factor = self.config.hc.output_init_factor()
        for block in self.blocks:
            for proj in block.output_projections():
                trunc_normal_(proj.weight, std=0.02 * factor)
        # HC / mHC parameters keep the init their modules gave them.

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (b, c_in, h, w) -> logits (b, c)."""
        x = self.patch_embed(images)  # (b, t-1, d)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (b, t, d)
        H = expand_streams(self.pos_drop(x), self.config.hc.expansion_rate)  # (b, t, n, d)
        with stream_recompute(self.config.hc, self.blocks):
            for block in self.blocks:
                H = block(H)
        x = self.norm(reduce_streams(H))  # (b, t, d)
        x = x[:, 0] if self.config.global_pool == "token" else x[:, 1:].mean(dim=1)
        return self.head(x)
