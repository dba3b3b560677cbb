"""Sharded training: the FSDP strategy's configuration, and an FSDP-wrapped HC model (one gloo process on CPU)
that keeps the paper's weight-decay groups and trains. Lightning's FSDP needs a GPU to run a fit; that is not
tested here."""
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lit_hc import GPT, GPTConfig, HCConfig, param_groups
from lit_hc.layers import Block
from lit_hc.strategies import BlockFSDPStrategy


def test_strategy_wraps_blocks_and_keeps_original_parameters():
    strategy = BlockFSDPStrategy(activation_checkpointing=True, sharding_strategy="HYBRID_SHARD")
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {Block}
    assert strategy.sharding_strategy.name == "HYBRID_SHARD" and strategy._state_dict_type == "sharded"
    assert BlockFSDPStrategy()._activation_checkpointing_kwargs == {}  # off by default


def test_fsdp_wrapped_hc_model_keeps_the_decay_groups_and_trains(tmp_path):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        for name in ("dhc2", "mhc2"):
            torch.manual_seed(0)
            model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32,
                                  hc=HCConfig.from_name(name)))
            before = [sorted(g["names"]) for g in param_groups(model, 0.1)]
            wrapped = FSDP(model, auto_wrap_policy=BlockFSDPStrategy().kwargs["auto_wrap_policy"],
                           use_orig_params=True, device_id=torch.device("cpu"))
            after = [sorted(n.replace("_fsdp_wrapped_module.", "") for n in g["names"]) for g in param_groups(wrapped, 0.1)]
            assert after == before  # the same parameters decay (dynamic projections) or not (static HC parts)
            optimizer = torch.optim.AdamW(param_groups(wrapped, 0.1), lr=1e-2)
            idx = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
            losses = []
            for _ in range(3):
                loss = F.cross_entropy(wrapped(idx).flatten(0, 1), torch.roll(idx, -1, 1).flatten())
                optimizer.zero_grad()
                loss.backward()
                assert all(p.grad is not None for n, p in wrapped.named_parameters() if "hc_" in n)
                optimizer.step()
                losses.append(loss.item())
            assert losses[-1] < losses[0]
    finally:
        dist.destroy_process_group()
