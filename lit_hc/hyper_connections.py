"""Residual-connection variants: Pre-Norm residual, Hyper-Connections (static / dynamic) and mHC.

Letters used in shapes: b batch, t tokens, n streams (expansion rate), d model width.
Hidden states between sub-layers are H of shape (..., n, d); the residual baseline uses n = 1.

Every variant splits into the paper's two halves (Zhu et al. 2025, Eq. 6-7):
    x, R, beta = width_connection(H)       x: branch input (..., d), R: mixed residual (..., n, d)
    H'         = depth_connection(T(x), R, beta)   H'[j] = beta[j] * T(x) + R[j]
so a Transformer block is written once and does not know which variant it runs.
"""
from __future__ import annotations

import contextlib
import math
import re
import weakref
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_hc import cpu_kernels

Branch = Callable[[torch.Tensor], torch.Tensor]
NormLayer = Callable[[int], nn.Module]

KINDS = ("residual", "hc", "mhc")
OUTPUT_INIT_SCALES = ("auto", "none", "divide", "multiply")
RES_OFFDIAG_LOGIT = -2.0  # mHC: init logit of the off-diagonal entries of H_res


@dataclass
class HCConfig:
    """Which residual connection every sub-layer uses. Shared by the GPT and the ViT."""

    kind: Literal["residual", "hc", "mhc"] = "residual"
    """'residual' = Pre-Norm residual baseline; 'hc' = Hyper-Connections; 'mhc' = manifold-constrained HC."""
    expansion_rate: int = 1
    """n, the number of residual streams. Must be 1 for 'residual'."""
    dynamic: bool = True
    """HC only: input-dependent coefficients (DHC) on top of the static ones (SHC)."""
    use_tanh: bool = True
    """DHC only: squash the dynamic projections with tanh (the paper's default); False = 'w/o tanh'."""
    freeze_width: bool = False
    """HC only, paper Table 3 ablation: keep the width connections (static_alpha, W_alpha) at their init."""
    freeze_beta: bool = False
    """HC only, paper Table 3 ablation: keep the depth weights B (static_beta, W_beta) at their init."""
    output_init_scale: Literal["auto", "none", "divide", "multiply"] | float = "auto"
    """sqrt(n) scaling of the init std of every sub-layer's output projection (paper Sec. 4). The paper does
    not say which direction; 'divide' is our reading (each branch output is added into n summed streams).
    'auto' = 'divide' for hc/mhc and 'none' for the residual baseline. A positive number is an explicit
    multiplier, e.g. 0.5 gives the residual baseline the init that 'divide' gives HC at n = 4 (a control)."""
    sinkhorn_iters: int = 20
    """mHC only: Sinkhorn-Knopp iterations that project H_res onto doubly stochastic matrices."""
    recompute: bool = False
    """Recompute instead of keeping, the mHC paper's way (Sec. 4.3): in GPT and ViT the stream state H is kept for
    backward only at the start of every segment of blocks (~sqrt(nL / (n + 2)) sub-layers, StreamRecompute), the
    states in between and each width connection's intermediates (norm, projection, coefficients, Sinkhorn) are
    computed again in the backward pass from it and the branch outputs. Alone (a connection injected into another
    model), only H of each width connection is kept (torch.utils.checkpoint). Less training memory for about one
    more forward of the stream work, the same values (bit for bit, tested). Not part of the variant's name: it
    changes how, not what, is computed."""

    fused: bool = False
    """CPU, float32/64: DHC's whole width connection (norm, projection, tanh, mix), mHC's (RMS norm, projection,
    sigmoids, Sinkhorn, mix), SHC's stream mix and the depth connection's backward each in one C++ pass per token
    (lit_hc/csrc/hc_fused.cpp) instead of PyTorch ops, in eager mode; under torch.compile the DHC and mHC width
    connections are the same passes as library ops inside the graph (lit_hc::dhc_width, lit_hc::mhc_width), the
    rest is inductor's. Where the kernel cannot be built or does not apply (a GPU, autocast, another norm), the
    PyTorch form runs. The same function with its sums in another order: equal to float rounding (tested), not bit
    for bit, so off by default, which keeps the committed results reproducible bit for bit. Like `recompute`, not
    part of the variant's name."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"HCConfig.kind={self.kind!r} is not one of {KINDS}")
        if not isinstance(self.expansion_rate, int) or self.expansion_rate < 1:
            raise ValueError(f"HCConfig.expansion_rate={self.expansion_rate!r} must be an integer >= 1")
        if self.kind == "residual" and self.expansion_rate != 1:
            raise ValueError(
                f"HCConfig.expansion_rate={self.expansion_rate} must be 1 for kind='residual' "
                "(use kind='hc' or 'mhc' for several streams)"
            )
        scale = self.output_init_scale
        if isinstance(scale, bool) or (scale not in OUTPUT_INIT_SCALES
                                       and not (isinstance(scale, (int, float)) and scale > 0)):
            raise ValueError(f"HCConfig.output_init_scale={scale!r} is not one of {OUTPUT_INIT_SCALES} "
                             "or a positive multiplier")
        if not isinstance(self.sinkhorn_iters, int) or self.sinkhorn_iters < 1:
            raise ValueError(f"HCConfig.sinkhorn_iters={self.sinkhorn_iters!r} must be an integer >= 1")

    @property
    def name(self) -> str:
        """Short run name in the paper's notation: residual, shc4, dhc4, dhc4-notanh, mhc4."""
        init = self.output_init_scale
        default = ("auto", "none") if self.kind == "residual" else ("auto", "divide")
        init_suffix = f"-init-{init}" if init not in default else ""
        n = self.expansion_rate
        if self.kind == "residual":
            return "residual" + init_suffix
        if self.kind == "mhc":
            return f"mhc{n}" + init_suffix
        base = f"dhc{n}" if self.dynamic else f"shc{n}"
        suffix = "-notanh" if self.dynamic and not self.use_tanh else ""
        suffix += ("-frozenwidth" if self.freeze_width else "") + ("-frozenbeta" if self.freeze_beta else "")
        return base + suffix + init_suffix

    @classmethod
    def from_name(cls, name: str) -> "HCConfig":
        """The inverse of `name`: 'residual', 'shc4', 'dhc8', 'dhc4-notanh', 'dhc2-frozenbeta', 'mhc4',
        'residual-init-0.5', 'dhc4-init-none' (the names of configs/hc/*.yaml)."""
        match = re.fullmatch(r"(?:(residual)|([sdm])hc(\d+)(-notanh)?(-frozenwidth)?(-frozenbeta)?)(?:-init-(.+))?", name)
        if not match:
            raise ValueError(f"{name!r} is not a variant name: residual, shc<n>, dhc<n>[-notanh][-frozenwidth]"
                             "[-frozenbeta] or mhc<n>, each optionally -init-<none|divide|multiply|number>")
        residual, letter, n, notanh, frozen_width, frozen_beta, init = match.groups()
        scale = "auto" if init is None else init if init in OUTPUT_INIT_SCALES else float(init)
        if residual:
            return cls(output_init_scale=scale)
        if letter == "m":
            if notanh or frozen_width or frozen_beta:
                raise ValueError(f"{name!r}: -notanh and -frozen* are HC ablations, not mHC ones")
            return cls("mhc", int(n), output_init_scale=scale)
        if letter == "s" and notanh:
            raise ValueError(f"{name!r}: -notanh is a dynamic-HC ablation (static HC has no tanh)")
        return cls("hc", int(n), dynamic=letter == "d", use_tanh=not notanh, freeze_width=bool(frozen_width),
                   freeze_beta=bool(frozen_beta), output_init_scale=scale)

    def output_init_factor(self) -> float:
        """Multiplier on the init std of sub-layer output projections."""
        mode = self.output_init_scale
        if not isinstance(mode, str):
            return float(mode)
        if mode == "auto":
            mode = "none" if self.kind == "residual" else "divide"
        root_n = math.sqrt(self.expansion_rate)
        return {"none": 1.0, "divide": 1.0 / root_n, "multiply": root_n}[mode]

    def build(self, dim: int, layer_idx: int, norm_layer: NormLayer = nn.LayerNorm) -> "StreamConnection":
        """The connection module for sub-layer `layer_idx` (attention of block b is 2b, its MLP 2b+1)."""
        if self.kind == "residual":
            return Residual()
        if self.kind == "hc":
            module = HyperConnection(
                dim, self.expansion_rate, layer_idx, dynamic=self.dynamic, use_tanh=self.use_tanh,
                freeze_width=self.freeze_width, freeze_beta=self.freeze_beta, norm_layer=norm_layer,
            )
        else:
            module = ManifoldHyperConnection(dim, self.expansion_rate, layer_idx, sinkhorn_iters=self.sinkhorn_iters)
        module.recompute, module.fused = self.recompute, self.fused
        return module


