"""Shared helpers for the tests that run the real CLI."""
from __future__ import annotations

import glob
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

TOY_TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen liquor jugs.\n"


def write_toy_corpus(folder: Path, files: int = 12) -> Path:
    """A learnable corpus: a repeated pair of sentences, in several files so both splits get some."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"doc{i:02d}.txt").write_text(TOY_TEXT * 40)
    return folder


def write_toy_images(root: Path, train: int = 32, val: int = 8, size: int = 16) -> Path:
    """A learnable ImageFolder toy in ImageNet layout: dark vs bright noisy images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label, (lo, hi) in (("bright", (150, 255)), ("dark", (0, 105))):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = rng.integers(lo, hi, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


def lm_args(runs: Path, corpus: Path, steps: int = 30, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(CONFIGS / "lm/base.yaml"),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(max(1, steps // 2)),
        "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false",
        "--model.init_args.arch.n_layer", "2", "--model.init_args.arch.n_embd", "32",
        "--model.init_args.arch.n_head", "2", "--model.init_args.optim.warmup_steps", "5",
        "--model.init_args.optim.lr", "0.01",
        "--data.init_args.source", str(corpus), "--data.init_args.block_size", "32",
        "--data.init_args.batch_size", "8", "--data.init_args.val_fraction", "0.3", "--data.init_args.val_windows", "8",
        *extra,  # last, so a test's arguments win over the defaults above
    ]


def vit_args(runs: Path, steps: int = 30, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(CONFIGS / "vit/base.yaml"),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(max(1, steps // 2)),
        "--trainer.logger.init_args.save_dir", str(runs), "--trainer.enable_progress_bar", "false",
        "--model.init_args.arch.dim", "32", "--model.init_args.arch.depth", "2", "--model.init_args.arch.heads", "2",
        "--model.init_args.arch.patch_size", "4", "--model.init_args.optim.warmup_steps", "5",
        "--data.init_args.image_size", "16", "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "0",
        "--data.init_args.synthetic_train_per_class", "24", "--data.init_args.synthetic_val_per_class", "4",
        *extra,
    ]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard event files: tag -> [(step, value), ...]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(str(run_dir / "events.out.tfevents.*"))):
        ea = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return out


def images(run_dir: Path) -> set[str]:
    tags: set[str] = set()
    for path in glob.glob(str(run_dir / "events.out.tfevents.*")):
        ea = EventAccumulator(path, size_guidance={"images": 0})
        ea.Reload()
        tags.update(ea.Tags()["images"])
    return tags


class StopAtStep(Callback):
    """Ends fit() after `step` optimizer steps, like an interruption (tests only)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True



class FailAtStep(Callback):
    """Raises after `step` optimizer steps, like a crash in the middle of training (tests only)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated failure at step {trainer.global_step}")


class PoisonOutputAtStep(Callback):
    """Makes the network's output NaN during training step `step` (a hand-made numerical failure; tests only)."""

    def __init__(self, step: int):
        self.step = step

    def on_fit_start(self, trainer, pl_module) -> None:
        def poison(module, args, output):
            return output * float("nan") if module.training and trainer.global_step == self.step else output

        pl_module.net.register_forward_hook(poison)


class SignalAtStep(Callback):
    """Sends a real signal (SIGTERM, SIGINT) to this process after `step` optimizer steps (tests only)."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), getattr(signal, self.signal))


class DieAtStep(Callback):
    """Kills this process without any clean-up at step `step` on rank `rank`: a node dying (tests only)."""

    def __init__(self, step: int, rank: int = 1):
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            import os

            os._exit(9)


def run_dir(parent: Path, variant: str, seed: int = 0) -> Path:
    """The one run folder `lit-hc fit` made under parent for this variant and seed: <variant>-s<seed>-<hash>."""
    found = sorted(p for p in parent.glob(f"{variant}-s{seed}-*") if p.is_dir())
    assert len(found) == 1, f"expected one run folder {variant}-s{seed}-* in {parent}, found {found}"
    return found[0]


def assert_compiles_like_eager(module: torch.nn.Module, H: torch.Tensor) -> None:
    """torch.compile(fullgraph=True) of module (a graph break is an error) gives eager's output and gradients."""
    compiled = torch.compile(module, fullgraph=True, backend="inductor")
    out, ref = compiled(H), module(H)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    params = [H, *module.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
