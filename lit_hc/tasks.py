"""LightningModules: `LanguageModel` (GPT) and `ImageClassifier` (ViT).

The networks are plain nn.Modules from lit_hc; these modules own the loss, metrics, logging and optimizer.
Both take the architecture config as `arch` and the residual variant as `hc`, so one overlay
`configs/hc/<variant>.yaml` (model.init_args.hc) works unchanged for both tasks.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_hc.analysis import connection_matrices, residual_gains, training_flops, unrolled_connections
from lit_hc.gpt import GPT, GPTConfig
from lit_hc.hyper_connections import HCConfig
from lit_hc.optim import param_groups
from lit_hc.plots import connection_matrices_figure, unrolled_connections_figure
from lit_hc.vit import ViT, ViTConfig


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay, stepped every optimizer step."""

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.1
    """Decoupled weight decay on the decay group (see lit_hc.optim: never on static HC parts)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr."""
    min_lr_ratio: float = 0.1
    """The cosine ends at lr * min_lr_ratio on the last step (trainer.max_steps)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"OptimConfig.lr={self.lr} must be > 0")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimConfig.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"OptimConfig.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")

    def build(self, param_groups: list[dict], total_steps: int) -> dict:
        """AdamW over `param_groups` with the warmup + cosine schedule stepped per step, as Lightning wants it
        from configure_optimizers."""
        # foreach: the multi-tensor update, which torch picks by itself only for CUDA tensors; on the CPU it is the
        # same arithmetic per element as the per-tensor loop (bit for bit, tested) in far fewer calls, which counts
        # with HC's many small parameter tensors (eight more per sub-layer for DHC).
        optimizer = torch.optim.AdamW(param_groups, lr=self.lr, betas=self.betas, eps=self.eps, foreach=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def lr_factor(self, step: int, total_steps: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _flat_hparams(**values) -> dict:
    """Plain-data hyperparameters (no classes in checkpoints); `arch` without its hc, which is `hc`'s job."""
    out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in values.items()}
    out["arch"].pop("hc")
    return out


def _as(cls, value):
    """Accept a dataclass or a plain dict (hparams reloaded from a checkpoint are dicts)."""
    return value if isinstance(value, cls) else cls(**value)


def rng_states() -> dict:
    """The global random generators (torch, CUDA, numpy, python), in types `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The accelerator's peak FLOP/s at the training precision (Lightning's table of GPUs); None on CPU."""
    if device.type == "cpu":
        return None
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
    return get_available_flops(device, dtype)


class StageSteps:
    """Lightning's training/validation/test steps as one `step(batch, stage)` with stage 'train', 'val' or 'test'."""

    def step(self, batch, stage: str) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.step(batch, "test")