def _backward_under_forward_autocast(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """Run the Function's backward under the autocast state its forward ran under (bf16-mixed training), so its
    matmuls see the operand dtypes autocast gave the forward's. What torch.amp.custom_fwd/custom_bwd do, except
    that those fix one device type when decorating, and these Functions serve CPU and GPU."""
    forward, backward = function.forward, function.backward

    def forward_recording_autocast(ctx, *args):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        return forward(ctx, *args)

    def backward_under_autocast(ctx, *grads):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return backward(ctx, *grads)

    function.forward, function.backward = staticmethod(forward_recording_autocast), staticmethod(backward_under_autocast)
    return function


@_backward_under_forward_autocast
class _StreamMix(torch.autograd.Function):
    """mix = alpha^T H per token, returned as (branch input x, residual R); see stream_mix."""

    @staticmethod
    def mix(H: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mix = torch.matmul(_per_token(alpha, H).transpose(-1, -2), H)  # (..., n+1, d)
        # x gets its own storage: the branch saves its input for backward, and a view would keep all n+1 rows alive.
        # (copy_ into a new tensor: .contiguous() of this slice takes a path ~15x slower on CPU.)
        return mix.new_empty(mix.shape[:-2] + mix.shape[-1:]).copy_(mix[..., 0, :]), mix[..., 1:, :]

    @staticmethod
    def mix_backward(H, alpha, grad_x, grad_R, needs=(True, True)) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Gradients of H and alpha (each only if `needs` says so), summed to their shapes."""
        # One write of the (..., n+1, d) gradient; slicing the forward output instead would make autograd
        # zero-fill two full-size buffers and add them.
        grad_mix = H.new_empty(*torch.broadcast_shapes(H.shape[:-2], alpha.shape[:-2]), alpha.shape[-1], H.shape[-1])
        grad_mix[..., 0, :] = 0 if grad_x is None else grad_x
        grad_mix[..., 1:, :] = 0 if grad_R is None else grad_R
        grad_H = grad_alpha = None
        if needs[0]:
            grad_H = torch.matmul(_per_token(alpha, grad_mix), grad_mix).sum_to_size(H.shape)
        if needs[1]:
            grad_alpha = torch.matmul(H, grad_mix.transpose(-1, -2)).sum_to_size(alpha.shape)
        return grad_H, grad_alpha

    @staticmethod
    def forward(ctx, H: torch.Tensor, alpha: torch.Tensor, kernel=None):
        ctx.kernel = kernel if kernel is not None and (alpha.dim() == 2 or alpha.shape[:-2] == H.shape[:-2]) else None
        if ctx.kernel is None:
            ctx.save_for_backward(H, alpha)
            return _StreamMix.mix(H, alpha)
        # one C++ pass per token (hc_fused.cpp, mix_forward): H read once, x and R written once
        n, d = H.shape[-2:]
        H3 = H.reshape(-1, n, d).contiguous()
        alpha3 = (alpha if alpha.dim() == 2 else alpha.reshape(-1, n, n + 1)).contiguous()
        ctx.save_for_backward(H3, alpha3)
        ctx.shapes = H.shape, alpha.shape
        x, R = kernel.mix_forward(H3, alpha3)
        return x.view(*H.shape[:-2], d), R.view(H.shape)

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor | None, grad_R: torch.Tensor | None):
        H, alpha = ctx.saved_tensors
        if ctx.kernel is None:
            return (*_StreamMix.mix_backward(H, alpha, grad_x, grad_R, ctx.needs_input_grad), None)
        (H_shape, alpha_shape), (n, d) = ctx.shapes, H.shape[-2:]
        flat = lambda g, *shape: H.new_empty(0) if g is None else g.reshape(*shape).contiguous()  # noqa: E731
        grad_H, grad_alpha = ctx.kernel.mix_backward(H, alpha, flat(grad_x, -1, d), flat(grad_R, -1, n, d))
        grad_alpha = grad_alpha.sum(0) if len(alpha_shape) == 2 else grad_alpha.view(alpha_shape)
        return grad_H.view(H_shape), grad_alpha, None


@_backward_under_forward_autocast
class _StreamAdd(torch.autograd.Function):
    """H'[j] = R[j] + beta[j] * y in one pass (addcmul); see stream_add."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, R: torch.Tensor, beta: torch.Tensor, kernel=None):
        ctx.save_for_backward(y, beta)
        ctx.R_shape, ctx.kernel = R.shape, kernel
        return torch.addcmul(R, beta.unsqueeze(-1), y.unsqueeze(-2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, beta = ctx.saved_tensors
        grad_R = grad.sum_to_size(ctx.R_shape) if ctx.needs_input_grad[1] else None
        if ctx.kernel is not None and grad.shape == ctx.R_shape:  # one pass: hc_fused.cpp, depth_backward
            n, d = grad.shape[-2:]
            per_token = beta.dim() > 1
            grad_y, grad_beta = ctx.kernel.depth_backward(
                grad.reshape(-1, n, d).contiguous(), y.expand(*grad.shape[:-2], d).reshape(-1, d).contiguous(),
                (beta.expand(*grad.shape[:-1]).reshape(-1, n) if per_token else beta).contiguous())
            return (grad_y.view(grad.shape[:-2] + (d,)).sum_to_size(y.shape), grad_R,
                    grad_beta.view(grad.shape[:-1]).sum_to_size(beta.shape), None)
        grad_y = grad_beta = None
        if ctx.needs_input_grad[0]:  # sum_j beta_j grad_j: (..., 1, n) @ (..., n, d)
            grad_y = torch.matmul(_per_token(beta.unsqueeze(-2), grad), grad).squeeze(-2).sum_to_size(y.shape)
        if ctx.needs_input_grad[2]:  # <grad_j, y>: (..., n, d) @ (..., d, 1)
            grad_beta = torch.matmul(grad, y.unsqueeze(-1)).squeeze(-1).sum_to_size(beta.shape)
        return grad_y, grad_R, grad_beta, None


def _thin_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) @ b (k, j) for a result only a few columns wide (DHC's n + 2 coefficients, mHC's 2n + n^2).

    On CPU computed as (b^T a^T)^T, which autograd differentiates into b's gradient as (G^T a)^T instead of a^T G:
    MKL's sgemm is slow at a result only j columns wide. Measured on this project's 2-core machine, nothing else
    running, 2 threads, j = 6 (n = 4): the weight gradient 0.47 -> 0.10 ms (m = 8192, k = 64), 2.28 -> 0.59 ms
    (k = 256), 4.13 -> 0.74 ms (m = 2048, k = 1024); the forward 0.35 -> 0.29, 1.32 -> 1.24, 2.06 -> 1.82 ms. At
    j = 24 (mHC x4) the forward is the same and the weight gradient a little faster. The values differ from a @ b
    only in the order of the sums."""
    if a.device.type != "cpu" or torch.compiler.is_compiling():  # cuBLAS and inductor choose their own layouts
        return a @ b
    return (b.T @ a.T).T.contiguous()


@_backward_under_forward_autocast
class _DynamicWidth(torch.autograd.Function):
    """DHC's whole width connection in one pass over H (Zhu et al. 2025, dynamic hyper-connections):
    z = LayerNorm(H) @ W, p = tanh(z), alpha = A + s_a p[:n+1], beta = B + s_b p[n+1], [x; R] = alpha^T H.

    LayerNorm(H) @ W is computed as rstd * (H @ (g*W) - mean * colsum(g*W)) + b @ W: the (..., n, d) normalised copy
    of H is never written nor kept for backward (the reordering the mHC paper makes for its RMSNorm, applied to
    LayerNorm's mean and gain). Backward writes the gradient of H once: the mix's part, then the norm's part
    (LayerNorm's own backward kernel on the projection's gradient) added into it. Saves H, the per-row statistics
    and the (..., n, n+2) coefficients, no H-sized intermediate; with `lean` (under a StreamRecompute, which keeps
    no H either) only H, and the backward computes the statistics and coefficients again from it.
    """

    @staticmethod
    def coefficients(H, weight, bias, W, static_alpha, static_beta, alpha_scale, beta_scale, use_tanh: bool,
                     eps: float):
        """mean, rstd (..., n, 1), p = act(z) (..., n, n+2), alpha (..., n, n+1), beta (..., n), Wg (d, n+2)."""
        n = H.shape[-2]
        # var = E[h^2] - mean^2 from two plain reductions: torch.var_mean over the last dim takes a path ~20x slower on
        # CPU. The cancellation costs precision only where a row's mean is ~100x its spread; float32/64 only (the
        # caller sends lower precisions to the plain ops).
        mean = H.mean(-1, keepdim=True)  # (..., n, 1)
        mean_square = torch.linalg.vector_norm(H, dim=-1, keepdim=True).square() / H.shape[-1]
        rstd = torch.rsqrt((mean_square - mean * mean).clamp_min(0) + eps)
        Wg = W if weight is None else weight.unsqueeze(1) * W  # (d, n+2)
        HWg = _thin_matmul(H.reshape(-1, H.shape[-1]), Wg).view(*H.shape[:-1], Wg.shape[-1])
        z = (HWg - mean * Wg.sum(0)) * rstd  # (..., n, n+2)
        if bias is not None:
            z = z + bias @ W
        p = torch.tanh(z) if use_tanh else z
        alpha = torch.addcmul(static_alpha, alpha_scale, p[..., : n + 1])
        beta = torch.addcmul(static_beta, beta_scale, p[..., n + 1])
        return mean, rstd, p, alpha, beta, Wg

    @staticmethod
    def forward(ctx, H, weight, bias, W, static_alpha, static_beta, alpha_scale, beta_scale, use_tanh: bool, eps: float,
                lean: bool = False):
        args = (weight, bias, W, static_alpha, static_beta, alpha_scale, beta_scale, use_tanh, eps)
        mean, rstd, p, alpha, beta, Wg = _DynamicWidth.coefficients(H, *args)
        if lean:
            ctx.save_for_backward(H, weight, bias, W, static_alpha, static_beta, alpha_scale, beta_scale)
            ctx.eps = eps
        else:
            ctx.save_for_backward(H, mean, rstd, p, alpha, W, Wg, weight, bias, alpha_scale, beta_scale)
        ctx.use_tanh, ctx.lean = use_tanh, lean
        return *_StreamMix.mix(H, alpha), beta

    @staticmethod
    def backward(ctx, grad_x, grad_R, grad_beta):
        if ctx.lean:
            H, weight, bias, W, static_alpha, static_beta, alpha_scale, beta_scale = ctx.saved_tensors
            mean, rstd, p, alpha, _, Wg = _DynamicWidth.coefficients(
                H, weight, bias, W, static_alpha, static_beta, alpha_scale, beta_scale, ctx.use_tanh, ctx.eps)
        else:
            H, mean, rstd, p, alpha, W, Wg, weight, bias, alpha_scale, beta_scale = ctx.saved_tensors
        n, d = H.shape[-2:]
        grad_H, grad_alpha = _StreamMix.mix_backward(H, alpha, grad_x, grad_R)  # the mix's part; (..., n, n+1)
        if grad_beta is None:
            grad_beta = torch.zeros_like(p[..., n + 1])
        grad_p = torch.cat([grad_alpha * alpha_scale, (grad_beta * beta_scale).unsqueeze(-1)], -1)
        grad_z = grad_p * (1 - p * p) if ctx.use_tanh else grad_p  # (..., n, n+2)
        # z = rstd * (H @ Wg) - rstd * mean * colsum(Wg) + bias @ W
        scaled = (grad_z * rstd).reshape(-1, n + 2)
        grad_Wg = _thin_matmul(H.reshape(-1, d).T, scaled) - (mean.reshape(-1, 1) * scaled).sum(0)  # (d, n+2)
        grad_sum = grad_z.reshape(-1, n + 2).sum(0)  # (n+2,)
        grad_W = grad_Wg if weight is None else grad_Wg * weight.unsqueeze(1)
        grad_weight = grad_bias = None
        if bias is not None:
            grad_W = grad_W + torch.outer(bias, grad_sum)
            grad_bias = W @ grad_sum
        if weight is not None:
            grad_weight = (grad_Wg * W).sum(1)
        # The norm's part: LayerNorm's backward (without gain: it is folded into Wg) of the gradient z sends to the
        # normalised rows, added into the mix's part.
        norm_grad = torch.ops.aten.native_layer_norm_backward(  # not autocast: its operands share H's dtype
            torch.matmul(grad_z, Wg.T).to(H.dtype), H, [d], mean, rstd, None, None, [True, False, False])[0]
        grad_H.add_(norm_grad)
        grad_static_alpha = grad_alpha.reshape(-1, n, n + 1).sum(0)
        grad_static_beta = grad_beta.reshape(-1, n).sum(0)
        grad_alpha_scale = (grad_alpha * p[..., : n + 1]).sum().reshape(1)
        grad_beta_scale = (grad_beta * p[..., n + 1]).sum().reshape(1)
        return (grad_H, grad_weight, grad_bias, grad_W, grad_static_alpha, grad_static_beta, grad_alpha_scale,
                grad_beta_scale, None, None, None)


class _FusedDynamicWidth(torch.autograd.Function):
    """_DynamicWidth's function in one C++ pass per token forward and one backward (lit_hc/csrc/hc_fused.cpp):
    H is read once and x, R written once; backward recomputes the norm statistics and coefficients from H, so only
    H (and the parameters) are kept. Float32/64 on the CPU, no autocast (HyperConnection.width_connection checks)."""

    @staticmethod
    def folded(weight, bias, W):
        """The norm's gain folded into the projection, (n+2, d), and its bias projected, (n+2,)."""
        Wg = W if weight is None else weight.unsqueeze(1) * W
        bW = W.new_zeros(W.shape[1]) if bias is None else bias @ W
        return Wg.T.contiguous(), bW.contiguous()

    @staticmethod
    def forward(ctx, kernel, H, weight, bias, W, static_alpha, static_beta, alpha_scale, beta_scale, use_tanh: bool,
                eps: float):
        n, d = H.shape[-2:]
        H3 = H.reshape(-1, n, d).contiguous()
        scales = torch.cat([alpha_scale, beta_scale])
        x, R, beta = kernel.width_forward(H3, *_FusedDynamicWidth.folded(weight, bias, W), static_alpha.contiguous(),
                                          static_beta.contiguous(), scales, use_tanh, eps)
        # H as given, not its contiguous copy: the first layer's H is the embedding expanded n times (a stride-0
        # view), whose copy would keep n times its bytes until backward
        ctx.save_for_backward(H, weight, bias, W, static_alpha, static_beta, scales)
        ctx.kernel, ctx.use_tanh, ctx.eps, ctx.shape = kernel, use_tanh, eps, H.shape
        return x.view(*H.shape[:-2], d), R.view(H.shape), beta.view(H.shape[:-1])

    @staticmethod
    def backward(ctx, grad_x, grad_R, grad_beta):
        H, weight, bias, W, static_alpha, static_beta, scales = ctx.saved_tensors
        n, d = H.shape[-2:]
        H3 = H.reshape(-1, n, d).contiguous()
        flat = lambda g, *shape: H3.new_empty(0) if g is None else g.reshape(*shape).contiguous()  # noqa: E731
        grad_H, grad_WgT, grad_bW, grad_A, grad_B, grad_scales = ctx.kernel.width_backward(
            H3, *_FusedDynamicWidth.folded(weight, bias, W), static_alpha.contiguous(), static_beta.contiguous(),
            scales, ctx.use_tanh, ctx.eps, flat(grad_x, -1, d), flat(grad_R, -1, n, d), flat(grad_beta, -1, n))
        grad_Wg = grad_WgT.T  # (d, n+2); Wg = weight * W, bW = bias @ W
        grad_W = grad_Wg if weight is None else grad_Wg * weight.unsqueeze(1)
        grad_weight = None if weight is None else (grad_Wg * W).sum(1)
        grad_bias = None
        if bias is not None:
            grad_W = grad_W + torch.outer(bias, grad_bW)
            grad_bias = W @ grad_bW
        return (None, grad_H.view(ctx.shape), grad_weight, grad_bias, grad_W, grad_A, grad_B, grad_scales[:1],
                grad_scales[1:], None, None)


class _FusedManifoldWidth(torch.autograd.Function):
    """mHC's whole width connection (ManifoldHyperConnection.coefficients, Sinkhorn and the mix) in one C++ call
    forward and one backward (lit_hc/csrc/hc_fused.cpp, mhc_width_*): the projection one BLAS product per chunk of
    64 tokens, the rest one pass per token (the sigmoids and Sinkhorn iterations for a block of 8 tokens at once);
    backward recomputes them from H and runs the iterations' exact reverse (the unrolled gradient, as _Sinkhorn's).
    Only H (and the parameters) are kept. Float32/64 on the CPU, no autocast
    (ManifoldHyperConnection.width_connection checks)."""

    @staticmethod
    def forward(ctx, kernel, H, phi, a_pre, a_post, a_res, b_pre, b_post, b_res, iters: int):
        n, d = H.shape[-2:]
        H3 = H.reshape(-1, n, d).contiguous()
        params = (phi.contiguous(), torch.cat([a_pre, a_post, a_res]), b_pre.contiguous(), b_post.contiguous(),
                  b_res.contiguous())
        x, R, post = kernel.mhc_width_forward(H3, *params, iters)
        ctx.save_for_backward(H, *params)  # H as given, not its copy (see _FusedDynamicWidth)
        ctx.kernel, ctx.iters, ctx.shape = kernel, iters, H.shape
        return x.view(*H.shape[:-2], d), R.view(H.shape), post.view(H.shape[:-1])

    @staticmethod
    def backward(ctx, grad_x, grad_R, grad_post):
        H, *params = ctx.saved_tensors
        n, d = H.shape[-2:]
        H3 = H.reshape(-1, n, d).contiguous()
        flat = lambda g, *shape: H3.new_empty(0) if g is None else g.reshape(*shape).contiguous()  # noqa: E731
        grad_H, grad_phi, grad_scalars, grad_b_pre, grad_b_post, grad_b_res = ctx.kernel.mhc_width_backward(
            H3, *params, ctx.iters, flat(grad_x, -1, d), flat(grad_R, -1, n, d), flat(grad_post, -1, n))
        return (None, grad_H.view(ctx.shape), grad_phi, grad_scalars[0:1], grad_scalars[1:2], grad_scalars[2:3],
                grad_b_pre, grad_b_post, grad_b_res, None)


# The two width connections' C++ passes as library ops, for torch.compile: a compiled model with `fused` calls them
# inside its graph (dynamo cannot trace into a C++ extension and would break the graph at a Function that calls one;
# a library op is opaque to dynamo and inductor alike). The norm gain's folding and the scalars' concatenation stay
# outside them as ordinary ops, whose gradients autograd derives. Eager keeps the Functions above (their folding
# gradients are written by hand, and the LM grid's fused runs were made with them); one call of either, forward and
# backward, 1 thread, d = 64, 2,048 tokens, took the same time within noise (4.1-5.4 ms, two alternations of 50 calls).
Tensors3 = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Tensors6 = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("lit_hc::dhc_width", mutates_args=())
def _dhc_width_op(H: torch.Tensor, WgT: torch.Tensor, bW: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  scales: torch.Tensor, use_tanh: bool, eps: float) -> Tensors3:
    """_FusedDynamicWidth's forward on H (T, n, d): x (T, d), R (T, n, d), beta (T, n)."""
    return tuple(cpu_kernels.hc_fused().width_forward(H, WgT, bW, A, B, scales, use_tanh, eps))


@torch.library.custom_op("lit_hc::dhc_width_backward", mutates_args=())
def _dhc_width_backward_op(H: torch.Tensor, WgT: torch.Tensor, bW: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           scales: torch.Tensor, use_tanh: bool, eps: float, grad_x: torch.Tensor,
                           grad_R: torch.Tensor, grad_beta: torch.Tensor) -> Tensors6:
    grads = cpu_kernels.hc_fused().width_backward(H, WgT, bW, A, B, scales, use_tanh, eps, grad_x, grad_R, grad_beta)
    return tuple(g.clone() if k else g for k, g in enumerate(grads))  # the kernel's last five share one buffer


@torch.library.custom_op("lit_hc::mhc_width", mutates_args=())
def _mhc_width_op(H: torch.Tensor, phi: torch.Tensor, scalars: torch.Tensor, b_pre: torch.Tensor,
                  b_post: torch.Tensor, b_res: torch.Tensor, iters: int) -> Tensors3:
    """_FusedManifoldWidth's forward on H (T, n, d): x (T, d), R (T, n, d), post (T, n)."""
    return tuple(cpu_kernels.hc_fused().mhc_width_forward(H, phi, scalars, b_pre, b_post, b_res, iters))


@torch.library.custom_op("lit_hc::mhc_width_backward", mutates_args=())
def _mhc_width_backward_op(H: torch.Tensor, phi: torch.Tensor, scalars: torch.Tensor, b_pre: torch.Tensor,
                           b_post: torch.Tensor, b_res: torch.Tensor, iters: int, grad_x: torch.Tensor,
                           grad_R: torch.Tensor, grad_post: torch.Tensor) -> Tensors6:
    grads = cpu_kernels.hc_fused().mhc_width_backward(H, phi, scalars, b_pre, b_post, b_res, iters, grad_x, grad_R,
                                                      grad_post)
    return tuple(g.clone() if k else g for k, g in enumerate(grads))


@_dhc_width_op.register_fake
@_mhc_width_op.register_fake
def _(H: torch.Tensor, *args) -> Tensors3:
    T, n, d = H.shape
    return H.new_empty(T, d), H.new_empty(T, n, d), H.new_empty(T, n)


@_dhc_width_backward_op.register_fake
@_mhc_width_backward_op.register_fake
def _(*args) -> Tensors6:  # the gradients of the six tensor inputs
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in args[:6])


def _width_op_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:6])
    ctx.options = inputs[6:]  # (use_tanh, eps) or (iters,)


def _width_op_grads(ctx, grads) -> tuple:
    """The output gradients as the kernels take them: contiguous, an empty tensor for an output with none."""
    H = ctx.saved_tensors[0]
    return tuple(H.new_empty(0) if g is None else g.contiguous() for g in grads)


def _dhc_width_op_backward(ctx, *grads):  # grads of x, R, beta; none for use_tanh and eps
    return *_dhc_width_backward_op(*ctx.saved_tensors, *ctx.options, *_width_op_grads(ctx, grads)), None, None


def _mhc_width_op_backward(ctx, *grads):  # grads of x, R, post; none for iters
    return *_mhc_width_backward_op(*ctx.saved_tensors, *ctx.options, *_width_op_grads(ctx, grads)), None


_dhc_width_op.register_autograd(_dhc_width_op_backward, setup_context=_width_op_setup)
_mhc_width_op.register_autograd(_mhc_width_op_backward, setup_context=_width_op_setup)


@torch.compiler.assume_constant_result
def _hc_fused_built() -> bool:
    """Whether the C++ kernel built here: a constant to dynamo, which cannot trace the build."""
    return cpu_kernels.hc_fused() is not None


def _fused_applies(module: "StreamConnection", *tensors: torch.Tensor) -> bool:
    """`module.fused` asks for the kernel and it applies: CPU, float32/64, no autocast."""
    return (module.fused and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
            and not torch.is_autocast_enabled("cpu"))


def _fused_kernel(module: "StreamConnection", *tensors: torch.Tensor):
    """The C++ kernel module where `module.fused` asks for it and it applies (CPU, float32/64, eager, no autocast),
    else None."""
    if torch.compiler.is_compiling() or not _fused_applies(module, *tensors):
        return None
    return cpu_kernels.hc_fused()


def _fused_op_applies(module: "StreamConnection", *tensors: torch.Tensor) -> bool:
    """Under torch.compile: whether the width connection should be the library op above (`fused`, and the kernel
    applies and built)."""
    return torch.compiler.is_compiling() and _fused_applies(module, *tensors) and _hc_fused_built()


def _per_token(coefficients: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Static (n, k) coefficients as a stride-0 batch matching `like`: matmul then takes its fast batched path
    instead of the 2-D @ batched path, which copies the batched operand into a transposed layout first."""
    if coefficients.dim() == 2 and like.dim() > 2:
        return coefficients.expand(*like.shape[:-2], *coefficients.shape)
    return coefficients




def stream_mix(H: torch.Tensor, alpha: torch.Tensor, kernel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Width connection: x = sum_i alpha[i, 0] H[i], R[j] = sum_i alpha[i, j+1] H[i].

    H (..., n, d); alpha (n, n+1) or per token (..., n, n+1). Returns x (..., d) and R (..., n, d), both views of
    one (..., n+1, d) product. The hand-written backward is one batched matmul per input. `kernel`: the C++
    module (_fused_kernel) that does forward and backward in one pass per token instead.
    """
    if torch.compiler.is_compiling():  # as a broadcast-and-reduce, which inductor fuses into one loop
        mix = (alpha.unsqueeze(-1) * H.unsqueeze(-2)).sum(-3)  # (..., n, n+1, d) summed over n
        return mix[..., 0, :].contiguous(), mix[..., 1:, :]
    return _StreamMix.apply(H, alpha, kernel)


def stream_add(y: torch.Tensor, R: torch.Tensor, beta: torch.Tensor, kernel=None) -> torch.Tensor:
    """Depth connection: H'[j] = R[j] + beta[j] * y. y (..., d), R (..., n, d), beta (n,) or (..., n). `kernel`:
    the C++ module (_fused_kernel) whose depth_backward computes the backward in one pass."""
    if torch.compiler.is_compiling():
        return R + beta.unsqueeze(-1) * y.unsqueeze(-2)
    return _StreamAdd.apply(y, R, beta, kernel)


def expand_streams(x: torch.Tensor, n: int) -> torch.Tensor:
    """Copy the embedding output into n streams: (..., d) -> (..., n, d). A view, no copy."""
    return x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1])


