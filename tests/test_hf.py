"""HC / mHC injected into Hugging Face models: the function is unchanged at injection, training moves it.

Tiny models with random weights built from their configs: nothing is downloaded.
"""
import copy
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import CONFIGS, run_dir, scalars, write_toy_corpus  # noqa: E402
from lit_hc.hf import (  # noqa: E402
    InjectedBlock, extract_mixing_weights, hc_param_groups, inject_hc, inject_mhc, plot_mixing_weights,
)

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=3, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), "GPT2Block"


def _bert():
    return transformers.BertModel(transformers.BertConfig(vocab_size=128, max_position_embeddings=64, **SMALL)), "BertLayer"


def _llama():
    config = transformers.LlamaConfig(vocab_size=128, max_position_embeddings=64, num_key_value_heads=1,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0, **SMALL)
    return transformers.LlamaForCausalLM(config), "LlamaDecoderLayer"


def _vit():
    return transformers.ViTModel(transformers.ViTConfig(image_size=16, patch_size=4, **SMALL)), "ViTLayer"


FAMILIES = {"gpt2": _gpt2, "bert": _bert, "llama": _llama, "vit": _vit}


def _inputs(family: str) -> dict:
    g = torch.Generator().manual_seed(0)
    if family == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    ids = torch.randint(1, 128, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded sequence: the attention mask must still be honoured
    return {"input_ids": ids, "attention_mask": mask}


def _output(model, inputs) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _build(family):
    torch.manual_seed(0)
    model, block = FAMILIES[family]()
    return model.eval(), block


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind, n", [("hc", 1), ("hc", 2), ("hc", 4), ("mhc", 2), ("mhc", 4)])
def test_injection_keeps_the_function(family, kind, n):
    model, block = _build(family)
    inputs = _inputs(family)
    with torch.no_grad():
        before = _output(model, inputs)
        injected = inject_hc(copy.deepcopy(model), block, n, kind=kind, epsilon=0.1 if n > 1 else None)
        after = _output(injected, inputs)
    assert sum(isinstance(m, InjectedBlock) for m in injected.modules()) == 3
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # The padding mask still matters after injection (it is not silently dropped).
    if "attention_mask" in inputs:
        with torch.no_grad():
            unmasked = _output(injected, {"input_ids": inputs["input_ids"]})
        assert not torch.allclose(unmasked[1], after[1], atol=1e-4)


@pytest.mark.parametrize("kind", ["hc", "mhc"])
def test_gpt2_greedy_generation_is_unchanged(kind):
    model, block = _build("gpt2")
    prompt = torch.randint(1, 128, (1, 5), generator=torch.Generator().manual_seed(1))
    expected = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    inject_hc(model, block, 4, kind=kind, epsilon=0.1)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0), expected)


def _train(model, steps=15, **groups):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 128, (4, 16), generator=g)
    optimizer = torch.optim.AdamW(hc_param_groups(model, lr=3e-3, **groups))
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_moves_hc_parameters_and_lowers_the_loss():
    model, block = _build("gpt2")
    inject_hc(model, block, 4, dynamic=True)
    hc = {k: v.detach().clone() for k, v in model.named_parameters() if ".hc." in k}
    assert hc and all(p.requires_grad for k, p in model.named_parameters() if ".hc." in k)
    losses = _train(model, weight_decay=0.1, hc_lr_multiplier=10.0)
    assert losses[-1] < 0.8 * losses[0]  # 4.87 -> 3.44 when written
    moved = [k for k, v in model.named_parameters() if k in hc and not torch.equal(v, hc[k])]
    assert len(moved) == len(hc), set(hc) - set(moved)  # every HC parameter received gradient and moved


def test_param_groups_have_the_hc_multiplier_and_no_decay_on_static_parts():
    model, block = _build("gpt2")
    inject_hc(model, block, 4, dynamic=True)
    groups = hc_param_groups(model, lr=1e-4, weight_decay=0.1, hc_lr_multiplier=10.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    static = named["transformer.h.0.hc.static_alpha"]
    dynamic = named["transformer.h.0.hc.dynamic_alpha_fn"]
    weight = named["transformer.h.0.block.attn.c_attn.weight"]
    assert by_id[id(static)]["lr"] == pytest.approx(1e-3) and by_id[id(static)]["weight_decay"] == 0.0
    assert by_id[id(dynamic)]["lr"] == pytest.approx(1e-3) and by_id[id(dynamic)]["weight_decay"] == 0.1
    assert by_id[id(weight)]["lr"] == pytest.approx(1e-4) and by_id[id(weight)]["weight_decay"] == 0.1
    assert len(by_id) == sum(1 for p in model.parameters() if p.requires_grad)  # every parameter once


def test_extract_mixing_weights_shapes_and_plot():
    model, block = _build("gpt2")
    inject_hc(model, block, 4, dynamic=False)
    static = extract_mixing_weights(model)  # static HC needs no inputs
    assert list(static) == [f"transformer.h.{i}" for i in range(3)]
    for i, m in enumerate(static.values()):
        assert m.shape == (5, 5)
        assert torch.equal(m[0, 1:], torch.ones(4)) and torch.equal(m[1:, 1:], torch.eye(4))  # B = 1, A_r = I
        assert torch.equal(m[1:, 0], torch.nn.functional.one_hot(torch.tensor(i % 4), 4).float())  # A_m
    dynamic, _ = _build("gpt2")
    inject_mhc(dynamic, block, max_history=4, mode="mhc")
    with pytest.raises(ValueError, match="pass inputs="):
        extract_mixing_weights(dynamic)
    weights = extract_mixing_weights(dynamic, _inputs("gpt2"))
    assert len(weights) == 3 and all(m.shape == (5, 5) for m in weights.values())
    figures = plot_mixing_weights(weights, "mhc4")
    assert len(figures) == 2 and all(f.axes for f in figures)


def test_inject_mhc_maps_the_seed_arguments():
    model, block = _build("gpt2")
    inject_mhc(model, block, max_history=4, mode="mhc", constraint="identity", epsilon=0.1)
    from lit_hc.hyper_connections import sinkhorn_knopp

    h_res = sinkhorn_knopp(model.transformer.h[0].hc.b_res)
    torch.testing.assert_close(h_res.diagonal(), torch.full((4,), 0.9))  # epsilon = cross-stream share
    with pytest.raises(ValueError, match="only 'identity'"):
        inject_mhc(_build("gpt2")[0], block, constraint="free")


def test_detach_history_recomputes_with_the_same_gradients():
    """detach_history saves memory by recomputing the mixing; the gradients are those of the plain path."""
    grads = []
    for detach in (False, True):
        model, block = _build("gpt2")
        inject_mhc(model, block, max_history=4, mode="hc", detach_history=detach)
        assert model.transformer.h[1].hc.recompute is detach
        ids = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(3))
        model.train()
        torch.manual_seed(4)  # the same dropout masks
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(".hc." in k for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-7, msg=k)


