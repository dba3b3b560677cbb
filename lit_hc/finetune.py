"""Fine-tune a pretrained Hugging Face causal LM with hyper-connections injected (`lit_hc.hf.inject_hc`), through
Lightning and the CLI on TextDataModule batches:

    lit-hc fit --config configs/finetune/gpt2-dhc4.yaml [--model.init_args.pretrained /models/gpt2]

Needs the `hf` extra. Nothing is downloaded: `pretrained` is a folder written by save_pretrained or a name in the
local Hugging Face cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F

from lit_hc.hf import find_block_class, hc_param_groups, inject_hc
from lit_hc.hyper_connections import HCConfig
from lit_hc.tasks import OptimConfig, StageSteps, _as


@dataclass
class TextShape:
    """What a text data module feeds: linked by the CLI from the data module (as for GPT's arch)."""

    vocab_size: int | None = None
    block_size: int | None = None


class HFCausalLM(StageSteps, L.LightningModule):
    """A Hugging Face causal LM with the residual variant `hc` injected around its blocks."""

    def __init__(
        self,
        pretrained: str,
        hc: HCConfig = HCConfig(kind="hc", expansion_rate=4),
        target_class_name: str | None = None,
        epsilon: float | None = None,
        recompute: bool = False,
        hc_lr_multiplier: float = 1.0,
        optim: OptimConfig = OptimConfig(lr=5e-5, weight_decay=0.01, warmup_steps=50),
        lora_rank: int = 0,
        lora_target_modules: list[str] | None = None,
        local_files_only: bool = True,
        arch: TextShape = TextShape(),
    ):
        """
        Args:
            pretrained: a model name in the local Hugging Face cache, or a folder written by save_pretrained.
            hc: the residual variant to inject, every field honoured (kind 'hc' or 'mhc', expansion_rate, dynamic,
                use_tanh, freeze_width, freeze_beta, sinkhorn_iters); kind 'residual' fine-tunes the unchanged
                model (the baseline). output_init_scale must stay 'auto' (pretrained projections are not rescaled).
            target_class_name: the block class to wrap; None = the model's most repeated block class.
            epsilon: initial cross-stream mixing of the residual matrix (see inject_hc).
            recompute: recompute the stream mixing in backward (less memory, a little more time).
            hc_lr_multiplier: learning rate of the HC parameters relative to optim.lr.
            optim: AdamW and its warmup + cosine schedule.
            lora_rank: > 0 adds peft LoRA adapters of this rank (the base weights are frozen; HC on top).
            lora_target_modules: module names for LoRA (peft's defaults per model family when None).
            local_files_only: never download (the default here); a missing model is a one-line error.
            arch: the data's vocab_size (padded) and block_size, linked from the data module by the CLI; a block
                size beyond the model's positions is refused here, a tokenizer beyond its embeddings at setup.
        """
        super().__init__()
        self.save_hyperparameters()
        hc, optim, shape = _as(HCConfig, hc), _as(OptimConfig, optim), _as(TextShape, arch)
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(pretrained, local_files_only=local_files_only)
        except OSError as e:
            raise FileNotFoundError(
                f"cannot load model {pretrained!r} from local files ({str(e).splitlines()[0]}): pass a folder "
                f"written by save_pretrained, or fetch it once with `huggingface-cli download {pretrained}`"
            ) from None
        positions = getattr(model.config, "max_position_embeddings", None)
        if shape.block_size is not None and positions is not None and shape.block_size > positions:
            raise ValueError(f"data.init_args.block_size={shape.block_size} exceeds the {positions} positions of "
                             f"{pretrained}: lower it")
        if lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank,
                                                     target_modules=lora_target_modules))
        self.block_class = target_class_name or find_block_class(model)
        if hc.kind != "residual":
            inject_hc(model, self.block_class, hc=hc, epsilon=epsilon, recompute=recompute)
        elif hc.output_init_scale not in ("auto", "none"):
            raise ValueError(f"HCConfig.output_init_scale={hc.output_init_scale!r} would rescale pretrained output "
                             "projections: leave it 'auto'")
        self.model, self.optim, self.hc = model.train(), optim, hc  # from_pretrained returns eval mode

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def setup(self, stage: str) -> None:
        tokenizer = getattr(getattr(self.trainer, "datamodule", None), "tokenizer", None)
        vocab = self.model.get_input_embeddings().num_embeddings
        if tokenizer is not None and tokenizer.vocab_size > vocab:
            raise ValueError(f"the data's {type(tokenizer).__name__} has {tokenizer.vocab_size} token ids but "
                             f"{self.hparams.pretrained} embeds {vocab}: use the model's tokenizer "
                             "(data.init_args.tokenizer gpt2 for GPT-2)")

    def step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x).flatten(0, 1).float(), y.flatten())
        self.log(f"{stage}/loss", loss, prog_bar=stage != "train", sync_dist=stage != "train")
        if stage != "train":
            self.log(f"{stage}/ppl", torch.exp(loss), sync_dist=True)
        return loss

    def configure_optimizers(self):
        groups = hc_param_groups(self.model, self.optim.lr, self.optim.weight_decay, self.hparams.hc_lr_multiplier)
        return self.optim.build(groups, self.trainer.estimated_stepping_batches)