def reduce_streams(H: torch.Tensor) -> torch.Tensor:
    """Sum the streams after the last block: (..., n, d) -> (..., d). The final norm follows."""
    return H.sum(dim=-2)


_saved_observer: Callable[[torch.Tensor], object] | None = None


@contextlib.contextmanager
def observe_saved(pack: Callable[[torch.Tensor], object]):
    """Call `pack` on every tensor a StreamRecompute keeps for backward. Saved-tensor hooks do not nest (the
    innermost pair alone sees the tensors), so a measurement of saved memory (lit_hc.analysis) looks through a
    StreamRecompute this way."""
    global _saved_observer
    outer, _saved_observer = _saved_observer, pack
    try:
        yield
    finally:
        _saved_observer = outer


class _Segment:
    """A run of sub-layers whose stream states are not kept for backward: only its first input H_0 and, per
    sub-layer, the connection and the branch output y (which the depth connection keeps anyway)."""

    def __init__(self, start: torch.Tensor):
        self.start = start
        self.steps: list[tuple[StreamConnection, torch.Tensor]] = []
        self.states: dict[int, torch.Tensor] = {}
        device = start.device.type  # recompute under the forward's autocast, so the values are the forward's
        self.autocast = (device, torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None

    def state(self, k: int) -> torch.Tensor:
        """H_k, recomputed from H_0 with the connections' forward (no graph); all states up to k are computed once
        and then held until the segment's backward is over (backward asks for the last one first)."""
        if k not in self.states:
            autocast = torch.autocast(*self.autocast) if self.autocast else contextlib.nullcontext()
            with torch.no_grad(), autocast:
                start = max((j for j in self.states if j < k), default=0)  # the latest state already rebuilt
                H = self.states.get(start, self.start)
                for j in range(start, k):
                    connection, y = self.steps[j]
                    _, R, beta = connection.width_connection(H)
                    H = self.states[j + 1] = connection.depth_connection(y, R, beta)
        return self.states[k]


class StreamRecompute:
    """Keep the stream state H for backward only at the start of every `segment` sub-layers and recompute the
    states in between from it in the backward pass (the mHC paper's recomputation, Sec. 4.3: it stores the input
    of every L_r consecutive layers and picks L_r ~ sqrt(nL / (n + 2))).

    Every saved tensor passes through a saved-tensor hook: a tensor whose storage is a stream state inside a
    segment is replaced by a token (segment, index, view), and backward rebuilds it by rerunning the width and depth
    connections from the segment's start with the branch outputs y it kept. The branches themselves are not
    recomputed. Exact: the recomputation repeats the forward's operations on the same values. Eager only (the
    models do not enter it under torch.compile), and `segment` must keep a segment inside what is gathered
    together under FSDP (the models align segments to blocks, FSDP's unit here).
    """

    active: "StreamRecompute | None" = None

    def __init__(self, segment: int):
        if segment < 1:
            raise ValueError(f"StreamRecompute(segment={segment}): a segment holds at least one sub-layer")
        self.segment = segment
        self.current: _Segment | None = None
        self.states: dict[int, tuple[object, _Segment, int]] = {}  # storage address -> (weak tensor, segment, k)

    def __enter__(self) -> "StreamRecompute":
        self.outer, StreamRecompute.active = StreamRecompute.active, self
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)
        StreamRecompute.active = self.outer
        self.states.clear()  # the tokens in the graph hold what backward needs

    def record(self, connection: "StreamConnection", H: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        """Called by each sub-layer after its forward: H its input, y its branch output, out = H'."""
        if self.current is None or len(self.current.steps) == self.segment:
            self.current = _Segment(H)
        self.current.steps.append((connection, y))
        if len(self.current.steps) < self.segment:  # else `out` starts the next segment and is kept as it is
            self.states[out.untyped_storage().data_ptr()] = (weakref.ref(out), self.current, len(self.current.steps))

    def _pack(self, t: torch.Tensor):
        entry = self.states.get(t.untyped_storage().data_ptr()) if type(t) is torch.Tensor else None
        if entry is None or entry[0]() is None:  # not a stream state (or a freed one whose address was reused)
            if _saved_observer is not None:
                _saved_observer(t)
            return t
        return entry[1], entry[2], t.shape, t.stride(), t.storage_offset()

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        segment, k, shape, stride, offset = packed
        return segment.state(k).as_strided(shape, stride, offset)


def recompute_segment(hc: "HCConfig", n_blocks: int) -> int:
    """Blocks per recomputation segment: the mHC paper's L_r ~ sqrt(nL / (n + 2)) over L = 2 * n_blocks sub-layers,
    in whole blocks (at least one)."""
    n = hc.expansion_rate
    return max(1, round(math.sqrt(n * 2 * n_blocks / (n + 2)) / 2))


def stream_recompute(hc: "HCConfig", blocks: nn.ModuleList):
    """The context a model's block loop runs in: StreamRecompute when `hc.recompute` asks for it and the forward
    builds a graph in eager mode, nothing otherwise. Segments are whole blocks; blocks wrapped by FSDP get one block
    per segment (a segment's parameters must be gathered while its backward runs)."""
    from lit_hc.layers import Block  # lit_hc.layers imports this module

    if not (hc.recompute and hc.kind != "residual" and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()):
        return contextlib.nullcontext()
    wrapped = any(not isinstance(block, Block) for block in blocks)
    return StreamRecompute(2 * (1 if wrapped else recompute_segment(hc, len(blocks))))


class StreamConnection(nn.Module):
    """Common interface: forward(H, branch) = depth_connection(branch(x), R, beta) with x, R, beta = width(H)."""

    expansion_rate: int = 1
    decay_params: tuple[str, ...] = ()  # parameter names that get weight decay (see lit_hc.optim)
    recompute: bool = False  # HCConfig.recompute
    fused: bool = False  # HCConfig.fused

    def width_connection(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def width(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """width_connection(H). With `recompute`: inside a model's StreamRecompute, plain (the recomputation there
        covers it); alone (e.g. injected into another model), only H is kept for backward (torch.utils.checkpoint)."""
        if self.recompute and torch.is_grad_enabled() and StreamRecompute.active is None:
            return checkpoint(self.width_connection, H, use_reentrant=False)
        return self.width_connection(H)

    def lean(self) -> bool:
        """Inside a model's StreamRecompute with `recompute` and a graph: the width connection should keep nothing
        derived from H for backward (H itself is dropped by the StreamRecompute and rebuilt)."""
        return self.recompute and StreamRecompute.active is not None and torch.is_grad_enabled()

    def lean_coefficients(self, H: torch.Tensor) -> tuple:
        """The subclass's per-token `coefficients(H)`, but where `lean()` through torch.utils.checkpoint: backward
        recomputes them from H, so the intermediates of the norm, projection and activations (and mHC's Sinkhorn
        input) are not kept, only the coefficients the mix and the depth connection save. No randomness, so no RNG
        state."""
        if self.lean():
            return checkpoint(self.coefficients, H, use_reentrant=False, preserve_rng_state=False)
        return self.coefficients(H)

    def depth_connection(self, y: torch.Tensor, R: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        # H'[j] = beta[j] * y + R[j];  y (..., d), beta (..., n) or (n,), R (..., n, d)
        return stream_add(y, R, beta, _fused_kernel(self, y, R, beta))

    def forward(self, H: torch.Tensor, branch: Branch) -> torch.Tensor:
        x, R, beta = self.width(H)
        y = branch(x)
        out = self.depth_connection(y, R, beta)
        if StreamRecompute.active is not None:
            StreamRecompute.active.record(self, H, y, out)
        return out

    def connection_matrix(self, H: torch.Tensor) -> torch.Tensor:
        """The paper's (n+1)x(n+1) HC matrix per token, (..., n+1, n+1): [[0, B], [A_m, A_r]].

        Row 0 holds the depth weights B (how much of T(x) each stream receives); rows 1..n hold, per input
        stream i, its weight in the branch input (column 0) and in each output stream's residual (columns 1..n).
        """
        raise NotImplementedError


class Residual(StreamConnection):
    """Pre-Norm residual h' = h + T(h) on a single stream (n = 1): the baseline, no parameters."""

    def forward(self, H: torch.Tensor, branch: Branch) -> torch.Tensor:
        return H + branch(H.squeeze(-2)).unsqueeze(-2)

    def connection_matrix(self, H: torch.Tensor) -> torch.Tensor:
        return H.new_tensor([[0.0, 1.0], [1.0, 1.0]]).expand(*H.shape[:-2], 2, 2)


class HyperConnection(StreamConnection):
    """Static (SHC) or dynamic (DHC) hyper-connection around one sub-layer (Zhu et al. 2025, static and dynamic
    hyper-connections; initialised as in their Eq. 14).

    static_alpha (n, n+1) = [A_m | A_r], static_beta (n,) = B. DHC adds, per token and stream,
    alpha += s_alpha * act(norm(H) @ W_alpha) and beta += s_beta * act(norm(H) @ W_beta).
    """

    decay_params = ("dynamic_alpha_fn", "dynamic_beta_fn")

    def __init__(
        self,
        dim: int,
        expansion_rate: int,
        layer_idx: int,
        dynamic: bool = True,
        use_tanh: bool = True,
        freeze_width: bool = False,
        freeze_beta: bool = False,
        norm_layer: NormLayer = nn.LayerNorm,
    ):
        super().__init__()
        n = expansion_rate
        self.expansion_rate, self.layer_idx, self.dynamic = n, layer_idx, dynamic
        # Eq. 14: A_m = e_{k mod n}, A_r = I, B = 1, so every stream carries the Pre-Norm residual state.
        static_alpha = torch.cat([F.one_hot(torch.tensor(layer_idx % n), n).float().unsqueeze(1), torch.eye(n)], 1)
        self.static_alpha = nn.Parameter(static_alpha)  # (n, n+1)
        self.static_beta = nn.Parameter(torch.ones(n))  # (n,)
        if dynamic:
            self.norm = norm_layer(dim)
            self.act = nn.Tanh() if use_tanh else nn.Identity()
            # W = 0 at init, so DHC starts exactly as SHC; the scales 0.01 keep early updates small.
            self.dynamic_alpha_fn = nn.Parameter(torch.zeros(dim, n + 1))
            self.dynamic_beta_fn = nn.Parameter(torch.zeros(dim))
            # shape (1,), not (): FSDP cannot shard 0-dim parameters
            self.dynamic_alpha_scale = nn.Parameter(torch.full((1,), 0.01))
            self.dynamic_beta_scale = nn.Parameter(torch.full((1,), 0.01))
        width = [self.static_alpha] + ([self.dynamic_alpha_fn] if dynamic else [])
        depth = [self.static_beta] + ([self.dynamic_beta_fn] if dynamic else [])
        for p in (width if freeze_width else []) + (depth if freeze_beta else []):
            p.requires_grad_(False)

    def dynamic_weight(self) -> torch.Tensor:
        """[W_alpha | W_beta], (d, n+2): one projection gives both dynamic coefficients."""
        return torch.cat([self.dynamic_alpha_fn, self.dynamic_beta_fn.unsqueeze(1)], 1)

    def coefficients(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha (n, n+1) and beta (n,) for SHC; (..., n, n+1) and (..., n) per token for DHC."""
        if not self.dynamic:
            return self.static_alpha, self.static_beta
        n = self.expansion_rate
        # One projection for both: (..., n, d) @ (d, n+2) -> (..., n, n+2)
        proj = self.act(self.norm(H) @ self.dynamic_weight())
        alpha = self.static_alpha + self.dynamic_alpha_scale * proj[..., : n + 1]
        beta = self.static_beta + self.dynamic_beta_scale * proj[..., n + 1]
        return alpha, beta

    def width_connection(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if (self.dynamic and type(self.norm) is nn.LayerNorm and H.dtype in (torch.float32, torch.float64)
                and not torch.compiler.is_compiling()):
            # Eager DHC with LayerNorm: one Function (_DynamicWidth, or the C++ pass with `fused`); compiled, another
            # norm, or H in a 16-bit dtype: the plain ops below.
            if kernel := _fused_kernel(self, H):
                return _FusedDynamicWidth.apply(
                    kernel, H, self.norm.weight, self.norm.bias, self.dynamic_weight(), self.static_alpha,
                    self.static_beta, self.dynamic_alpha_scale, self.dynamic_beta_scale, isinstance(self.act, nn.Tanh),
                    self.norm.eps)
            return _DynamicWidth.apply(H, self.norm.weight, self.norm.bias, self.dynamic_weight(), self.static_alpha,
                                       self.static_beta, self.dynamic_alpha_scale, self.dynamic_beta_scale,
                                       isinstance(self.act, nn.Tanh), self.norm.eps, self.lean())
        if self.dynamic and type(self.norm) is nn.LayerNorm and _fused_op_applies(self, H):
            # Compiled with `fused`: the same C++ pass, as a library op in the graph.
            n, d = H.shape[-2:]
            x, R, beta = _dhc_width_op(
                H.reshape(-1, n, d).contiguous(), *_FusedDynamicWidth.folded(self.norm.weight, self.norm.bias,
                                                                             self.dynamic_weight()),
                self.static_alpha, self.static_beta, torch.cat([self.dynamic_alpha_scale, self.dynamic_beta_scale]),
                isinstance(self.act, nn.Tanh), self.norm.eps)
            return x.view(*H.shape[:-2], d), R.view(H.shape), beta.view(H.shape[:-1])
        alpha, beta = self.lean_coefficients(H) if self.dynamic else self.coefficients(H)
        x, R = stream_mix(H, alpha, _fused_kernel(self, H, alpha))  # (n+1, n) @ (..., n, d) -> (..., n+1, d) = [x; R]
        return x, R, beta

    def connection_matrix(self, H: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.coefficients(H)
        alpha = alpha.expand(*H.shape[:-2], *alpha.shape[-2:])
        beta = beta.expand(*H.shape[:-2], beta.shape[-1])
        top = torch.cat([beta.new_zeros(*beta.shape[:-1], 1), beta], -1).unsqueeze(-2)  # (..., 1, n+1)
        return torch.cat([top, alpha], -2)

    def extra_repr(self) -> str:
        return f"n={self.expansion_rate}, layer_idx={self.layer_idx}, dynamic={self.dynamic}"


def _sinkhorn_loop(M: torch.Tensor, iters: int, row: int, col: int, steps: list | None = None) -> torch.Tensor:
    """Alternately divide M by its row sums (over dim `col`) and column sums (over dim `row`), `iters` times each;
    with `steps`, keep (normalised M, divisor, dim) of every division for the backward."""
    for _ in range(iters):
        for dim in (col, row):
            divisor = M.sum(dim, keepdim=True)
            M = M / divisor
            if steps is not None:
                steps.append((M, divisor, dim))
    return M


def _sinkhorn_reference(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """The iterations as plain autograd ops on (..., n, n): what torch.compile fuses, and the reference the fast
    path is tested against."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return _sinkhorn_loop(torch.exp(x - x.amax(dim=(-1, -2), keepdim=True)), iters, row=-2, col=-1)


def _iterate_tokens_last(M0: torch.Tensor, iters: int) -> torch.Tensor:
    """The iterations on (n, n, tokens): the C++ kernel where it applies and built (lit_hc/cpu_kernels.py), else
    the loop; the two give the same bits up to n = 4 (tested)."""
    kernel = cpu_kernels.sinkhorn() if M0.device.type == "cpu" else None
    return kernel.forward(M0, iters) if kernel else _sinkhorn_loop(M0, iters, row=0, col=1)


def _reverse_tokens_last(M0: torch.Tensor, g: torch.Tensor, iters: int) -> torch.Tensor:
    """dL/dM0 from dL/dM on (n, n, tokens): the iterations recomputed, then their exact reverse (kernel or loop)."""
    if kernel := (cpu_kernels.sinkhorn() if M0.device.type == "cpu" else None):
        return kernel.backward(M0, g, iters)
    steps: list = []
    _sinkhorn_loop(M0, iters, row=0, col=1, steps=steps)
    for M, divisor, dim in reversed(steps):  # M = P / P.sum(dim) => dL/dP = (g - sum_dim(g * M)) / P.sum(dim)
        g = (g - (g * M).sum(dim, keepdim=True)) / divisor
    return g


# The same two steps as custom ops, so that torch.compile calls them instead of tracing the 40 divisions (inductor
# made that loop no faster on the CPU; see lit_hc/cpu_kernels.py). A library op, not a Python function, because
# dynamo cannot trace into a C++ extension and would break the graph there.
@torch.library.custom_op("lit_hc::sinkhorn_iterate", mutates_args=())
def _sinkhorn_iterate_op(M0: torch.Tensor, iters: int) -> torch.Tensor:
    return _iterate_tokens_last(M0.contiguous(), iters)


@torch.library.custom_op("lit_hc::sinkhorn_reverse", mutates_args=())
def _sinkhorn_reverse_op(M0: torch.Tensor, g: torch.Tensor, iters: int) -> torch.Tensor:
    return _reverse_tokens_last(M0.contiguous(), g.contiguous(), iters)


@_sinkhorn_iterate_op.register_fake
def _(M0: torch.Tensor, iters: int) -> torch.Tensor:
    return torch.empty_like(M0, memory_format=torch.contiguous_format)


@_sinkhorn_reverse_op.register_fake
def _(M0: torch.Tensor, g: torch.Tensor, iters: int) -> torch.Tensor:
    return torch.empty_like(M0, memory_format=torch.contiguous_format)


def _iterate_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.iters = inputs[1]


def _iterate_backward(ctx, grad: torch.Tensor):
    (M0,) = ctx.saved_tensors
    return _sinkhorn_reverse_op(M0, grad, ctx.iters), None


_sinkhorn_iterate_op.register_autograd(_iterate_backward, setup_context=_iterate_setup)


class _Sinkhorn(torch.autograd.Function):
    """Sinkhorn-Knopp without an autograd graph: forward keeps only the logits; backward recomputes the iterations
    and runs their exact reverse, so the gradient is the unrolled one (equal to autograd through the loop to
    rounding), not the implicit-function one, which is exact only at convergence.

    Every op runs on an (n, n, tokens) layout, tokens innermost: on CPU each division or sum then loops over the
    tokens contiguously instead of over n = 4 entries, which is most of the speed-up; the graph autograd would build
    (2 x iters divisions and sums per call, each saving its inputs) is the rest. On the CPU the iterations (forward,
    and recomputation plus reverse in backward) run in one C++ kernel per call where it builds
    (lit_hc/cpu_kernels.py), which does the same arithmetic in the same order: bit for bit these loops up to n = 4
    (tested), to rounding beyond.
    """

    @staticmethod
    def _tokens_last(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *x.shape[-2:]).permute(1, 2, 0).contiguous()  # (..., n, n) -> (n, n, tokens)

    @staticmethod
    def _start(logits: torch.Tensor) -> torch.Tensor:
        x = _Sinkhorn._tokens_last(logits.to(torch.promote_types(logits.dtype, torch.float32)))
        return torch.exp(x - x.amax(dim=(0, 1), keepdim=True))

    @staticmethod
    def forward(ctx, logits: torch.Tensor, iters: int) -> torch.Tensor:
        ctx.save_for_backward(logits)
        ctx.iters = iters
        return _iterate_tokens_last(_Sinkhorn._start(logits), iters).permute(2, 0, 1).reshape(logits.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (logits,) = ctx.saved_tensors
        M0 = _Sinkhorn._start(logits)
        g = _reverse_tokens_last(M0, _Sinkhorn._tokens_last(grad.to(M0.dtype)), ctx.iters)
        # M0 = exp(x - max x): the shift's term is -sum(g * M0), zero because the result does not change when M0 is
        # scaled (it is left out, as rounding is all autograd would add).
        return (g * M0).permute(2, 0, 1).reshape(logits.shape).to(logits.dtype), None


def sinkhorn_knopp(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """exp(logits), then alternately normalise rows and columns; float32 (float64 stays float64); (..., n, n).

    Columns sum to 1 exactly after the last step, rows approximately (the residual shrinks geometrically).
    Eager: one autograd Function (_Sinkhorn; on the CPU a fused C++ kernel). Compiled: on the CPU the same
    iterations as one custom op (the kernel, or the loop where it did not build) inside the graph; elsewhere the
    plain loop, which inductor fuses.
    """
    if torch.compiler.is_compiling():
        if logits.device.type != "cpu":
            return _sinkhorn_reference(logits, iters).to(logits.dtype)
        M = _sinkhorn_iterate_op(_Sinkhorn._start(logits), iters)
        return M.permute(2, 0, 1).reshape(logits.shape).to(logits.dtype)
    return _Sinkhorn.apply(logits, iters).to(logits.dtype)


class ManifoldHyperConnection(StreamConnection):
    """mHC (DeepSeek-AI 2025, "mHC: Manifold-Constrained Hyper-Connections"): H' = H_res H + H_post^T T(H_pre H), H_res doubly stochastic.

    Coefficients come from the flattened, RMS-normalised stream vector v' = RMSNorm(vec(H)) in R^{nd}:
    H_pre = sigmoid(a_pre v' phi_pre + b_pre), H_post = 2 sigmoid(a_post v' phi_post + b_post),
    H_res = SinkhornKnopp(a_res mat(v' phi_res) + b_res). phi = [phi_pre | phi_post | phi_res] is one matrix.
    """

    decay_params = ("phi",)

    def __init__(self, dim: int, expansion_rate: int, layer_idx: int, sinkhorn_iters: int = 20):
        super().__init__()
        n = expansion_rate
        self.expansion_rate, self.layer_idx, self.sinkhorn_iters = n, layer_idx, sinkhorn_iters
        # RMSNorm of vec(H) without a gain (a gain would be absorbed by phi); applied after the projection, see
        # coefficients. eps as nn.RMSNorm's default: the dtype's machine epsilon.
        self.phi = nn.Parameter(torch.zeros(n * dim, 2 * n + n * n))  # 0 at init: coefficients = their biases
        self.a_pre = nn.Parameter(torch.full((1,), 0.01))  # shape (1,): FSDP cannot shard 0-dim parameters
        self.a_post = nn.Parameter(torch.full((1,), 0.01))
        self.a_res = nn.Parameter(torch.full((1,), 0.01))
        # Init = Pre-Norm residual: H_pre sums to 1, H_post = 1, H_res doubly stochastic (as the mHC paper initialises them).
        # H_pre favours stream k mod n (0.9, the rest share 0.1), like HC's one-hot A_m: with uniform 1/n and
        # identical streams the module is symmetric under permuting streams, so the streams could never diverge.
        # sigmoid cannot reach 1, so for n = 1 H_pre starts at 1 - 6e-6; the branch's own pre-norm absorbs it.
        pre = torch.full((n,), 0.1 / (n - 1)) if n > 1 else torch.ones(1)
        pre[layer_idx % n] = 0.9 if n > 1 else 1 - 6e-6
        self.b_pre = nn.Parameter(torch.logit(pre))
        self.b_post = nn.Parameter(torch.zeros(n))
        # H_res leans to identity (diagonal logit 0, off-diagonal -2: 71% on the diagonal at n = 4) but not so
        # far that Sinkhorn converges slowly: near-permutation matrices need many more than 20 iterations.
        # exp() of it is symmetric with equal row sums, hence already doubly stochastic.
        self.b_res = nn.Parameter(torch.full((n, n), RES_OFFDIAG_LOGIT).fill_diagonal_(0.0))

    def coefficients(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """H_pre (..., n), H_post (..., n), H_res (..., n, n) per token."""
        n = self.expansion_rate
        # RMSNorm(v) @ phi = (v @ phi) / rms(v): dividing the (..., 2n+n^2) product instead of the (..., n*d) input
        # saves writing a normalised copy of H and its backward pass, the reordering the mHC paper makes in its
        # fused kernels (arXiv:2512.24880, infrastructure design). One reduction reads H for rms(v).
        v = H.flatten(-2)  # (..., n*d)
        mean_square = torch.linalg.vector_norm(v, dim=-1, keepdim=True).square() / v.shape[-1]
        proj = _thin_matmul(v.reshape(-1, v.shape[-1]), self.phi).view(*v.shape[:-1], -1)  # (..., 2n+n^2)
        proj = proj * torch.rsqrt(mean_square + torch.finfo(v.dtype).eps)
        h_pre = torch.sigmoid(self.a_pre * proj[..., :n] + self.b_pre)
        h_post = 2 * torch.sigmoid(self.a_post * proj[..., n : 2 * n] + self.b_post)
        res_logits = self.a_res * proj[..., 2 * n :].unflatten(-1, (n, n)) + self.b_res
        return h_pre, h_post, sinkhorn_knopp(res_logits, self.sinkhorn_iters)

    def width_connection(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if (kernel := _fused_kernel(self, H, self.phi)) and H.dtype == self.phi.dtype:
            return _FusedManifoldWidth.apply(kernel, H, self.phi, self.a_pre, self.a_post, self.a_res, self.b_pre,
                                             self.b_post, self.b_res, self.sinkhorn_iters)
        if _fused_op_applies(self, H, self.phi) and H.dtype == self.phi.dtype:
            # Compiled with `fused`: the same C++ pass, as a library op in the graph.
            n, d = H.shape[-2:]
            x, R, post = _mhc_width_op(H.reshape(-1, n, d).contiguous(), self.phi,
                                       torch.cat([self.a_pre, self.a_post, self.a_res]), self.b_pre, self.b_post,
                                       self.b_res, self.sinkhorn_iters)
            return x.view(*H.shape[:-2], d), R.view(H.shape), post.view(H.shape[:-1])
        h_pre, h_post, h_res = self.lean_coefficients(H)
        # One mixing matrix in HC's layout, alpha = [H_pre^T | H_res^T]: x = H_pre H, R = H_res H.
        alpha = torch.cat([h_pre.unsqueeze(-1), h_res.transpose(-1, -2)], -1)
        x, R = stream_mix(H, alpha, _fused_kernel(self, H, alpha))
        return x, R, h_post

    def connection_matrix(self, H: torch.Tensor) -> torch.Tensor:
        # Same layout as HC: A_m = H_pre^T, A_r = H_res^T (HC mixes R = A_r^T H), B = H_post.
        h_pre, h_post, h_res = self.coefficients(H)
        top = torch.cat([h_post.new_zeros(*h_post.shape[:-1], 1), h_post], -1).unsqueeze(-2)
        return torch.cat([top, torch.cat([h_pre.unsqueeze(-1), h_res.transpose(-1, -2)], -1)], -2)

    def extra_repr(self) -> str:
        return f"n={self.expansion_rate}, layer_idx={self.layer_idx}, sinkhorn_iters={self.sinkhorn_iters}"
