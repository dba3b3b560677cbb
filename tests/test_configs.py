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
