"""Text data: the Python standard library's own source (embedded default), any folder of text files, or
pre-tokenized nanoGPT-style shards (`train.bin` / `val.bin` + `meta.json`), with a byte-level tokenizer.

Train batches are random windows: window i starts at an offset drawn from a generator seeded by (seed, i),
so the data order depends only on the seed and the step, not on workers, resumption or the number of
processes (DDP splits indices, so 1 process x batch 2B and 2 processes x batch B see the same windows).
Validation uses fixed, evenly spaced windows.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_hc.data import stateful_loader
from lit_hc.data.prepare import TEXT_SUFFIXES, is_val, list_text_files, stdlib_root
from lit_hc.data.tokenizers import TOKENIZERS, ShardVocabulary, Tokenizer, get_tokenizer, padded_vocab_size

def split_files(root: Path, val_fraction: float) -> tuple[list[Path], list[Path]]:
    files = list_text_files(root)
    val = [f for f in files if is_val(f.relative_to(root).as_posix(), val_fraction)]
    val_set = set(val)
    return [f for f in files if f not in val_set], val


def encode_files(files: list[Path], tokenizer: Tokenizer) -> np.ndarray:
    """All files as one token array, each file followed by the tokenizer's separator."""
    parts = [tokenizer.encode(f.read_bytes().decode("utf-8", errors="replace")) for f in files]
    sep = np.asarray(tokenizer.separator, dtype=tokenizer.dtype)
    return np.concatenate([np.concatenate([p, sep]) for p in parts]) if parts else np.zeros(0, tokenizer.dtype)


class RandomWindows(Dataset):
    """Window i = tokens[o : o + block_size + 1] with o drawn from default_rng((seed, i)); (x, y) shifted by one."""

    def __init__(self, tokens: np.ndarray, block_size: int, num_samples: int, seed: int):
        self.tokens, self.block_size, self.num_samples, self.seed = tokens, block_size, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o = int(np.random.default_rng((self.seed, i)).integers(0, len(self.tokens) - self.block_size - 1))
        return _window(self.tokens, o, self.block_size)


