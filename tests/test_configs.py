"""Every YAML in configs/ parses through the CLI; the paper-scale recipes build the paper's models."""
import dataclasses

import pytest
import torch
import yaml

from helpers import CONFIGS
from lit_hc import GPT, GPTConfig, HCConfig, ViT, ViTConfig
from lit_hc.analysis import count_parameters
from lit_hc.cli import cli_main
from lit_hc.data.tokenizers import TOKENIZERS, padded_vocab_size

BASES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml") if p.parent.name in ("lm", "vit"))
OVERLAYS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml") if p.parent.name in ("hc", "trainer"))


def print_config(capsys, *files: str) -> dict:
    args = ["fit"] + [a for f in files for a in ("--config", str(CONFIGS / f))] + ["--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_yaml_is_covered():
    finetune = {"finetune/gpt2-dhc4.yaml"}  # fit through the CLI in tests/test_hf.py
    assert set(BASES) | set(OVERLAYS) | finetune == {str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")}
    assert {"lm/base.yaml", "vit/base.yaml", "lm/olmo-1b.yaml", "vit/vit-b16.yaml"} <= set(BASES)
    assert {f"hc/{v}.yaml" for v in ("residual", "shc2", "shc4", "dhc1", "dhc2", "dhc4", "dhc8", "dhc4-notanh",
                                     "mhc4")} <= set(OVERLAYS)


@pytest.mark.parametrize("base", BASES)
def test_base_configs_parse(capsys, base):
    config = print_config(capsys, base)
    assert config["model"]["init_args"]["hc"]["kind"] == "residual"  # bases are the baseline
    assert config["seed_everything"] == 0
    # the CLI's default callbacks, then the base's own checkpointing (`callbacks+:` adds to the defaults)
    callbacks = [cb["class_path"].rsplit(".", 1)[-1] for cb in config["trainer"]["callbacks"]]
    assert callbacks == ["CheckpointOnException", "NonFiniteGuard", "LearningRateMonitor", "ModelCheckpoint"]
    assert config["trainer"]["callbacks"][1]["init_args"]["action"] == "stop"


def test_a_config_that_lists_callbacks_gets_exactly_those(capsys, tmp_path):
    only = tmp_path / "only-checkpoint.yaml"
    only.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"every_n_train_steps": 1}}]}}))
    config = print_config(capsys, "lm/base.yaml", str(only))  # an absolute path: CONFIGS / it is it
    assert [cb["class_path"] for cb in config["trainer"]["callbacks"]] == ["lightning.pytorch.callbacks.ModelCheckpoint"]
    assert config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("base", ["lm/base.yaml", "vit/base.yaml"])
def test_overlays_compose_with_both_bases(capsys, base, overlay):
    config = print_config(capsys, base, overlay)
    overlay_values = yaml.safe_load((CONFIGS / overlay).read_text())
    if overlay.startswith("hc/"):
        hc = config["model"]["init_args"]["hc"]
        assert hc.items() >= overlay_values["model"]["init_args"]["hc"].items()
        HCConfig(**hc)  # valid
    else:
        assert _contains(config["trainer"], overlay_values["trainer"])


