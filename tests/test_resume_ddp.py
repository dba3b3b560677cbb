"""Resuming a run continues it exactly; DDP over 2 CPU processes matches one process with the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

from helpers import CONFIGS, ROOT, lm_args, run_dir, scalars, write_toy_corpus
from lit_hc.cli import cli_main
from lit_hc.layers import Attention


def _weights(cli):
    return {k: v.detach().clone() for k, v in cli.model.net.state_dict().items()}


@pytest.mark.parametrize("variant", ["residual", "dhc2"])
def test_interrupted_and_resumed_run_equals_straight_run(tmp_path, variant):
    corpus = write_toy_corpus(tmp_path / "corpus")
    common = ("--config", str(CONFIGS / f"hc/{variant}.yaml"), "--trainer.val_check_interval", "3",
              "--model.init_args.arch.dropout", "0.1")  # the dropout masks continue too (RNG state in the checkpoint)
    straight = cli_main(lm_args(tmp_path / "a", corpus, 8, *common))
    first_half = cli_main(lm_args(tmp_path / "b", corpus, 8, *common,
                                  "--trainer.callbacks+=helpers.StopAtStep", "--trainer.callbacks.step", "4"))
    assert first_half.trainer.global_step == 4
    ckpt = run_dir(tmp_path / "b" / "lm", variant) / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4
    resumed = cli_main(lm_args(tmp_path / "b", corpus, 8, *common, "--ckpt_path", "last"))
    assert resumed.trainer.global_step == 8
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    assert not torch.equal(_weights(first_half)["blocks.0.attn.qkv.weight"], a["blocks.0.attn.qkv.weight"])


def test_same_seed_gives_the_same_loss_curve(tmp_path):
    corpus = write_toy_corpus(tmp_path / "corpus")
    common = ("--config", str(CONFIGS / "hc/mhc4.yaml"), "--model.init_args.arch.dropout", "0.1",
              "--trainer.log_every_n_steps", "1")
    curves = []
    for run in ("a", "b"):
        cli_main(lm_args(tmp_path / run, corpus, 6, *common))
        curves.append(scalars(run_dir(tmp_path / run / "lm", "mhc4"))["train/loss"])
    assert len(curves[0]) == 6 and curves[0] == curves[1]  # bitwise, step by step
    cli_main(lm_args(tmp_path / "c", corpus, 6, *common, "--seed_everything", "1"))
    assert scalars(run_dir(tmp_path / "c" / "lm", "mhc4", seed=1))["train/loss"] != curves[0]


def _fit_subprocess(tmp_path, corpus, name, *extra):
    args = lm_args(tmp_path, corpus, 6, "--trainer.logger.init_args.version", name,
                   "--trainer.val_check_interval", "6", *extra)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "lit_hc", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "lm" / name / "checkpoints" / "last.ckpt"
    return torch.load(ckpt, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    """2 ranks x batch 4 see windows {0..7} per step, like 1 rank x batch 8; gradients are averaged, so the
    weights after 6 steps agree up to the order of float reductions."""
    corpus = write_toy_corpus(tmp_path / "corpus")
    single = _fit_subprocess(tmp_path, corpus, "single", "--data.init_args.batch_size", "8",
                             "--trainer.accelerator", "cpu", "--trainer.devices", "1")
    ddp = _fit_subprocess(tmp_path, corpus, "ddp", "--config", str(CONFIGS / "trainer/cpu-ddp.yaml"),
                          "--data.init_args.batch_size", "4")
    assert single["global_step"] == ddp["global_step"] == 6
    a, b = single["state_dict"], ddp["state_dict"]
    assert a.keys() == b.keys()
    for k, v in a.items():
        if k.endswith("attn.qkv.bias"):
            # The key bias cannot change the output: it adds q.b_k to every logit of a query's row and softmax is
            # shift-invariant, so its gradient is exactly 0 and only float noise, which AdamW's g/sqrt(v) turns
            # into lr-sized steps of random sign. Compare the query and value biases; the key bias is checked below.
            c = v.numel() // 3
            v, w = torch.cat([v[:c], v[2 * c:]]), torch.cat([b[k][:c], b[k][2 * c:]])
        else:
            w = b[k]
        torch.testing.assert_close(w, v, rtol=1e-4, atol=1e-5, msg=k)
    attn = Attention(32, 2, causal=True)  # lm_args: n_embd 32, 2 heads, learned positions (no RoPE)
    x = torch.randn(2, 5, 32)
    y = attn(x)
    with torch.no_grad():
        attn.qkv.bias[32:64].add_(torch.randn(32))  # any key bias (the middle third of qkv): the same output
    torch.testing.assert_close(attn(x), y, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ddp_rank_that_dies_does_not_leave_the_others_hanging(tmp_path):
    """Rank 1 is killed (no clean-up, like a lost node) at step 3: the launcher ends the whole job with a
    non-zero exit instead of rank 0 waiting forever in the next all-reduce; checkpoints written before stay."""
    corpus = write_toy_corpus(tmp_path / "corpus")
    args = lm_args(tmp_path, corpus, 8, "--config", str(CONFIGS / "trainer/cpu-ddp.yaml"),
                   "--data.init_args.batch_size", "4", "--trainer.val_check_interval", "2",
                   "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "2",
                   "--trainer.callbacks+=helpers.DieAtStep", "--trainer.callbacks.step", "3")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run([sys.executable, "-m", "lit_hc", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)  # a hang fails here, not by blocking CI
    assert result.returncode != 0, result.stderr[-2000:]
    folder = run_dir(tmp_path / "lm", "residual") / "checkpoints"
    assert torch.load(folder / "epoch=0-step=2.ckpt", weights_only=True)["global_step"] == 2
    # Rank 0 saw the peer vanish inside step 4 and wrote its (mid-step) state alone, without waiting for it.
    assert torch.load(folder / "on_exception.ckpt", weights_only=True)["global_step"] == 3


def test_a_failing_run_leaves_a_checkpoint_in_its_own_folder(tmp_path):
    corpus = write_toy_corpus(tmp_path / "corpus")
    with pytest.raises(RuntimeError, match="simulated failure at step 3"):
        cli_main(lm_args(tmp_path, corpus, 8, "--trainer.callbacks+=helpers.FailAtStep", "--trainer.callbacks.step", "3"))
    ckpt = run_dir(tmp_path / "lm", "residual") / "checkpoints" / "on_exception.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    assert not (ROOT / "on_exception.ckpt").exists()  # nothing written outside the run folder


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_saves_and_last_continues_exactly(tmp_path, signal_name, code):
    """A real SIGTERM or Ctrl-C to a `lit-hc fit` process at step 4: the step finishes, clean exit (128 + signal,
    one line, no traceback), last.ckpt at step 4; then --ckpt_path last reaches the weights of an uninterrupted
    run."""
    corpus = write_toy_corpus(tmp_path / "corpus")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT / "tests")}
    common = ("--config", str(CONFIGS / "hc/dhc2.yaml"), "--trainer.val_check_interval", "3",
              "--trainer.log_every_n_steps", "1", "--model.init_args.arch.dropout", "0.1")  # RNG state matters
    args = lm_args(tmp_path, corpus, 8, *common, "--trainer.callbacks+=helpers.SignalAtStep",
                   "--trainer.callbacks.step", "4", "--trainer.callbacks.signal", signal_name)
    interrupted = subprocess.run([sys.executable, "-m", "lit_hc", *args], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=600)
    assert interrupted.returncode == code, interrupted.stderr[-2000:]
    assert "Traceback" not in interrupted.stderr
    assert interrupted.stderr.strip().splitlines()[-1].startswith(f"lit-hc: stopped by {signal_name} after a finished")
    last = run_dir(tmp_path / "lm", "dhc2") / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    resumed = cli_main(lm_args(tmp_path, corpus, 8, *common, "--ckpt_path", "last"))
    straight = cli_main(lm_args(tmp_path / "straight", corpus, 8, *common))
    assert resumed.trainer.global_step == straight.trainer.global_step == 8
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    logged = [sorted(step for step, _ in scalars(run_dir(tmp_path / r / "lm", "dhc2"))[tag])
              for r in (".", "straight") for tag in ("val/loss", "train/grad_norm")]
    assert logged[:2] == logged[2:]  # the resumed run logs at the steps of the straight run
    # The resumed run keeps last.ckpt current (no last-v1.ckpt beside it), so a second resume starts at step 8.
    assert torch.load(last, weights_only=True)["global_step"] == 8
    assert not list(last.parent.glob("last-v*.ckpt"))


def test_checkpoint_of_another_variant_is_a_one_line_error(tmp_path, capsys):
    from lit_hc.cli import main

    corpus = write_toy_corpus(tmp_path / "corpus")
    cli_main(lm_args(tmp_path, corpus, 2))
    ckpt = run_dir(tmp_path / "lm", "residual") / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(lm_args(tmp_path, corpus, 4, "--config", str(CONFIGS / "hc/dhc2.yaml"), "--ckpt_path", str(ckpt)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "another architecture or residual variant (dhc2 here)" in line and "blocks.0.hc_attn" in line
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2  # the checkpoint is left as it was
    # The same variant resumes from an explicit path (Lightning's CLI would otherwise re-parse the hparams).
    same = cli_main(lm_args(tmp_path, corpus, 4, "--ckpt_path", str(ckpt)))
    assert same.trainer.global_step == 4