class HCTask(StageSteps, L.LightningModule):
    """What both tasks share: optimizer and schedule, throughput, connection logging, final hparams."""

    throughput_unit = "samples"

    arch_class: type  # the network's config dataclass (GPTConfig, ViTConfig)
    net_class: type  # the network (GPT, ViT), built from arch_class with the residual variant hc

    def __init__(self, arch, hc: HCConfig, optim: OptimConfig, compile: bool, log_connections_every_n_steps: int,
                 **task_hparams):
        super().__init__()
        arch, hc, optim = _as(self.arch_class, arch), _as(HCConfig, hc), _as(OptimConfig, optim)
        if arch.hc != HCConfig() and arch.hc != hc:  # one variant, whichever of the two places names it
            if hc != HCConfig():
                raise ValueError(f"two residual variants given: hc ({hc.name}) and arch.hc ({arch.hc.name}); set "
                                 "only model.init_args.hc (what configs/hc/<variant>.yaml sets)")
            hc = arch.hc
        self.save_hyperparameters(_flat_hparams(arch=arch, hc=hc, optim=optim, compile=compile,
                                                log_connections_every_n_steps=log_connections_every_n_steps,
                                                **task_hparams), logger=False)
        self.net, self.optim = self.net_class(dataclasses.replace(arch, hc=hc)), optim
        self.log_connections_every_n_steps = log_connections_every_n_steps
        if compile:
            self.net.compile()  # in place: parameter names (and checkpoints) stay those of the eager model
        self._last_batch_end: float | None = None
        self._flops_per_unit, self._peak_flops = 0.0, None
        self._final_metrics: dict[str, float] = {}
        self._rng_states_to_restore: dict | None = None
        self._rng_states_after_step: dict | None = None

    @property
    def hc(self) -> HCConfig:
        return self.net.config.hc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _epoch_end(self, stage: str) -> None:
        """Compute, log and reset the epoch metrics of 'val' or 'test'."""
        raise NotImplementedError

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        groups = param_groups(self.net, self.optim.weight_decay)
        return self.optim.build(groups, self.trainer.estimated_stepping_batches)

    def on_fit_start(self) -> None:
        # Model FLOPs utilisation (HC's extra arithmetic counted, as the papers count overhead) on accelerators whose
        # peak Lightning knows; None on CPU. Not Lightning's ThroughputMonitor: this project's summaries read
        # train/<unit>_per_sec from the event files of every committed run.
        self._flops_per_unit = training_flops(self.net.config, 1)
        self._peak_flops = peak_flops(self.device, str(self.trainer.precision))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_end is not None:  # wall time between batches: data, forward, backward, step
            units = batch[0].numel() if self.throughput_unit == "tokens" else batch[0].shape[0]
            rate = units * self.trainer.world_size / (now - self._last_batch_end)
            self.log(f"train/{self.throughput_unit}_per_sec", rate)
            if self._peak_flops:
                self.log("train/mfu", rate * self._flops_per_unit / (self._peak_flops * self.trainer.world_size))
        self._last_batch_end = now
        every = self.log_connections_every_n_steps
        if every and self.hc.kind != "residual" and self.global_step % every == 0:
            self.log_connections(batch[0][:4])

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    @torch.no_grad()
    def log_connections(self, inputs: torch.Tensor) -> None:
        """The HC matrices (paper Fig. 7/8) as images, and the gain of the residual product over depth."""
        matrices = connection_matrices(self.net, inputs).cpu()
        gains = residual_gains(matrices)
        self.log_dict({"hc/amax_gain_fwd": gains[-1, 0].item(), "hc/amax_gain_bwd": gains[-1, 1].item(),
                       "hc/amax_gain_fwd_max_layer": gains[:, 0].max().item()}, rank_zero_only=True)
        if isinstance(self.logger, TensorBoardLogger) and self.global_rank == 0:
            step, name = self.global_step, self.hc.name
            self.logger.experiment.add_figure("hc/connection_matrices", connection_matrices_figure(matrices, name), step)
            weights = unrolled_connections(matrices)
            self.logger.experiment.add_figure("hc/unrolled_connections", unrolled_connections_figure(weights, name), step)

    # Exact resume of dropout / drop-path: the global generators are snapshotted once a step's forward and backward
    # are done (data loaders have their own generators, so nothing else draws from them between steps), saved with
    # every checkpoint, and restored just before the first step of the resumed run.
    def on_before_optimizer_step(self, optimizer) -> None:
        self._rng_states_after_step = rng_states()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = self._rng_states_after_step or rng_states()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self._rng_states_to_restore is not None:
            set_rng_states(self._rng_states_to_restore)
            self._rng_states_to_restore = None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another architecture or residual variant with one line naming the keys."""
        self._rng_states_to_restore = checkpoint.get("rng_states")
        ours = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
        missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
        shapes = sorted(k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k])
        if missing or unexpected or shapes:
            def some(keys: list[str]) -> str:
                return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

            raise ValueError(
                f"the checkpoint was saved by another architecture or residual variant ({self.hc.name} here): "
                f"{len(missing)} missing keys ({some(missing)}), {len(unexpected)} unexpected ({some(unexpected)}), "
                f"{len(shapes)} with other shapes ({some(shapes)}); resume with the config it was trained with"
            )

    def on_fit_end(self) -> None:
        """Hyperparameters with the final validation metrics (TensorBoard's HParams tab)."""
        if self.logger is not None and self._final_metrics:
            self.logger.log_hyperparams(self.hparams, metrics=self._final_metrics)


class LanguageModel(HCTask):
    """Next-token prediction with a GPT. Metrics: loss, perplexity, tokens/s (train/, val/, test/)."""

    throughput_unit = "tokens"
    arch_class, net_class = GPTConfig, GPT

    def __init__(
        self,
        arch: GPTConfig = GPTConfig(),
        hc: HCConfig = HCConfig(),
        optim: OptimConfig = OptimConfig(),
        compile: bool = False,
        log_connections_every_n_steps: int = 0,
    ):
        """
        Args:
            arch: the GPT architecture; vocab_size and block_size are linked from the data by the CLI.
            hc: the residual variant (set it here, e.g. with configs/hc/<variant>.yaml); arch.hc is used when hc is
                left at its default, and two different variants are an error.
            optim: optimizer and learning-rate schedule.
            compile: torch.compile the network (Lightning cannot compile the LightningModule itself).
            log_connections_every_n_steps: log HC matrices and residual gains this often; 0 = never.
        """
        super().__init__(arch, hc, optim, compile, log_connections_every_n_steps)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch  # (b, t) each
        logits = self.net(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        if stage == "train":
            self.log_dict({"train/loss": loss, "train/ppl": loss.detach().exp()}, prog_bar=True)
        else:
            getattr(self, f"{stage}_loss").update(loss.detach(), weight=y.numel())
        return loss

    def _epoch_end(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_loss")
        loss = metric.compute()  # synchronised over processes
        metric.reset()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/ppl": loss.exp()}, prog_bar=stage == "val")
        if stage == "val" and not self.trainer.sanity_checking:
            self._final_metrics = {"hp/val_loss": loss.item(), "hp/val_ppl": loss.exp().item()}


class ImageClassifier(HCTask):
    """Image classification with a ViT. Metrics: loss, top-1 / top-5 accuracy (micro), images/s."""

    throughput_unit = "images"
    arch_class, net_class = ViTConfig, ViT

    def __init__(
        self,
        arch: ViTConfig = ViTConfig(),
        hc: HCConfig = HCConfig(),
        optim: OptimConfig = OptimConfig(),
        label_smoothing: float = 0.0,
        compile: bool = False,
        log_connections_every_n_steps: int = 0,
    ):
        """
        Args:
            arch: the ViT architecture; num_classes and image_size are linked from the data by the CLI.
            hc: the residual variant (set it here, e.g. with configs/hc/<variant>.yaml); arch.hc is used when hc is
                left at its default, and two different variants are an error.
            optim: optimizer and learning-rate schedule.
            label_smoothing: for hard targets; with Mixup the data module smooths the soft targets instead.
            compile: torch.compile the network.
            log_connections_every_n_steps: log HC matrices and residual gains this often; 0 = never.
        """
        super().__init__(arch, hc, optim, compile, log_connections_every_n_steps, label_smoothing=label_smoothing)
        self.label_smoothing = label_smoothing
        c = self.net.config.num_classes
        self.metrics = nn.ModuleDict({
            stage: nn.ModuleDict({
                "loss": MeanMetric(),
                "acc1": MulticlassAccuracy(c, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(c, top_k=min(5, c), average="micro"),
            }) for stage in ("fit", "val", "test")  # 'fit' for train: ModuleDict cannot hold a key 'train'
        })

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on hard labels (with label smoothing) or on Mixup / CutMix probabilities (b, classes),
        which the data module has already smoothed."""
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing if targets.ndim == 1 else 0.0)

    def step(self, batch, stage: str) -> torch.Tensor:
        images, targets = batch
        logits = self.net(images).float()
        loss = self.loss(logits, targets)
        m = self.metrics["fit" if stage == "train" else stage]
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True)
            if targets.ndim == 1:
                self.log_dict({"train/acc1": m["acc1"](logits, targets), "train/acc5": m["acc5"](logits, targets)})
        else:
            m["loss"].update(loss.detach(), weight=targets.shape[0])
            m["acc1"].update(logits, targets)
            m["acc5"].update(logits, targets)
        return loss

    def _epoch_end(self, stage: str) -> None:
        values = {f"{stage}/{name}": metric.compute() for name, metric in self.metrics[stage].items()}
        for metric in self.metrics[stage].values():
            metric.reset()
        self.log_dict(values, prog_bar=stage == "val")
        if stage == "val" and not self.trainer.sanity_checking:
            self._final_metrics = {"hp/val_loss": values["val/loss"].item(), "hp/val_acc1": values["val/acc1"].item(),
                                   "hp/val_acc5": values["val/acc5"].item()}
