"""The three places where lit-hc uses Lightning internals, each because no public API does the job.

Kept in one module so that a Lightning upgrade is checked here (pyproject bounds the version to the range the
tests ran on; the exact-resume, signal and DDP-failure tests in tests/test_resume_ddp.py exercise every call).
"""
from __future__ import annotations


def dump_checkpoint(trainer) -> dict:
    """The full training state as `trainer.save_checkpoint` would write it, without its collectives.

    Why private: `Trainer.save_checkpoint` ends in a barrier; when a DDP peer has died, rank 0 must write the
    exception checkpoint alone, and only the checkpoint connector builds the state dict without synchronising.
    """
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def set_logging_step(trainer, step: int) -> None:
    """Set the step that `self.log` records (Lightning's count of batches that stepped the optimizer).

    Why private: Lightning restores this counter assuming a checkpoint was written inside the batch-end hooks; a
    checkpoint written after validation (on a signal) resumes it one step off, and there is no public setter.
    """
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


class KeepGivenConfigOnResume:
    """LightningCLI mixin: with --ckpt_path FILE, keep the configuration given on the command line.

    Why private: LightningCLI._parse_ckpt_path replaces the model's config by the checkpoint's hyperparameters,
    silently turning e.g. a requested DHC x2 back into the checkpoint's variant, and no public option turns that
    off. Here the given config is the truth, and a checkpoint that does not fit it is refused with one line
    (LanguageModel/ImageClassifier.on_load_checkpoint).
    """

    def _parse_ckpt_path(self) -> None:
        pass