class FixedWindows(Dataset):
    """At most max_windows evenly spaced, non-overlapping windows: the same validation set every time."""

    def __init__(self, tokens: np.ndarray, block_size: int, max_windows: int):
        count = min(max_windows, (len(tokens) - 1) // block_size)
        stride = (len(tokens) - 1) // count // block_size * block_size
        self.tokens, self.block_size, self.offsets = tokens, block_size, [k * stride for k in range(count)]

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _window(self.tokens, self.offsets[i], self.block_size)


def _window(tokens: np.ndarray, offset: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = torch.from_numpy(tokens[offset : offset + block_size + 1].astype(np.int64))
    return chunk[:-1], chunk[1:]


class TextDataModule(L.LightningDataModule):
    """Next-token prediction windows from a text corpus."""

    def __init__(
        self,
        source: str | None = "stdlib",
        tokenizer: str = "byte",
        block_size: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        val_windows: int = 256,
        samples_per_epoch: int = 1_000_000,
        seed: int = 0,
    ):
        """
        Args:
            source: 'stdlib' (the running interpreter's standard-library .py files, ~30 MB, no download), a
                folder of .txt/.py/.md files, or a folder with train.bin/val.bin written by `lit-hc prepare`.
                null = required but not given (paper-scale configs): the run stops and says so.
            tokenizer: 'byte' (vocab 256, no files needed) or 'gpt2' (tiktoken BPE; needs the package and its
                encoding file in TIKTOKEN_CACHE_DIR, since nothing is downloaded at run time).
            block_size: tokens per training window (linked to the model's block_size by the CLI).
            batch_size: windows per batch per process.
            num_workers: data-loader worker processes.
            val_fraction: share of files (by a hash of their path) held out for validation.
            val_windows: at most this many fixed validation windows.
            samples_per_epoch: length of one epoch of random training windows; training is bounded by
                trainer.max_steps, so the default is effectively an endless stream.
            seed: seed of the window offsets (the data order).
        """
        super().__init__()
        self.save_hyperparameters()
        self.source, self.block_size, self.batch_size, self.num_workers = source, block_size, batch_size, num_workers
        self.val_fraction, self.val_windows, self.samples_per_epoch, self.seed = (
            val_fraction, val_windows, samples_per_epoch, seed)
        if not 0 < val_fraction < 1:
            raise ValueError(f"TextDataModule.val_fraction={val_fraction} must be in (0, 1)")
        if source is None:
            raise ValueError("data.init_args.source is required by this config: pass --data.init_args.source with a "
                             "folder made by `lit-hc prepare` (train.bin/val.bin) or a folder of text files")
        self.root = stdlib_root() if source == "stdlib" else Path(source).expanduser()
        self.train_tokens = self.val_tokens = None
        # Nothing is read here (the CLI builds data modules for --help and --print_config too): the folder is
        # looked at when the model's vocab_size is linked from it (after instantiation) or at setup.

    @functools.cached_property
    def meta(self) -> dict:
        """meta.json of a folder made by `lit-hc prepare` (read once); {} for a folder of text files."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"text source {self.root} is not a folder: pass data.source=stdlib, a folder of "
                                    f"{'/'.join(TEXT_SUFFIXES)} files, or a folder made by `lit-hc prepare`")
        if not self.shards:
            return {}
        if not (self.root / "meta.json").is_file():
            raise ValueError(f"{self.root} has train.bin but no meta.json: an interrupted `lit-hc prepare`; run it "
                             "again with the same arguments")
        return json.loads((self.root / "meta.json").read_text())

    @property
    def shards(self) -> bool:
        return (self.root / "train.bin").is_file()

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        name = self.meta.get("tokenizer", self.hparams.tokenizer)
        # shards of a Hugging Face tokenizer train without it: meta.json says all that training needs
        return ShardVocabulary(self.meta) if self.meta and name not in TOKENIZERS else get_tokenizer(name)

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the tokenizer's (or the shards'), padded to a multiple of 64."""
        return padded_vocab_size(self.meta.get("vocab_size", self.tokenizer.vocab_size))

    def setup(self, stage: str | None = None) -> None:
        if self.train_tokens is not None:
            return
        if self.meta:
            self.train_tokens, self.val_tokens = (
                load_shard(self.root / f"{split}.bin", self.tokenizer.dtype, self.meta, split, self.tokenizer.vocab_size)
                for split in ("train", "val"))
        else:
            train_files, val_files = split_files(self.root, self.val_fraction)
            if not train_files and not val_files:
                raise ValueError(f"text source {self.root} has no {'/'.join(TEXT_SUFFIXES)} files: point data.source "
                                 "at a folder with text in it")
            if not val_files or not train_files:
                raise ValueError(f"text source {self.root} has {len(train_files)} train and {len(val_files)} val "
                                 f"files with val_fraction={self.val_fraction}: add files or change val_fraction")
            self.train_tokens = encode_files(train_files, self.tokenizer)
            self.val_tokens = encode_files(val_files, self.tokenizer)
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(tokens) <= self.block_size + 1:
                raise ValueError(f"{split} split of {self.root} has {len(tokens)} tokens, fewer than block_size + 2 = "
                                 f"{self.block_size + 2}: add text or lower data.block_size")

    def train_dataloader(self) -> DataLoader:
        windows = RandomWindows(self.train_tokens, self.block_size, self.samples_per_epoch, self.seed)
        # Under DDP, rank r takes windows r, r+W, r+2W, ... so W processes x batch B read exactly the windows one
        # process x batch W*B reads. Lightning would inject a *shuffling* DistributedSampler for any training
        # loader; it leaves one that is already a DistributedSampler alone.
        trainer = self.trainer
        sampler = (DistributedSampler(windows, trainer.world_size, trainer.global_rank, shuffle=False)
                   if trainer is not None and trainer.world_size > 1 else None)
        # Own generators: creating an iterator then does not draw from the global one that dropout uses.
        return stateful_loader(windows, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                               drop_last=True, persistent_workers=self.num_workers > 0,
                               generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        windows = FixedWindows(self.val_tokens, self.block_size, self.val_windows)
        return DataLoader(windows, batch_size=self.batch_size, num_workers=self.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def load_shard(path: Path, dtype: np.dtype, meta: dict | None = None, split: str = "train",
               vocab_size: int | None = None) -> np.ndarray:
    """A token shard as a read-only memmap, checked against the meta.json written beside it by `lit-hc prepare`."""
    if not path.is_file():
        raise FileNotFoundError(f"missing shard {path}: write both train.bin and val.bin with `lit-hc prepare`")
    dtype, meta, fix = np.dtype(dtype), meta or {}, "rewrite the shards with `lit-hc prepare`"
    if "dtype" in meta and np.dtype(meta["dtype"]) != dtype:
        raise ValueError(f"{path.parent}/meta.json says the shards are {meta['dtype']}, but the {meta.get('tokenizer')} "
                         f"tokenizer writes {dtype}: {fix}")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"shard {path} has {size} bytes, not a multiple of {dtype.itemsize} ({dtype}): "
                         f"it was written with another dtype; {fix}")
    expected = meta.get(f"{split}_tokens")
    if expected is not None and size // dtype.itemsize != expected:
        raise ValueError(f"shard {path} holds {size // dtype.itemsize:,} tokens but meta.json says {expected:,}: it was "
                         f"cut short or replaced; {fix}")
    tokens = np.memmap(path, dtype=dtype, mode="r")
    head = tokens[: 1 << 20]  # a cheap look at the start catches a shard written with another tokenizer
    if vocab_size is not None and len(head) and int(head.max()) >= vocab_size:
        raise ValueError(f"shard {path} has token id {int(head.max())}, outside the {meta.get('tokenizer')} vocabulary "
                         f"of {vocab_size}: {fix}")
    return tokens
