"""The `lit-hc` command: LightningCLI (fit / validate / test / predict) plus `lit-hc prepare`.

    lit-hc fit --config configs/lm/base.yaml --config configs/hc/dhc4.yaml
    lit-hc prepare --source stdlib --out data/stdlib-byte

Configs compose by repeating --config (the last one wins). The data module's vocab_size / block_size
(text) or num_classes / image_size (images) are linked into the model's `arch`, and each run is logged to
<save_dir>/<task>/<variant>-s<seed>-<hash of its settings> with its full config.yaml, TensorBoard events and
checkpoints, so runs that differ in anything (learning rate, depth, budget) never share a folder.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_hc.callbacks import CheckpointOnException, stop_message  # noqa: F401  (CheckpointOnException: old configs)
from lit_hc.checkpoint_io import AtomicCheckpointIO, CheckpointError
from lit_hc.hyper_connections import HCConfig
from lit_hc.io import write_atomic
from lit_hc.lightning_compat import KeepGivenConfigOnResume

TASK_NAMES = {"LanguageModel": "lm", "ImageClassifier": "vit"}
LINKED = ("vocab_size", "block_size", "num_classes", "image_size")  # data module attribute -> model arch field


# The callbacks every run gets unless its config says otherwise: the default of `trainer.callbacks`, so a config
# adds its own (a ModelCheckpoint with its monitor) with `callbacks+:` and replaces the whole list with `callbacks:`
# (a config that names its callbacks gets exactly those). Not LightningCLI's `trainer_defaults`: callbacks given
# there are added to every run and no config can remove them, which would change what a run that lists only a
# ModelCheckpoint keeps after a crash.
DEFAULT_CALLBACKS = (
    {"class_path": "lit_hc.callbacks.CheckpointOnException"},
    {"class_path": "lit_hc.callbacks.NonFiniteGuard", "init_args": {"action": "stop"}},
    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
)


class HCCLI(KeepGivenConfigOnResume, LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Each link applies only when the chosen data module has the attribute (text or images).
        for name in LINKED:
            parser.link_arguments(f"data.{name}", f"model.init_args.arch.{name}", apply_on="instantiate")
        parser.set_defaults({"trainer.callbacks": [dict(cb) for cb in DEFAULT_CALLBACKS]})

    def before_instantiate_classes(self) -> None:
        """Name the TensorBoard run after the task, the variant, the seed and the configuration (lm/dhc4-s0-1a2b3c4d),
        and refuse a folder that holds a run of another configuration."""
        config = self.config.get(self.subcommand, self.config)
        logger = config.trainer.get("logger")
        if not (hasattr(logger, "init_args") and logger.class_path.endswith("TensorBoardLogger")):
            return
        init = logger.init_args
        model_class = config.model.class_path.rsplit(".", 1)[-1]
        if init.get("name") in (None, "lightning_logs"):
            init.name = TASK_NAMES.get(model_class, model_class)
        settings = run_settings(config)
        if init.get("version") is None:
            hc = config.model.init_args.get("hc")
            variant = HCConfig(**vars(hc)).name if hc is not None else "residual"
            init.version = f"{variant}-s{config.seed_everything}-{fingerprint(settings)}"
        claim_run_folder(Path(init.save_dir) / init.name / str(init.version), settings)


    def instantiate_trainer(self, **kwargs):
        """Every trainer writes checkpoints atomically (AtomicCheckpointIO) unless the config names another
        CheckpointIO plugin."""
        config = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
        plugins = config["trainer"].get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(**kwargs, plugins=plugins)

    def before_fit(self) -> None:
        """`--ckpt_path last` with no checkpoint in the run folder: say in one line that the run starts fresh."""
        config = self.config_init[self.subcommand]
        folder = Path(self.trainer.log_dir or ".") / "checkpoints"
        if config.get("ckpt_path") == "last" and not any(folder.glob("*.ckpt")):
            print(f"lit-hc: --ckpt_path last: no checkpoint in {folder} yet; starting fresh", file=sys.stderr)
            config["ckpt_path"] = None


# Settings that do not change what a run computes: where and how often it logs and checkpoints, and how many
# devices share it (the data order and the batch do not depend on them). Everything else names the run.
NOT_IN_NAME = ("config", "ckpt_path", "trainer.logger", "trainer.callbacks", "trainer.enable_progress_bar",
               "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.accelerator",
               "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.default_root_dir")


def run_settings(config) -> dict:
    """The settings that define a run, as plain sorted JSON-able data."""
    flat = {k: v for k, v in config.clone().as_flat().__dict__.items()
            if not any(k == skip or k.startswith(skip + ".") for skip in NOT_IN_NAME)}
    return json.loads(json.dumps(dict(sorted(flat.items())), default=str))


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def claim_run_folder(folder: Path, settings: dict) -> None:
    """Record the run's settings in its folder (run_settings.json), or refuse the folder in one line when it holds
    a run of other settings: two configurations never merge their events and checkpoints."""
    path = folder / "run_settings.json"
    if path.is_file():
        theirs = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | theirs.keys() if settings.get(k) != theirs.get(k))
        if changed:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {settings.get(k)!r} now" for k in changed[:3])
            raise ValueError(f"run folder {folder} holds a run of another configuration ({shown}"
                             f"{', ...' if len(changed) > 3 else ''}): leave trainer.logger.init_args.version unset "
                             "(each configuration gets its own folder) or choose another version")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(settings, indent=1) + "\n")


def prepare_main(argv: list[str]) -> None:
    from lit_hc.data.prepare import prepare_shards

    parser = argparse.ArgumentParser(
        prog="lit-hc prepare", description="Tokenize documents (text folders, .jsonl(.gz), .parquet, a saved Hugging "
        "Face dataset) into nanoGPT-style train.bin / val.bin shards for TextDataModule(source=OUT). Resumable: run "
        "the same command again after an interruption.")
    parser.add_argument("--source", default="stdlib", help="'stdlib', a folder or file of text / .jsonl(.gz/.zst) / "
                        ".parquet, a folder written by datasets' save_to_disk, or a Hugging Face dataset name "
                        "(owner/name[/folder]) already in the local hub cache")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tokenizer", default="byte", help="'byte', 'gpt2' (tiktoken), or a Hugging Face tokenizer: "
                        "a tokenizer.json, a folder with one, or a name in the local Hugging Face cache")
    parser.add_argument("--val_fraction", type=float, default=0.05)
    parser.add_argument("--text_field", default="text", help="the text column of .jsonl / .parquet / datasets")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    args = parser.parse_args(argv)
    workers = args.workers or os.cpu_count() or 1
    meta = prepare_shards(args.source, args.out, args.tokenizer, args.val_fraction, args.text_field, workers,
                          progress=sys.stderr.isatty())
    reused = f", {meta['reused_chunks']} chunks reused from an interrupted run" if meta["reused_chunks"] else ""
    print(f"wrote {args.out}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']}, {meta['dtype']}) in {meta['seconds']:.1f} s, {meta['docs_per_s']:,.0f} documents/s, "
          f"{meta['tokens_per_s']:,.0f} tokens/s{reused}")


def cli_main(args: list[str] | None = None) -> HCCLI:
    """The LightningCLI; args=None reads sys.argv."""
    return HCCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},  # reruns of the same name replace their config.yaml
        parser_kwargs={"exit_on_error": False},  # parse errors raise, so main() prints them as one line
        args=args,
    )


BAD_INPUT = (ValueError, FileNotFoundError, ArgumentError)


def root_cause(error: BaseException) -> BaseException:
    """jsonargparse wraps errors raised while instantiating classes; the innermost one says what is wrong."""
    while isinstance(error.__cause__, BAD_INPUT):
        error = error.__cause__
    return error


def one_line(message: str) -> str:
    """jsonargparse explains a bad value over many lines (every subtype it tried); keep what names the problem."""
    noise = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:")
    kept = []
    for line in (raw.strip().lstrip("- ") for raw in message.strip().splitlines()):
        if line.startswith(("Expected a <class 'NoneType'>", "Given value")):
            break
        if line and not line.startswith(noise):
            kept.append(line)
    return " ".join(kept) or message


def describe(error: BaseException) -> str:
    """One line for a bad-input error, however deeply jsonargparse wrapped it."""
    cause = root_cause(error)
    message = str(cause)
    if "Original Traceback" in message:  # re-raised from a data-loader worker: its last line is the error
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return one_line(message) or type(cause).__name__


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args and args[0] == "prepare":
            prepare_main(args[1:])
        else:
            cli_main(argv)
    except SIGTERMException as e:  # pre-empted or Ctrl-C: the state of the last finished step is in last.ckpt
        message, code = stop_message(e)
        print(f"lit-hc: {message}", file=sys.stderr)
        sys.exit(code)
    except CheckpointError as e:  # a checkpoint that cannot be written (full disk) or read (corrupt)
        print(f"lit-hc: error: {e}", file=sys.stderr)
        sys.exit(1)
    except BAD_INPUT as e:  # bad input: one line that says what to fix, no traceback
        print(f"lit-hc: error: {describe(e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
