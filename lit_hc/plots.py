"""Figures of learned connections (matplotlib's object API: no global state, no display needed)."""
from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure


def connection_matrices_figure(matrices: torch.Tensor, title: str = "", labels: list[str] | None = None) -> Figure:
    """One heatmap per sub-layer of its (n+1)x(n+1) HC matrix [[0, B], [A_m, A_r]]; labels default to
    'attn k' / 'mlp k' (two sub-layers per block)."""
    count = matrices.shape[0]
    cols = min(count, 8)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(1.6 * cols, 1.6 * rows + 0.4), layout="constrained")
    limit = float(matrices.abs().max())
    for k in range(count):
        ax = fig.add_subplot(rows, cols, k + 1)
        image = ax.imshow(matrices[k].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(labels[k] if labels else f"{'attn' if k % 2 == 0 else 'mlp'} {k // 2}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=fig.axes, shrink=0.6)
    if title:
        fig.suptitle(title)
    return fig


def unrolled_connections_figure(weights: torch.Tensor, title: str = "", normalize_rows: bool = True) -> Figure:
    """Paper Fig. 7: rows = input of sub-layer k (last row: final output), columns = source (0: embedding).

    normalize_rows divides each row by its largest |weight|: the last row (the sum of n streams) is often an
    order of magnitude larger than the others and would otherwise hide their pattern.
    """
    size = weights.shape[0]
    fig = Figure(figsize=(5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    if normalize_rows:
        weights = weights / weights.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    masked = torch.where(torch.ones(size, size).tril().bool(), weights, torch.tensor(float("nan")))
    limit = float(weights.abs().max())
    image = ax.imshow(masked.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xlabel("output of layer j (0 = embedding)")
    ax.set_ylabel("input of layer k (last = final output)")
    fig.colorbar(image, ax=ax)
    ax.set_title((title or "unrolled connection weights") + ("\n(each row / its max |weight|)" if normalize_rows else ""),
                 fontsize=9)
    return fig