def test_unknown_block_class_lists_the_ones_the_model_has():
    model, _ = _build("bert")
    with pytest.raises(ValueError, match="no module of class 'GPT2Block' in BertModel; its repeated blocks are: BertLayer"):
        inject_hc(model, "GPT2Block")


def test_hc_on_top_of_lora():
    peft = pytest.importorskip("peft")
    model, block = _build("gpt2")
    ids = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=True))
    inject_hc(lora, block, 4)
    with torch.no_grad():
        torch.testing.assert_close(lora(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    frozen = {k: p.detach().clone() for k, p in lora.named_parameters() if not p.requires_grad}
    losses = _train(lora, steps=8, hc_lr_multiplier=10.0)
    assert losses[-1] < losses[0]  # the adapters and the connections learn
    assert all(torch.equal(p, frozen[k]) for k, p in lora.named_parameters() if k in frozen)
    trained = {k for k, p in lora.named_parameters() if p.grad is not None}
    assert any("lora_" in k for k in trained) and any(".hc." in k for k in trained)
    assert all("lora_" in k or ".hc." in k for k in trained)  # the pretrained weights stay frozen


def test_inject_honours_every_hc_field():
    from lit_hc import HCConfig

    model, block = _build("gpt2")
    inject_hc(model, block, hc=HCConfig(kind="hc", expansion_rate=2, dynamic=False, freeze_width=True))
    hc = model.transformer.h[0].hc
    assert hc.expansion_rate == 2 and not hc.dynamic and not hc.static_alpha.requires_grad
    assert hc.static_beta.requires_grad
    mhc, _ = _build("gpt2")
    inject_hc(mhc, block, hc=HCConfig(kind="mhc", expansion_rate=2, sinkhorn_iters=3))
    assert mhc.transformer.h[0].hc.sinkhorn_iters == 3
    with pytest.raises(ValueError, match="output_init_scale=0.5 would rescale pretrained output projections"):
        inject_hc(_build("gpt2")[0], block, hc=HCConfig(kind="hc", expansion_rate=2, output_init_scale=0.5))


def _finetune_args(tmp_path, *extra):
    model, _ = _build("gpt2")
    model.resize_token_embeddings(256)  # byte-level data
    model.save_pretrained(tmp_path / "gpt2")
    corpus = write_toy_corpus(tmp_path / "corpus")
    return ["fit", "--config", str(CONFIGS / "finetune/gpt2-dhc4.yaml"), "--trainer.max_steps", "6",
            "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--model.init_args.pretrained", str(tmp_path / "gpt2"), "--model.init_args.optim.lr", "0.003",
            "--model.init_args.optim.warmup_steps", "2", "--data.init_args.source", str(corpus),
            "--data.init_args.tokenizer", "byte", "--data.init_args.block_size", "32",
            "--data.init_args.val_fraction", "0.3", "--data.init_args.val_windows", "8", *extra]


def test_block_size_beyond_the_models_positions_is_one_line(tmp_path, capsys):
    from lit_hc.cli import main

    with pytest.raises(SystemExit):
        main(_finetune_args(tmp_path, "--data.init_args.block_size", "128"))  # the tiny GPT-2 has 64 positions
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lit-hc: error: data.init_args.block_size=128 exceeds the 64 positions of")


def test_finetune_config_fits_through_the_cli(tmp_path):
    """configs/finetune/gpt2-dhc4.yaml with a local tiny GPT-2: HC injected, loss logged, checkpoint written."""
    from lit_hc.cli import cli_main

    cli = cli_main(_finetune_args(tmp_path, "--model.init_args.hc.freeze_beta", "true"))
    assert cli.trainer.global_step == 6
    assert not cli.model.model.transformer.h[0].hc.static_beta.requires_grad  # every HCConfig field reaches HC
    assert sum(isinstance(m, InjectedBlock) for m in cli.model.modules()) == 3
    run = run_dir(tmp_path / "finetune", "dhc4-frozenbeta")  # the folder names what ran
    losses = [v for _, v in sorted(scalars(run)["train/loss"])]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=None, verbose=False)
    assert tested[0]["test/loss"] > 0 and tested[0]["test/ppl"] == pytest.approx(math.exp(tested[0]["test/loss"]), rel=1e-4)


def test_missing_pretrained_model_is_one_line(tmp_path, capsys):
    from lit_hc.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "finetune/gpt2-dhc4.yaml"),
              "--model.init_args.pretrained", str(tmp_path / "no-such-model"), "--data.init_args.tokenizer", "byte"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lit-hc: error: cannot load model") and "save_pretrained" in err
