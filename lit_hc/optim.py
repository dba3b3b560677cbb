"""Optimizer parameter groups with the paper's weight-decay rule (Zhu et al. 2025, Sec. 4).

Decay: weights of linear and conv layers, and the dynamic HC / mHC projections (W_alpha, W_beta, phi).
No decay: static HC parts (static_alpha, static_beta, mHC biases), the dynamic scales, norms, biases,
embeddings, position tables and class tokens. Frozen parameters are left out.
nanoGPT's `p.dim() >= 2` rule is not used: it would decay static_alpha, an (n, n+1) matrix.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lit_hc.hyper_connections import StreamConnection

_DECAYED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def split_decay(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """(decay, no_decay): trainable parameters by qualified name, each parameter once (tied weights dedup)."""
    decayed: set[int] = set()
    for module in model.modules():
        if isinstance(module, _DECAYED_LAYERS):
            decayed.add(id(module.weight))
        if isinstance(module, StreamConnection):
            decayed.update(id(getattr(module, name)) for name in module.decay_params if hasattr(module, name))
    # An embedding tied to an output head is an embedding: no decay (it is also registered as lm_head.weight).
    decayed -= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = {}, {}
    for name, p in model.named_parameters():  # named_parameters() yields a tied parameter once
        if p.requires_grad:
            (decay if id(p) in decayed else no_decay)[name] = p
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: `torch.optim.AdamW(param_groups(model, 0.1), lr=...)`."""
    decay, no_decay = split_decay(model)
    return [
        {"params": list(decay.values()), "weight_decay": weight_decay, "names": list(decay)},
        {"params": list(no_decay.values()), "weight_decay": 0.0, "names": list(no_decay)},
    ]


def configure_optimizers_for_hyper_connections(model: nn.Module, learning_rate: float, weight_decay: float = 0.1,
                                               betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, weight_decay)`: the name and signature other HC ports give this helper
    (takes the learning rate, returns the optimizer); no decay on the static HC parts (HC paper Sec. 4)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=learning_rate, betas=betas)
