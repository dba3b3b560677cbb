"""Checkpoints that survive a kill at any moment, a full disk and a corrupt file.

Lightning's TorchCheckpointIO writes the file in place (through fsspec, after serialising to memory): a SIGKILL,
an OOM kill or a power loss in the middle leaves a truncated last.ckpt, and `--ckpt_path last` then fails deep in
the unpickler. AtomicCheckpointIO writes a temporary sibling, fsyncs it, renames it over the old file and fsyncs
the folder, so the file under the final name is always a whole checkpoint, old or new. The CLI puts it into every
trainer (HCCLI.instantiate_trainer), DDP included (only rank 0 writes).
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_hc.io import write_atomic_with


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message is one line that says what to do."""


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a checkpoint dict (what dominates its size on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary sibling + fsync + rename; full disk and unreadable files as one-line errors."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # object storage: fsspec's transaction is what that storage offers
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            write_atomic_with(path, lambda f: torch.save(checkpoint, f))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            free = shutil.disk_usage(path.parent).free
            raise CheckpointError(
                f"no space left in {path.parent} to save {path.name} (it needs about {_mb(_nbytes(checkpoint))}, "
                f"{_mb(free)} free): free space there or move trainer.logger.init_args.save_dir to a larger disk, "
                "then continue with --ckpt_path last (the previous checkpoint is intact)") from None

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
            if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
                raise ValueError("it holds no state_dict")
            return checkpoint
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated, not a checkpoint, another pickle: torch raises many types for these
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {why[:160]}); "
                                  f"{self.newest_readable(Path(path), map_location, weights_only)}") from None

    def newest_readable(self, path: Path, map_location: Any, weights_only: bool | None) -> str:
        """What to resume from instead: the newest other checkpoint in the same folder that loads."""
        others = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=os.path.getmtime, reverse=True)
        for other in others:
            try:
                loaded = super().load_checkpoint(other, map_location=map_location, weights_only=weights_only)
            except Exception:  # noqa: BLE001  (any failure means: not this one)
                continue
            if isinstance(loaded, dict) and "state_dict" in loaded:
                return (f"the newest readable one there is {other} (step {loaded.get('global_step', '?')}): "
                        f"resume with --ckpt_path {other}")
        return f"no other checkpoint in {path.parent} loads: start again without --ckpt_path"
