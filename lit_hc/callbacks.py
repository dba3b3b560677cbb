"""Training callbacks: a checkpoint when a run fails, and a guard against non-finite losses and gradients."""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Literal

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_hc.checkpoint_io import CheckpointError
from lit_hc.lightning_compat import dump_checkpoint, set_logging_step


def newest_checkpoint(trainer) -> str:
    """The most recent checkpoint file of the run (exception checkpoints excluded), or 'none saved yet'."""
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    files = [] if not folder or not os.path.isdir(folder) else [
        os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ckpt") and not f.startswith("on_exception")]
    return max(files, key=os.path.getmtime) if files else "none saved yet"


class NonFiniteError(ValueError):
    """A loss or gradient became NaN/Inf; the message names the step and the last good checkpoint."""


class CheckpointOnException(Callback):
    """Save a checkpoint into <run>/checkpoints/ when training stops on an exception after it started.

    SIGTERM (pre-emption, `kill`, SLURM) and the first SIGINT (Ctrl-C): the current step finishes, Lightning raises
    SIGTERMException at the batch boundary, and that consistent state is saved as last.ckpt, so `--ckpt_path last`
    continues the run exactly. The exception's exit code is set to 128 + the signal number (143, 130). A second
    Ctrl-C stops at once (Lightning's KeyboardInterrupt path). Any other exception may strike in the middle of a
    step: that state goes to on_exception.ckpt, for inspection or a deliberate resume, never picked up implicitly.
    Not Lightning's OnExceptionCheckpoint: that one is resumed from *implicitly* by the next fit that finds
    its file (even with another architecture), and writes to a fixed folder before the run folder is known.
    """

    def __init__(self, filename: str = "on_exception.ckpt", graceful_sigint: bool = True):
        """
        Args:
            filename: name of the checkpoint written when a run fails mid-step.
            graceful_sigint: treat the first Ctrl-C like SIGTERM (finish the step, save last.ckpt, exit 130).
        """
        self.filename, self.graceful_sigint = filename, graceful_sigint
        self.received: int | None = None  # the signal that asked the run to stop
        self._previous_sigint = None
        self._saving_on_signal = self._resync_log_step = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.received = None
        if self.graceful_sigint and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.received == signal.SIGINT:  # the second Ctrl-C: stop now
            self._restore_sigint()
            raise KeyboardInterrupt
        self.received = signal.SIGINT
        print("lit-hc: Ctrl-C: finishing this step and saving last.ckpt (press Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)
        # Lightning's SIGTERM handler sets trainer.received_sigterm and forwards the signal to DDP workers.
        handler = signal.getsignal(signal.SIGTERM)
        if callable(handler):
            handler(signal.SIGTERM, frame)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_sigint()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_sigint()
        stopped_by_signal = isinstance(exception, SIGTERMException)
        if stopped_by_signal:
            exception.code = 128 + (self.received or signal.SIGTERM)
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None) or (
            os.path.join(trainer.logger.log_dir, "checkpoints") if trainer.logger and trainer.logger.log_dir else None)
        if trainer.global_step == 0 or folder is None or isinstance(exception, CheckpointError):
            return  # nothing trained yet, nowhere to write, or writing is what failed (a full disk)
        if not stopped_by_signal:
            # Perhaps a DDP peer died: no collective here (trainer.save_checkpoint ends in a barrier that would wait
            # for it), rank 0 writes the file alone.
            if trainer.is_global_zero:
                state = dump_checkpoint(trainer)
                trainer.strategy.checkpoint_io.save_checkpoint(state, os.path.join(folder, self.filename))
            return
        # A signal reaches every rank (Lightning forwards it), so all of them save together, at a step boundary.
        path = os.path.join(folder, "last.ckpt")
        if isinstance(checkpoint, ModelCheckpoint):
            # Recorded before saving, so the saved ModelCheckpoint state owns last.ckpt and the resumed run keeps
            # updating it (otherwise it would write last-v1.ckpt beside it).
            checkpoint.last_model_path = path
        self._saving_on_signal = True
        try:
            trainer.save_checkpoint(path, weights_only=False)
        finally:
            self._saving_on_signal = False

    # Lightning restores its logging step counter assuming the checkpoint was written inside the batch-end hooks;
    # this one is written later in the step (after validation), so the counter is re-synchronised with the
    # optimizer step at the first batch of the resumed run (else its curves can be logged one step off).
    def state_dict(self) -> dict:
        return {"saved_on_signal": self._saving_on_signal}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resync_log_step = state_dict.get("saved_on_signal", False)

    def on_train_batch_start(self, trainer, *args) -> None:
        if self._resync_log_step:
            set_logging_step(trainer, trainer.global_step)
            self._resync_log_step = False


def stop_message(exception: SIGTERMException) -> tuple[str, int]:
    """The one line and exit code for a run stopped by a signal after a finished step."""
    code = exception.code if isinstance(exception.code, int) and exception.code > 128 else 128 + signal.SIGTERM
    return (f"stopped by {signal.Signals(code - 128).name} after a finished step; its state is in "
            "checkpoints/last.ckpt: continue with the same command and --ckpt_path last", code)


class NonFiniteGuard(Callback):
    """Log the gradient norm every step; stop (or skip the step) when the loss or a gradient is not finite.

    Runs after backward and before gradient clipping and the optimizer step, so a bad step never reaches the
    weights: with action='stop' the run ends with NonFiniteError (the exception checkpoint then holds the last
    finite weights); with action='skip' every gradient of the step is dropped, and AdamW leaves parameters
    without a gradient untouched (no update, no weight decay), so training continues as if the batch was absent.
    With precision='16-mixed' use action='skip': GradScaler produces inf gradients by design while it calibrates.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", log_grad_norm: bool = True):
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard.action={action!r} is not one of ('stop', 'skip')")
        self.action, self.log_grad_norm = action, log_grad_norm
        self.skipped_steps: list[int] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        # Not lightning.pytorch.utilities.grad_norm: it takes each norm in the gradient's dtype (bf16 under mixed
        # precision) and builds the total with torch.tensor(list of norms), a host copy per parameter on GPU.
        # Here: float32, one device-side reduction, no synchronisation until the value is logged.
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
        if self.log_grad_norm:
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if torch.isfinite(norm):
            return
        step = trainer.global_step
        if self.action == "skip":
            self.skipped_steps.append(step)
            pl_module.log("train/skipped_steps", float(len(self.skipped_steps)), on_step=True, on_epoch=False)
            for p in pl_module.parameters():
                p.grad = None
            return
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step}; last good checkpoint: {newest_checkpoint(trainer)}. "
            "Resume from it with a lower "
            "learning rate, or add NonFiniteGuard(action='skip') to skip such batches"
        )
