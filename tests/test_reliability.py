"""Crash consistency: checkpoints written atomically, a full disk, corrupt checkpoints, and SIGKILL at random
moments (the chaos test), each ending in one line or in a run that continues exactly."""
import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import ROOT, lm_args, run_dir, write_toy_corpus
from lit_hc.checkpoint_io import AtomicCheckpointIO
from lit_hc.cli import cli_main, main

# last.ckpt after every optimizer step (kills and a full disk then strike during saves too)
EVERY_STEP = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                          "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1}}])
KEEP_EVERY_STEP = json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"save_last": True, "save_top_k": -1, "every_n_train_steps": 1}}])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("corpus"))


def _error_line(capsys, args, code=1) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == code and "Traceback" not in "\n".join(err)
    return err[-1]


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("fails half-way through serialisation")


def test_a_save_that_fails_half_way_leaves_the_old_checkpoint(tmp_path):
    io_ = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io_.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    with pytest.raises(RuntimeError, match="half-way"):
        io_.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 2, "bad": Unpicklable()}, path)
    assert io_.load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left behind


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, corpus, capsys, monkeypatch):
    real_save, saves = torch.save, []

    def disk_fills_at_third_save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) < 3:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half of it reaches the disk, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills_at_third_save)
    line = _error_line(capsys, lm_args(tmp_path, corpus, 6, "--trainer.callbacks", EVERY_STEP))
    folder = run_dir(tmp_path / "lm", "residual") / "checkpoints"
    assert line.startswith(f"lit-hc: error: no space left in {folder} to save last.ckpt (it needs about ")
    assert "continue with --ckpt_path last (the previous checkpoint is intact)" in line
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no partial file, no on_exception.ckpt


def test_truncated_last_checkpoint_names_the_newest_that_loads(tmp_path, corpus, capsys):
    cli_main(lm_args(tmp_path, corpus, 8, "--trainer.callbacks", KEEP_EVERY_STEP,
                     "--trainer.callbacks+=helpers.StopAtStep", "--trainer.callbacks.step", "4"))
    folder = run_dir(tmp_path / "lm", "residual") / "checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # what a copy cut short leaves
    newest = max(folder.glob("epoch=*.ckpt"), key=os.path.getmtime)
    line = _error_line(capsys, lm_args(tmp_path, corpus, 8, "--trainer.callbacks", KEEP_EVERY_STEP, "--ckpt_path", "last"))
    assert line.startswith(f"lit-hc: error: cannot read checkpoint {last} (")
    assert line.endswith(f"the newest readable one there is {newest} (step 4): resume with --ckpt_path {newest}")


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, corpus, capsys):
    bogus = tmp_path / "elsewhere" / "model.ckpt"
    bogus.parent.mkdir()
    bogus.write_bytes(random.Random(0).randbytes(4096))
    line = _error_line(capsys, lm_args(tmp_path, corpus, 2, "--ckpt_path", str(bogus)))
    assert line.startswith(f"lit-hc: error: cannot read checkpoint {bogus} (")
    assert line.endswith(f"no other checkpoint in {bogus.parent} loads: start again without --ckpt_path")


def test_last_without_any_checkpoint_says_it_starts_fresh(tmp_path, corpus, capsys):
    cli = cli_main(lm_args(tmp_path, corpus, 2, "--ckpt_path", "last"))
    assert cli.trainer.global_step == 2
    folder = run_dir(tmp_path / "lm", "residual") / "checkpoints"
    assert f"lit-hc: --ckpt_path last: no checkpoint in {folder} yet; starting fresh" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_a_straight_run(tmp_path, corpus):
    """A real `lit-hc fit` killed with SIGKILL at random moments (checkpoints every step, so kills land during
    saves too), resumed each time with --ckpt_path last: last.ckpt always loads, and the final weights are those
    of an uninterrupted run."""
    steps, rng, kills = 80, random.Random(0), []
    args = lm_args(tmp_path / "chaos", corpus, steps, "--trainer.callbacks", EVERY_STEP)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # the straight run's thread count: the same float sums
    started = time.time()

    def saved_step():
        found = list((tmp_path / "chaos" / "lm").glob("residual-s0-*/checkpoints/last.ckpt"))
        return (found[0], torch.load(found[0], weights_only=True)["global_step"]) if found else (None, -1)

    for target in [*sorted(rng.sample(range(4, steps - 4), 4)), None]:  # kill once last.ckpt reaches each target
        proc = subprocess.Popen([sys.executable, "-m", "lit_hc", *args, "--ckpt_path", "last"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if target is None:  # the last attempt runs to the end
            assert proc.wait() == 0, proc.stderr.read()[-2000:]
            break
        while proc.poll() is None and saved_step()[1] < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere inside a step or a save
        assert proc.poll() is None, f"finished before the kill at step {target}: {proc.stderr.read()[-2000:]}"
        proc.kill()
        proc.wait()
        last, step = saved_step()  # loads: never a partial file
        kills.append(step)
    assert len(kills) == 4 and kills == sorted(kills) and kills[-1] < steps, kills
    last, _ = saved_step()
    resumed = torch.load(last, weights_only=True)
    straight = cli_main(lm_args(tmp_path / "straight", corpus, steps, "--trainer.callbacks", EVERY_STEP))
    assert resumed["global_step"] == straight.trainer.global_step == steps
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=1e-6, atol=1e-7, msg=k)
    print(f"chaos: {len(kills)} kills at steps {kills}, {time.time() - started:.0f} s")  # for the notes


@pytest.mark.slow
def test_sigkill_of_the_grid_runner_then_rerun_equals_an_uninterrupted_grid(tmp_path):
    """`make reproduce` (QUICK depth study) killed with SIGKILL twice, mid-grid, rerun each time: every run's final
    metrics and the table equal those of a runner that was never interrupted."""
    import csv

    from experiments.reproduce import main as reproduce

    reproduce(["--quick", "--study", "depth", "--results", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    kills = []
    for after in (2, 5):  # kill once this many runs have finished (the next one is under way or starting)
        proc = subprocess.Popen([sys.executable, "-m", "experiments.reproduce", "--quick", "--study", "depth",
                                 "--results", str(killed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        while proc.poll() is None and len(list(killed.glob("lm/runs/*/done.json"))) < after:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(len(list(killed.glob("lm/runs/*/done.json"))))
        for done in killed.glob("lm/runs/*/done.json"):
            json.loads(done.read_text())  # every done.json is whole
    reproduce(["--quick", "--study", "depth", "--results", str(killed)])
    names = sorted(p.parent.name for p in (tmp_path / "straight").glob("lm/runs/*/done.json"))
    assert names == sorted(p.parent.name for p in killed.glob("lm/runs/*/done.json")) and len(names) == 8
    for name in names:
        a, b = (json.loads((root / "lm" / "runs" / name / "done.json").read_text())["final"]
                for root in (tmp_path / "straight", killed))
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6), name
    rows = [list(csv.DictReader(open(root / "lm" / "depth" / "summary.csv"))) for root in (tmp_path / "straight", killed)]
    for a, b in zip(*rows):
        assert a["depth"] == b["depth"] and float(a["delta"]) == pytest.approx(float(b["delta"]), rel=1e-6)
    assert kills[0] >= 2 and kills[1] >= 5, kills
