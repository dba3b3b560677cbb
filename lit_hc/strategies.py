"""Sharded training for models DDP cannot hold: Lightning's FSDP with the Transformer block as the unit.

FSDPStrategy takes its wrap and checkpointing policies as sets of classes, which a YAML config cannot name; this
subclass fixes them to lit_hc's Block (each block's attention, MLP and both HC modules are sharded and gathered
together) and keeps the original parameters visible (use_orig_params), so the optimizer groups keep the HC
paper's weight-decay rule (lit_hc.optim.param_groups sees the same names and modules as without FSDP).
"""
from __future__ import annotations

from datetime import timedelta
from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy

from lit_hc.layers import Block


class BlockFSDPStrategy(FSDPStrategy):
    def __init__(self, sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD",
                 state_dict_type: Literal["full", "sharded"] = "sharded", activation_checkpointing: bool = False,
                 cpu_offload: bool = False, timeout: timedelta = timedelta(minutes=10), **kwargs):
        """
        Args:
            sharding_strategy: FULL_SHARD (parameters, gradients and optimizer state sharded: the largest models),
                SHARD_GRAD_OP (parameters gathered for the whole step), HYBRID_SHARD (full shard within a node,
                replicated across nodes), NO_SHARD (DDP-like).
            state_dict_type: 'sharded' writes one checkpoint folder of per-rank files (fast, resumable on the same
                number of GPUs); 'full' gathers a single file on rank 0 (portable, needs its memory).
            activation_checkpointing: recompute each block's activations in backward (less memory, ~1.3x compute).
            cpu_offload: keep sharded parameters in CPU memory between uses (slow; a last resort).
            timeout: a collective that waits longer raises instead of hanging (a dead rank).
        """
        super().__init__(auto_wrap_policy={Block}, activation_checkpointing_policy={Block} if activation_checkpointing else None,
                         sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, cpu_offload=cpu_offload,
                         timeout=timeout, use_orig_params=True, **kwargs)
