"""Model-level behaviour for every residual variant: gradients, weight-decay groups, causality, generation."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lit_hc import GPT, GPTConfig, HCConfig, ViT, ViTConfig, param_groups
from lit_hc.optim import split_decay

GPT_SMALL = dict(vocab_size=48, block_size=12, n_layer=2, n_head=2, n_embd=24)
VIT_SMALL = dict(image_size=16, patch_size=4, num_classes=5, dim=24, depth=2, heads=2)


def _gpt_loss(model):
    idx = torch.randint(0, 48, (3, 12))
    return F.cross_entropy(model(idx).flatten(0, 1), torch.roll(idx, -1, 1).flatten())


def _vit_loss(model):
    return F.cross_entropy(model(torch.randn(3, 3, 16, 16)), torch.randint(0, 5, (3,)))


@pytest.mark.parametrize("task", ["gpt", "vit"])
def test_every_parameter_gets_a_gradient(task, hc):
    """After one AdamW step (the dynamic scales have exactly zero gradient at init because W = 0), a second
    backward reaches every trainable parameter with a non-zero gradient."""
    model = GPT(GPTConfig(**GPT_SMALL, hc=hc)) if task == "gpt" else ViT(ViTConfig(**VIT_SMALL, hc=hc))
    loss_fn = _gpt_loss if task == "gpt" else _vit_loss
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
    opt.zero_grad()
    loss_fn(model).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_frozen_ablation_keeps_parameters_at_init():
    hc = HCConfig(kind="hc", expansion_rate=2, freeze_width=True, freeze_beta=True)
    model = GPT(GPTConfig(**GPT_SMALL, hc=hc))
    before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert len(before) == 4 * 2 * GPT_SMALL["n_layer"]
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    _gpt_loss(model).backward()
    opt.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_weight_decay_groups_follow_the_paper():
    model = GPT(GPTConfig(**GPT_SMALL, hc=HCConfig(kind="hc", expansion_rate=4)))
    decay, no_decay = split_decay(model)
    leaf = lambda names: {n.rsplit(".", 1)[-1] for n in names}  # noqa: E731
    assert leaf(decay) == {"weight", "dynamic_alpha_fn", "dynamic_beta_fn"}
    assert {"static_alpha", "static_beta", "dynamic_alpha_scale", "dynamic_beta_scale", "bias"} <= leaf(no_decay)
    assert all(not n.endswith(".weight") or "norm" in n or n in ("wte.weight", "wpe.weight") for n in no_decay)
    assert "wte.weight" in no_decay and "lm_head.weight" not in decay  # tied embedding: once, no decay
    assert sum(p.numel() for p in {**decay, **no_decay}.values()) == sum(p.numel() for p in model.parameters())
    groups = param_groups(model, 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_weight_decay_groups_mhc_and_vit():
    model = ViT(ViTConfig(**VIT_SMALL, hc=HCConfig(kind="mhc", expansion_rate=2)))
    decay, no_decay = split_decay(model)
    assert {n for n in decay if ".hc_" in n} == {n for n in dict(model.named_parameters()) if n.endswith(".phi")}
    assert {"cls_token", "pos_embed"} <= set(no_decay) and "patch_embed.proj.weight" in decay
    assert all(n.rsplit(".", 1)[-1] in {"b_pre", "b_post", "b_res", "a_pre", "a_post", "a_res"}
               for n in no_decay if ".hc_" in n)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_gpt_is_causal(hc, pos_emb):
    """Stream mixing is per token: changing a future token must not change earlier logits."""
    model = GPT(GPTConfig(**GPT_SMALL, pos_emb=pos_emb, hc=hc)).eval()
    with torch.no_grad():  # move every HC parameter off its init so the check covers the learned mixing too
        for n, p in model.named_parameters():
            if ".hc_" in n:
                p.add_(0.1 * torch.randn_like(p))
    idx = torch.randint(0, 48, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 48
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_generate_greedy_is_deterministic_and_respects_block_size():
    model = GPT(GPTConfig(**GPT_SMALL, hc=HCConfig(kind="hc", expansion_rate=2))).eval()
    prompt = torch.randint(0, 48, (2, 5))
    out = model.generate(prompt, max_new_tokens=15, temperature=0)
    assert out.shape == (2, 20) and torch.equal(out[:, :5], prompt)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=15, temperature=0))
    sampled = model.generate(prompt, max_new_tokens=4, temperature=1.0, top_k=1)
    assert torch.equal(sampled, out[:, :9])  # top_k=1 sampling is greedy


def test_sqrt_n_output_init_switch():
    """'divide' (default for HC) shrinks the output-projection std by sqrt(n); 'multiply' grows it."""
    stds = {}
    for mode in ("none", "divide", "multiply"):
        torch.manual_seed(0)
        cfg = GPTConfig(**{**GPT_SMALL, "n_embd": 256}, hc=HCConfig("hc", 4, output_init_scale=mode))
        stds[mode] = GPT(cfg).blocks[0].attn.proj.weight.std().item()
    assert stds["divide"] == pytest.approx(stds["none"] / 2, rel=0.02)
    assert stds["multiply"] == pytest.approx(stds["none"] * 2, rel=0.02)
    assert HCConfig().output_init_factor() == 1.0 and HCConfig("hc", 4).output_init_factor() == 0.5
    # The init-confound control: the baseline with an explicit multiplier gets DHC x4's output-projection init.
    torch.manual_seed(0)
    control = GPT(GPTConfig(**{**GPT_SMALL, "n_embd": 256}, hc=HCConfig(output_init_scale=0.5)))
    assert control.blocks[0].attn.proj.weight.std().item() == pytest.approx(stds["divide"], rel=0.02)
    assert HCConfig(output_init_scale=0.5).name == "residual-init-0.5" and HCConfig().name == "residual"


@pytest.mark.parametrize("bad,field", [
    (dict(kind="dense"), "kind"), (dict(kind="hc", expansion_rate=0), "expansion_rate"),
    (dict(expansion_rate=4), "expansion_rate"), (dict(output_init_scale="up"), "output_init_scale"),
    (dict(output_init_scale=-0.5), "output_init_scale"), (dict(output_init_scale=True), "output_init_scale"),
    (dict(kind="mhc", expansion_rate=2, sinkhorn_iters=0), "sinkhorn_iters"),
])
def test_hcconfig_rejects_bad_values(bad, field):
    with pytest.raises(ValueError, match=field):
        HCConfig(**bad)


@pytest.mark.parametrize("bad,field", [
    (dict(n_embd=30, n_head=4), "n_embd"), (dict(n_layer=0), "n_layer"), (dict(dropout=1.5), "dropout"),
    (dict(mlp="relu"), "mlp"), (dict(pos_emb="alibi"), "pos_emb"), (dict(vocab_size=-1), "vocab_size"),
    (dict(n_embd=24, n_head=8, pos_emb="rope"), "n_embd/n_head"), (dict(hc={"kind": "x"}), "kind"),
])
def test_gptconfig_rejects_bad_values(bad, field):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**bad)


@pytest.mark.parametrize("bad,field", [
    (dict(image_size=30, patch_size=4), "image_size"), (dict(dim=20, heads=3), "dim"),
    (dict(drop_path=1.0), "drop_path"), (dict(global_pool="max"), "global_pool"), (dict(depth=0), "depth"),
])
def test_vitconfig_rejects_bad_values(bad, field):
    with pytest.raises(ValueError, match=field):
        ViTConfig(**bad)


def test_sequence_longer_than_block_size_is_an_error():
    with pytest.raises(ValueError, match="block_size"):
        GPT(GPTConfig(**GPT_SMALL))(torch.zeros(1, 13, dtype=torch.long))


def test_config_names():
    assert [HCConfig(**kw).name for kw in (
        {}, dict(kind="hc", expansion_rate=4, dynamic=False), dict(kind="hc", expansion_rate=8),
        dict(kind="hc", expansion_rate=4, use_tanh=False), dict(kind="mhc", expansion_rate=4),
    )] == ["residual", "shc4", "dhc8", "dhc4-notanh", "mhc4"]
    assert dataclasses.replace(HCConfig("hc", 2), freeze_beta=True).name == "dhc2-frozenbeta"
    # every overlay in configs/hc names its runs after its own file, so runs of different overlays never collide
    import yaml
    from helpers import CONFIGS

    for path in (CONFIGS / "hc").glob("*.yaml"):
        config = HCConfig(**yaml.safe_load(path.read_text())["model"]["init_args"]["hc"])
        assert config.name == path.stem and HCConfig.from_name(path.stem) == config  # one notation, both ways
    for name in ("dhc2-frozenwidth-frozenbeta", "shc8-init-multiply", "mhc2-init-0.25"):
        assert HCConfig.from_name(name).name == name
    for bad in ("dhc", "hc4", "mhc4-notanh", "shc2-notanh", "dhc4-init-"):
        with pytest.raises(ValueError, match="variant name|ablation|output_init_scale"):
            HCConfig.from_name(bad)


def test_the_variant_is_decided_in_one_place():
    """LanguageModel takes the variant from `hc`, or from arch.hc when hc is left at its default; two different
    variants are an error, never a silent choice."""
    from lit_hc import LanguageModel

    dhc4 = HCConfig("hc", 4)
    assert LanguageModel(arch=GPTConfig(**GPT_SMALL, hc=dhc4)).hc == dhc4
    assert LanguageModel(arch=GPTConfig(**GPT_SMALL), hc=dhc4).hc == dhc4
    assert LanguageModel(arch=GPTConfig(**GPT_SMALL, hc=dhc4), hc=dhc4).hc == dhc4
    with pytest.raises(ValueError, match=r"two residual variants given: hc \(shc2\) and arch.hc \(dhc4\)"):
        LanguageModel(arch=GPTConfig(**GPT_SMALL, hc=dhc4), hc=HCConfig("hc", 2, dynamic=False))


def test_configure_optimizers_for_hyper_connections_returns_adamw_without_decay_on_static_parts():
    from lit_hc import configure_optimizers_for_hyper_connections

    model = GPT(GPTConfig(**GPT_SMALL, hc=HCConfig("hc", 2)))
    optimizer = configure_optimizers_for_hyper_connections(model, learning_rate=3e-4, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)
    decay = {n for g in optimizer.param_groups if g["weight_decay"] == 0.05 for n in g["names"]}
    assert all(g["lr"] == 3e-4 for g in optimizer.param_groups)
    assert "blocks.0.hc_attn.static_alpha" not in decay and "blocks.0.hc_attn.dynamic_alpha_fn" in decay


@pytest.mark.parametrize("task", ["gpt", "vit"])
def test_the_training_optimizer_updates_as_the_per_tensor_adamw_does_bit_for_bit(task):
    """OptimConfig.build asks for AdamW's multi-tensor (foreach) update, which torch uses by itself only on CUDA;
    on the CPU it must give the per-tensor loop's parameters to the last bit, so no committed run changes."""
    from lit_hc.tasks import OptimConfig

    hc = HCConfig.from_name("dhc4")
    def make():
        return GPT(GPTConfig(**GPT_SMALL, hc=hc)) if task == "gpt" else ViT(ViTConfig(**VIT_SMALL, hc=hc))

    config = OptimConfig(lr=3e-2, warmup_steps=1)
    models, optimizers = [], []
    for foreach in (True, False):
        torch.manual_seed(0)
        models.append(make())
        built = config.build(param_groups(models[-1], config.weight_decay), total_steps=10)["optimizer"]
        assert built.defaults["foreach"] is True
        optimizers.append(built if foreach else torch.optim.AdamW(
            param_groups(models[-1], config.weight_decay), lr=config.lr, betas=config.betas, eps=config.eps))
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in models[0].parameters()]
        for model, optimizer in zip(models, optimizers):
            for p, grad in zip(model.parameters(), grads):
                p.grad = grad.clone()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(models[0].blocks[0].hc_attn.static_alpha, make().blocks[0].hc_attn.static_alpha)