def _contains(actual, expected) -> bool:
    """Every value the overlay sets is in the resolved config (nested init_args may have more keys)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(_contains(actual.get(k), v) for k, v in expected.items())
    return str(actual) == str(expected)


def _arch(config: dict) -> dict:
    arch = dict(config["model"]["init_args"]["arch"])
    arch.pop("hc", None)
    return arch


def test_olmo_1b_recipe_builds_the_paper_model(capsys):
    config = print_config(capsys, "lm/olmo-1b.yaml")
    data = config["data"]["init_args"]
    vocab = padded_vocab_size(TOKENIZERS[data["tokenizer"]].vocab_size)  # what the data module links
    arch = GPTConfig(**{**_arch(config), "vocab_size": vocab, "block_size": data["block_size"]})
    assert (vocab, arch.n_embd, arch.n_layer, arch.n_head, arch.mlp, arch.pos_emb) == (50304, 2048, 16, 16, "swiglu", "rope")
    with torch.device("meta"):
        total = count_parameters(GPT(arch))["total"]
        dhc4 = count_parameters(GPT(dataclasses.replace(arch, hc=HCConfig("hc", 4))))["total"]
    assert total == pytest.approx(1.18e9, rel=0.02)
    assert dhc4 - total == 394_048  # paper App. B
    trainer = config["trainer"]
    assert trainer["precision"] == "bf16-mixed" and trainer["gradient_clip_val"] == 1.0
    assert config["model"]["init_args"]["optim"]["lr"] == 4e-4 and data["source"] is None  # the path is required


def test_vit_b16_recipe_builds_vit_base(capsys):
    config = print_config(capsys, "vit/vit-b16.yaml")
    data = config["data"]["init_args"]
    arch = ViTConfig(**{**_arch(config), "image_size": data["image_size"], "num_classes": 1000})
    with torch.device("meta"):
        total = count_parameters(ViT(arch))["total"]
    assert total == pytest.approx(86.6e6, rel=0.01)  # ViT-B/16: 86.6M
    assert data["mixup"] == 0.2 and config["model"]["init_args"]["optim"]["weight_decay"] == 0.3
    assert data["root"] is None


def test_gpt2_small_recipe_builds_gpt2_and_costs_what_its_comment_says(capsys):
    from experiments.grids import GPU_HOURS
    from lit_hc.analysis import gpu_hours, training_flops

    config = print_config(capsys, "lm/gpt2-small.yaml")
    data, trainer = config["data"]["init_args"], config["trainer"]
    vocab = padded_vocab_size(TOKENIZERS[data["tokenizer"]].vocab_size)
    arch = GPTConfig(**{**_arch(config), "vocab_size": vocab, "block_size": data["block_size"]})
    with torch.device("meta"):
        total = count_parameters(GPT(arch))["total"]
    # wte 50304 x 768 + wpe 1024 x 768 + 12 blocks x (12 d^2 + two norm gains) + the final norm; no biases
    assert total == 50304 * 768 + 1024 * 768 + 12 * (12 * 768**2 + 2 * 768) + 768 == 124_373_760
    tokens_per_step = 8 * data["batch_size"] * trainer["accumulate_grad_batches"] * data["block_size"]  # 8 GPUs
    assert tokens_per_step == 524_288 and trainer["max_steps"] * tokens_per_step == pytest.approx(10e9, rel=1e-3)
    flops = training_flops(arch, trainer["max_steps"] * tokens_per_step)
    assert flops == pytest.approx(8.55e18, rel=0.01) and round(gpu_hours(flops)) == GPU_HOURS["mid"]["lm"] == 6
    dhc4 = training_flops(dataclasses.replace(arch, hc=HCConfig("hc", 4)), trainer["max_steps"] * tokens_per_step)
    assert dhc4 / flops - 1 == pytest.approx(0.0075, abs=0.001)  # the comment's +0.8%
    optim = config["model"]["init_args"]["optim"]
    assert (optim["lr"], optim["warmup_steps"], optim["min_lr_ratio"]) == (6e-4, 1907, 0.1) and data["source"] is None


def test_gpu_grids_carry_no_cpu_knobs():
    """The GPU recipes hold their own depth, width and LR: the CPU studies' knobs never reach them."""
    from experiments.grids import studies
    from experiments.reproduce import cli_args

    (mid,) = studies("main", ["lm", "vit"], scale="mid")  # no mid-scale ViT recipe
    assert [r.name for r in mid.runs] == ["residual-s0", "dhc4-s0", "residual-s1", "dhc4-s1", "residual-s2", "dhc4-s2"]
    for scale, study in (("mid", mid), ("paper", studies("main", ["lm"], scale="paper")[0])):
        args = cli_args(study.runs[0], study, scale, False, CONFIGS.parent / "results", "/data/shards")
        assert not any(a.startswith("--model.init_args.arch") or a.endswith("optim.lr") for a in args), args
        assert "--trainer.max_steps" not in args
    with pytest.raises(ValueError, match="runs the main grid only"):
        studies("depth", ["lm"], scale="mid")
