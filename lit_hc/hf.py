"""Hyper-Connections injected into pretrained Hugging Face Transformers, without changing what they compute.

    from transformers import AutoModelForCausalLM
    from lit_hc.hf import inject_hc, extract_mixing_weights, hc_param_groups

    model = AutoModelForCausalLM.from_pretrained("gpt2")
    inject_hc(model, "GPT2Block", expansion_rate=4)              # DHC x4 around every GPT2Block
    optimizer = torch.optim.AdamW(hc_param_groups(model, lr=5e-5, weight_decay=0.01, hc_lr_multiplier=10))

Each matching block becomes a sub-layer T(h) = block(h) - h (its own residual stays inside it) that runs on n streams
through the paper's width and depth connections. The hidden states between injected blocks carry the streams
packed into the feature axis, (batch, tokens, n * d), so whatever the model does between blocks (masks, caches,
position embeddings) is untouched; streams are expanded before the first injected block of a stack and averaged
after the last one. At injection every stream equals the original hidden state, so the model's outputs, masks,
KV caches and `generate()` are exactly those of the original (tested for GPT-2, BERT, ViT and Llama).

This module needs only torch (the models come from `transformers`, the `hf` extra: `uv sync --extra hf` /
`pip install lit-hc[hf]`); fine-tuning through Lightning and the CLI is `lit_hc.finetune.HFCausalLM`.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from lit_hc.hyper_connections import HCConfig, HyperConnection, ManifoldHyperConnection, StreamConnection, expand_streams
from lit_hc.optim import split_decay


class InjectedBlock(nn.Module):
    """One pretrained block running on n streams: H' = depth(block(x) - x, R, beta) with x, R, beta = width(H)."""

    def __init__(self, block: nn.Module, hc: StreamConnection, first: bool, last: bool):
        super().__init__()
        self.block, self.hc = block, hc
        self.n, self.first, self.last = hc.expansion_rate, first, last

    def streams(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(b, t, d) before the first block, (b, t, n*d) after it -> H (b, t, n, d)."""
        if self.first:
            return expand_streams(hidden_states, self.n)
        return hidden_states.unflatten(-1, (self.n, hidden_states.shape[-1] // self.n))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        H = self.streams(hidden_states)
        x, R, beta = self.hc.width(H)  # with hc.recompute: H only is kept, the mixing redone in backward
        out = self.block(x, *args, **kwargs)
        y = out[0] if isinstance(out, tuple) else out
        H = self.hc.depth_connection(y - x, R, beta)
        h = H.mean(-2) if self.last else H.flatten(-2)  # the mean: no scale change for models without a final norm
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # attributes the model reads from its blocks (e.g. attention_type) pass through
            return getattr(super().__getattr__("block"), name)


def block_class_names(model: nn.Module) -> list[str]:
    """Class names of the repeated blocks of a model (children of its ModuleLists), most frequent first."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for child in module:
                counts[type(child).__name__] = counts.get(type(child).__name__, 0) + 1
    return sorted(counts, key=lambda k: -counts[k])


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError("cannot read the hidden size from model.config: pass dim=")


def _start_near_identity(hc: StreamConnection, epsilon: float) -> None:
    """Residual mixing that starts with `epsilon` of each stream spread over the others, keeping the function:
    HC: A_r = (1 - eps) I + eps/n 11^T; mHC: H_res logits whose Sinkhorn projection has diagonal 1 - eps.
    Both have unit row and column sums, so identical streams stay identical."""
    n = hc.expansion_rate
    with torch.no_grad():
        if isinstance(hc, HyperConnection):
            hc.static_alpha[:, 1:] = (1 - epsilon) * torch.eye(n) + epsilon / n
        elif isinstance(hc, ManifoldHyperConnection) and n > 1:
            off = math.log(max(epsilon, 1e-12) / ((1 - epsilon) * (n - 1)))
            hc.b_res.fill_(off).fill_diagonal_(0.0)


def inject_hc(model: nn.Module, target_class_name: str, expansion_rate: int = 4, kind: Literal["hc", "mhc"] = "hc",
              dynamic: bool = True, use_tanh: bool = True, epsilon: float | None = None, recompute: bool = False,
              dim: int | None = None, hc: HCConfig | None = None) -> nn.Module:
    """Wrap every module of class `target_class_name` so the stack runs on `expansion_rate` streams (in place).

    Args:
        model: any PyTorch module tree (a transformers PreTrainedModel, a PeftModel, ...).
        target_class_name: the block class, e.g. GPT2Block, BertLayer, ViTLayer, LlamaDecoderLayer.
        expansion_rate: n, the number of streams.
        kind: 'hc' (Hyper-Connections; `dynamic`/`use_tanh` as in the paper) or 'mhc' (manifold-constrained).
        epsilon: share of cross-stream mixing the residual matrix starts with (None: HC starts at the identity,
            mHC at its default near-identity doubly stochastic matrix). The function at injection is unchanged.
        recompute: recompute the width connection in the backward pass instead of storing its activations
            (HCConfig.recompute; either one turns it on).
        dim: hidden size; read from model.config when None.
        hc: the whole residual variant (HCConfig: also freeze_width / freeze_beta, sinkhorn_iters); when given it
            replaces kind, expansion_rate, dynamic and use_tanh. Its output_init_scale must stay 'auto' or
            'none': the blocks' output projections are pretrained, and rescaling them would change the model.
    Returns the same model. Blocks are grouped by their parent container: each stack (encoder, decoder) gets its
    own expand before its first block and mean after its last.
    """
    if epsilon is not None and not 0 <= epsilon < 1:
        raise ValueError(f"epsilon={epsilon} must be in [0, 1)")
    hc_config = hc or HCConfig(kind=kind, expansion_rate=expansion_rate, dynamic=dynamic, use_tanh=use_tanh)
    hc_config = dataclasses.replace(hc_config, recompute=hc_config.recompute or recompute)
    if hc_config.kind == "residual":
        raise ValueError("HCConfig.kind='residual' injects nothing: leave the model as it is for the baseline")
    if hc_config.output_init_scale not in ("auto", "none"):
        raise ValueError(f"HCConfig.output_init_scale={hc_config.output_init_scale!r} would rescale pretrained "
                         "output projections and change the model: leave it 'auto' (nothing is rescaled)")
    if any(isinstance(m, InjectedBlock) for m in model.modules()):
        raise ValueError("this model already has injected hyper-connections")
    targets = [(name, m) for name, m in model.named_modules() if type(m).__name__ == target_class_name]
    if not targets:
        raise ValueError(f"no module of class {target_class_name!r} in {type(model).__name__}; its repeated blocks "
                         f"are: {', '.join(block_class_names(model)) or 'none found'}")
    dim = dim or _hidden_size(model)
    stacks: dict[str, list[str]] = {}
    for name, _ in targets:
        stacks.setdefault(name.rpartition(".")[0], []).append(name)
    for parent_name, names in stacks.items():
        parent = model.get_submodule(parent_name) if parent_name else model
        for i, name in enumerate(names):
            child_name = name.rpartition(".")[2]
            block = parent.get_submodule(child_name)
            hc = hc_config.build(dim, i)
            if epsilon is not None:
                _start_near_identity(hc, epsilon)
            param = next(block.parameters(), None)
            if param is not None:
                hc.to(device=param.device, dtype=param.dtype)
            wrapper = InjectedBlock(block, hc, first=i == 0, last=i == len(names) - 1)
            if isinstance(parent, nn.ModuleList):
                parent[int(child_name)] = wrapper
            else:
                setattr(parent, child_name, wrapper)
    return model


def inject_mhc(model: nn.Module, target_class_name: str, max_history: int = 4, mode: Literal["hc", "mhc"] = "mhc",
               constraint: Literal["identity"] = "identity", epsilon: float = 0.1, detach_history: bool = False,
               dynamic: bool = True, dim: int | None = None) -> nn.Module:
    """An entry point with the argument names other HC ports use, mapped onto `inject_hc` (see README, "Hugging Face models"):

    - max_history -> expansion_rate: the number of residual streams (not a buffer of past layer outputs: HC's
      streams already carry every earlier output, weighted, which is what "history" describes).
    - mode -> kind: 'hc' or 'mhc'.
    - constraint='identity', epsilon -> the residual matrix starts as the identity with `epsilon` of cross-stream
      mixing (rows and columns still sum to 1), so the injected model computes exactly what it computed before.
      A "90% current block, 10% history" start would change the function at injection; this does not.
    - detach_history -> recompute: the memory saver recomputes the stream mixing in the backward pass. Gradients
      still flow through every stream (detaching them would stop the connections from learning).
    """
    if constraint != "identity":
        raise ValueError(f"constraint={constraint!r}: only 'identity' is supported (a start that keeps the function)")
    return inject_hc(model, target_class_name, expansion_rate=max_history, kind=mode, dynamic=dynamic,
                     epsilon=epsilon, recompute=detach_history, dim=dim)


def injected_blocks(model: nn.Module) -> OrderedDict[str, InjectedBlock]:
    return OrderedDict((name, m) for name, m in model.named_modules() if isinstance(m, InjectedBlock))


@torch.no_grad()
def extract_mixing_weights(model: nn.Module, inputs: dict | torch.Tensor | None = None) -> OrderedDict[str, torch.Tensor]:
    """Per injected block (by module name), its (n+1, n+1) connection matrix [[0, B], [A_m, A_r]].

    Static HC needs no inputs. Dynamic HC and mHC depend on the hidden states: pass `inputs` (a dict of model
    keyword arguments or an input tensor); the matrix is then averaged over the batch and tokens.
    """
    blocks = injected_blocks(model)
    if not blocks:
        raise ValueError("the model has no injected hyper-connections: call inject_hc / inject_mhc first")
    matrices: OrderedDict[str, torch.Tensor] = OrderedDict()
    static = all(isinstance(b.hc, HyperConnection) and not b.hc.dynamic for b in blocks.values())
    if static:
        for name, b in blocks.items():
            matrices[name] = b.hc.connection_matrix(b.hc.static_alpha.new_zeros(1, b.n, 1))[0].float().cpu()
        return matrices
    if inputs is None:
        raise ValueError("dynamic HC / mHC weights depend on the input: pass inputs= (a batch for the model)")

    def capture(name):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            H = module.streams(hidden)
            matrices[name] = module.hc.connection_matrix(H).flatten(0, -3).float().mean(0).cpu()
        return hook

    handles = [b.register_forward_pre_hook(capture(name), with_kwargs=True) for name, b in blocks.items()]
    was_training = model.training
    try:
        model.eval()
        model(**inputs) if isinstance(inputs, dict) else model(inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return matrices


def plot_mixing_weights(weights: OrderedDict[str, torch.Tensor], title: str = ""):
    """Matplotlib figures of the matrices and of the paper's Fig. 7 unrolled view: (matrices, unrolled)."""
    from lit_hc.analysis import unrolled_connections
    from lit_hc.plots import connection_matrices_figure, unrolled_connections_figure

    stacked = torch.stack(list(weights.values()))
    labels = [f"block {i}" for i in range(len(weights))]
    return (connection_matrices_figure(stacked, title, labels=labels),
            unrolled_connections_figure(unrolled_connections(stacked), title))


def hc_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0,
                    hc_lr_multiplier: float = 1.0) -> list[dict]:
    """AdamW groups: the model's own trainable weights (decay on >= 2-D weights except embeddings), and the HC
    parameters with lr * hc_lr_multiplier: decay only on the dynamic projections, never on the static parts.
    Frozen parameters (e.g. the base model under a peft LoRA adapter) are left out."""
    hc_modules = [b.hc for b in injected_blocks(model).values()]
    hc_decay, hc_static = {}, {}
    for i, hc in enumerate(hc_modules):
        decay, no_decay = split_decay(hc)
        hc_decay.update({f"{i}.{k}": p for k, p in decay.items()})
        hc_static.update({f"{i}.{k}": p for k, p in no_decay.items()})
    hc_ids = {id(p) for m in hc_modules for p in m.parameters()}
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in hc_ids:
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        {"params": list(hc_decay.values()), "lr": lr * hc_lr_multiplier, "weight_decay": weight_decay},
        {"params": list(hc_static.values()), "lr": lr * hc_lr_multiplier, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def find_block_class(model: nn.Module) -> str:
    """The most repeated block class of a model: the usual injection target (GPT2Block, LlamaDecoderLayer, ...)."""
    names = block_class_names(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no repeated blocks: pass target_class_name")
    return names[0]


def __getattr__(name: str):  # PEP 562: the fine-tuning module moved to lit_hc.finetune (Lightning)
    if name in ("HFCausalLM", "TextShape"):
        from lit_hc import finetune

        return getattr(finetune, name)
    raise AttributeError(f"module 'lit_hc.hf' has no attribute {name!r}")
