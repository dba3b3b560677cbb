"""Measurements of a model's residual connections: parameter / FLOP / memory overhead, connection matrices,
and the gain of the product of residual matrices over depth (the mHC paper's stability diagnostic).
"""
from __future__ import annotations

import dataclasses
from typing import Union

import torch
from torch import nn

from lit_hc.gpt import GPT, GPTConfig
from lit_hc.hyper_connections import HCConfig, StreamConnection, observe_saved
from lit_hc.vit import ViT, ViTConfig

ModelConfig = Union[GPTConfig, ViTConfig]


def stream_connections(model: nn.Module) -> list[StreamConnection]:
    """Every residual-variant module, in sub-layer order (layer index 0, 1, 2, ...)."""
    return [m for m in model.modules() if isinstance(m, StreamConnection)]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """total / hc (inside residual-variant modules) / trainable; tied parameters counted once."""
    hc_ids = {id(p) for m in stream_connections(model) for p in m.parameters()}
    params = list(model.parameters())  # parameters() yields each tied parameter once
    return {
        "total": sum(p.numel() for p in params),
        "hc": sum(p.numel() for p in params if id(p) in hc_ids),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def build_model(config: ModelConfig, device: str | torch.device = "cpu") -> nn.Module:
    with torch.device(device):
        return GPT(config) if isinstance(config, GPTConfig) else ViT(config)


def hc_module_flops(hc: HCConfig, d: int) -> float:
    """Extra forward FLOPs per token of one connection module over the residual add (multiply-add = 2)."""
    n = hc.expansion_rate
    if hc.kind == "residual":
        return 0.0
    if hc.kind == "hc":
        flops = 2 * n * (n + 1) * d + 2 * n * d - d  # width mix (n+1 rows), depth beta*y + R, minus the add
        if hc.dynamic:
            flops += 5 * n * d + 2 * n * d * (n + 2) + 3 * n * (n + 2)  # LayerNorm, projection, act and scale
        return float(flops)
    sinkhorn = hc.sinkhorn_iters * 4 * n * n
    return float(3 * n * d + 2 * n * d * (2 * n + n * n) + sinkhorn + 2 * n * d + 2 * n * n * d + 2 * n * d - d)


def hc_module_activations(hc: HCConfig, d: int) -> int:
    """Extra elements per token one connection module saves for backward (estimate, see `hc_overhead`)."""
    n = hc.expansion_rate
    if hc.kind == "residual":
        return 0
    extra = n * d + d  # the stream state H (for d alpha) and the branch output y (for d beta)
    if hc.kind == "hc" and hc.dynamic or hc.kind == "mhc":
        extra += 2 * n * d  # norm input and normalised H for the coefficient projection
    return extra


def hc_overhead(config: ModelConfig) -> dict[str, float]:
    """Parameters, forward FLOPs per token and saved activations per token of `config` vs its residual baseline.

    Parameters are counted exactly (both models built on the meta device). FLOPs use the usual estimate
    2 * non-embedding params + 4 * layers * d * tokens (attention scores and values) for the baseline, and
    count the HC arithmetic of `hc_module_flops`. Activations: the baseline saves about 34 d elements per
    token per block (Korthikanti et al. 2022, without attention scores, i.e. flash/SDPA attention); HC adds
    what `hc_module_activations` counts for each of the two modules per block. Both are estimates.
    """
    baseline_cfg = dataclasses.replace(config, hc=HCConfig())
    ours, base = build_model(config, "meta"), build_model(baseline_cfg, "meta")
    p_ours, p_base = count_parameters(ours)["total"], count_parameters(base)["total"]
    if isinstance(config, GPTConfig):
        d, layers, tokens = config.n_embd, config.n_layer, config.block_size
        embedding = config.vocab_size * d + (config.block_size * d if config.pos_emb == "learned" else 0)
    else:
        d, layers = config.dim, config.depth
        tokens = (config.image_size // config.patch_size) ** 2 + 1
        embedding = base.pos_embed.numel() + base.cls_token.numel()
    flops_base = 2 * (p_base - embedding) + 4 * layers * d * tokens
    flops_extra = 2 * layers * hc_module_flops(config.hc, d)
    act_base = 34 * d * layers
    act_extra = 2 * layers * hc_module_activations(config.hc, d)
    return {
        "params": p_ours, "params_baseline": p_base, "params_extra": p_ours - p_base,
        "params_extra_pct": 100 * (p_ours - p_base) / p_base,
        "flops_per_token": flops_base + flops_extra, "flops_extra_per_token": flops_extra,
        "flops_extra_pct": 100 * flops_extra / flops_base,
        "activations_per_token": act_base + act_extra, "activations_extra_pct": 100 * act_extra / act_base,
    }


def training_flops(config: ModelConfig, units: float) -> float:
    """Training FLOPs for `units` tokens (GPT) or images (ViT): 3 x the forward of `hc_overhead`, HC's extra
    arithmetic included (backward = 2 x forward), plus the GPT's output head (2 x vocab x d per token), which the
    non-embedding count leaves out. A ViT image is (image_size / patch_size)^2 + 1 tokens; its head is ignored."""
    forward = hc_overhead(config)["flops_per_token"]
    if isinstance(config, GPTConfig):
        return 3 * (forward + 2 * config.vocab_size * config.n_embd) * units
    return 3 * forward * ((config.image_size // config.patch_size) ** 2 + 1) * units


def gpu_hours(flops: float, peak_flops: float = 989e12, utilisation: float = 0.4) -> float:
    """Hours on one accelerator at `utilisation` of its peak (default: an H100's dense bf16 peak at 40%)."""
    return flops / (peak_flops * utilisation) / 3600


@torch.no_grad()
def connection_matrices(model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """The (n+1)x(n+1) HC matrix of every connection module, averaged over the batch and tokens of `inputs`.

    Returns (num_modules, n+1, n+1) in sub-layer order; row 0 = B, rows 1.. = [A_m | A_r] (paper Eq. 1).
    Static HC gives the same matrices for any input; dynamic HC and mHC are input dependent.
    """
    found: list[torch.Tensor] = []

    def record(module: StreamConnection, args: tuple) -> None:
        found.append(module.connection_matrix(args[0]).float().flatten(0, -3).mean(0))

    handles = [m.register_forward_pre_hook(record) for m in stream_connections(model)]
    was_training = model.training
    try:
        model.eval()
        model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return torch.stack(found)


def residual_gains(matrices: torch.Tensor) -> torch.Tensor:
    """Amax gains of the running product of residual matrices over depth, (num_modules, 2).

    A module maps the streams by R = A_r^T H, so after k modules the residual path is
    P_k = A_r^(k)T ... A_r^(1)T. Column 0: max absolute row sum of P_k (forward gain); column 1: max absolute
    column sum (backward gain). Both stay at 1 for doubly stochastic mHC matrices.
    """
    residual = matrices[:, 1:, 1:].transpose(-1, -2).double()
    product = torch.eye(residual.shape[-1], dtype=torch.float64)
    gains = []
    for r in residual:
        product = r @ product
        gains.append(torch.stack([product.abs().sum(-1).max(), product.abs().sum(-2).max()]))
    return torch.stack(gains).float()


def unrolled_connections(matrices: torch.Tensor) -> torch.Tensor:
    """The paper's Fig. 7 view: how much of each earlier output reaches each sub-layer's input.

    Unrolls the streams over depth. Sources: the embedding h0 (copied into every stream) and each sub-layer's
    output y_j. With H^k[i] = sum_s C^k[i, s] * source_s, C^0 = 1, and C^{k+1} = [A_r^T C^k | B^T], row k of
    the result is A_m^T C^k (the weight of each source in sub-layer k's input) and the last row is 1^T C^L
    (the sum of streams fed to the final norm). Returns (L+1, L+1), lower triangular; all ones for the
    Pre-Norm residual.
    """
    L, n = matrices.shape[0], matrices.shape[-1] - 1
    m = matrices.double()
    C = torch.ones(n, 1, dtype=torch.float64)
    out = torch.zeros(L + 1, L + 1, dtype=torch.float64)
    for k in range(L):
        beta, a_m, a_r = m[k, 0, 1:], m[k, 1:, 0], m[k, 1:, 1:]
        out[k, : k + 1] = a_m @ C
        C = torch.cat([a_r.T @ C, beta.unsqueeze(1)], dim=1)
    out[L] = C.sum(0)
    return out.float()


def saved_activation_bytes(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward pass of `model`, parameters excluded.

    Measured with saved-tensor hooks (each storage counted once), so it works on any device and is
    deterministic: the training-memory cost that grows with batch and sequence length.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    alive = []  # held until the end, so no freed storage's address is reused and counted as one with another

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_storages:
            saved[ptr] = t.untyped_storage().nbytes()
            alive.append(t)
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), observe_saved(pack):
        model(*inputs)
    return sum(saved.values())
