"""Numerical guards: a NaN loss stops the run with one line naming the step and the last good checkpoint, before
the bad step reaches the weights; or, with action='skip', the step is skipped and training goes on."""
import pytest
import torch
import yaml

from helpers import lm_args, run_dir, scalars, write_toy_corpus
from lit_hc.callbacks import NonFiniteGuard
from lit_hc.cli import cli_main, main

POISON = ("--trainer.callbacks+=helpers.PoisonOutputAtStep", "--trainer.callbacks.step", "5")


@pytest.fixture
def corpus(tmp_path):
    return write_toy_corpus(tmp_path / "corpus")


def test_nan_stops_with_one_line_and_finite_checkpoint(tmp_path, corpus, capsys):
    # 4 good steps (checkpointed), then resume and diverge at step 5.
    cli_main(lm_args(tmp_path, corpus, 10, "--trainer.callbacks+=helpers.StopAtStep", "--trainer.callbacks.step", "4"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(lm_args(tmp_path, corpus, 10, "--ckpt_path", "last", *POISON))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    message = err.splitlines()[-1]
    assert message.startswith("lit-hc: error: non-finite loss or gradient at step 5")
    run = run_dir(tmp_path / "lm", "residual") / "checkpoints"
    assert f"last good checkpoint: {run / 'last.ckpt'}" in message
    state = torch.load(run / "on_exception.ckpt", weights_only=False)
    assert state["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())  # the NaN step never landed


def test_nan_step_is_skipped_with_action_skip(tmp_path, corpus):
    # A later config replaces the base's callback list: the way to switch the guard to 'skip'.
    overlay = tmp_path / "skip.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lit_hc.callbacks.NonFiniteGuard", "init_args": {"action": "skip"}},
        {"class_path": "helpers.PoisonOutputAtStep", "init_args": {"step": 5}}]}}))
    cli = cli_main(lm_args(tmp_path / "skip", corpus, 10, "--trainer.log_every_n_steps", "1", "--config", str(overlay)))
    guard = [cb for cb in cli.trainer.callbacks if isinstance(cb, NonFiniteGuard)][-1]
    assert guard.skipped_steps == [5] and cli.trainer.global_step == 10
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    s = scalars(run_dir(tmp_path / "skip" / "lm", "residual"))
    assert len(s["train/grad_norm"]) >= 9 and all(v == v for _, v in s["train/grad_norm"] if _ != 5)


def test_guard_rejects_unknown_action():
    with pytest.raises(ValueError, match="action"):
        NonFiniteGuard(action="ignore")
