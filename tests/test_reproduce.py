"""The experiment runner: the QUICK grid end to end, summaries equal to the events, resumption."""
import csv
import json
import statistics

import pytest

from experiments.grids import GRIDS, grid_runs
from experiments.reproduce import main as reproduce
from experiments.summarize import units_to_reach
from helpers import scalars


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIT_HC_DATA", str(tmp_path_factory.getbasetemp() / "data"))


def _csv(path):
    with open(path) as f:
        return {row["variant"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
def test_quick_grid_writes_tables_and_plots_equal_to_the_events(tmp_path):
    reproduce(["--quick", "--results", str(tmp_path)])
    for task, final_tag in (("lm", "val/loss"), ("vit", "val/acc1")):
        out = tmp_path / task
        for name in ("summary.csv", "summary.md", "val_curves.png", "gains.png", "connections_dhc4.png"):
            assert (out / name).stat().st_size > 0, name
        rows = _csv(out / "summary.csv")
        assert list(rows) == list(GRIDS[task])
        assert not list(out.glob(".*.tmp*"))  # nothing half-written left behind
        for variant, row in rows.items():
            seeds = [r for r in grid_runs(task) if r.variant == variant]
            assert int(row["seeds"]) == len(seeds)
            finals = []
            for run in seeds:
                events = scalars(out / run.name)[final_tag]
                finals.append(max(events)[1])  # value at the last step
            column, scale = ("val_loss", 1) if task == "lm" else ("top1", 100)
            assert float(row[column]) == pytest.approx(scale * statistics.mean(finals), rel=1e-6)
        md = (out / "summary.md").read_text()
        assert "python -m experiments.reproduce --quick" in md and all(f"| {v} |" in md for v in GRIDS[task])
        assert float(rows["residual"]["step_time_ratio"]) == 1.0 and rows["residual"]["paper"]


def test_interrupted_runner_reruns_only_unfinished(tmp_path, capsys):
    reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--max-runs", "2"])
    done = sorted(tmp_path.glob("lm/*/done.json"))
    assert len(done) == 2
    first = {p: p.stat().st_mtime_ns for p in done}
    # A run interrupted after its checkpoint was written: it must resume, not restart.
    interrupted = tmp_path / "lm" / "dhc1-s0" / "done.json"
    assert interrupted in first
    interrupted.unlink()
    capsys.readouterr()
    reproduce(["--quick", "--task", "lm", "--results", str(tmp_path)])
    log = capsys.readouterr().out
    assert f"{len(grid_runs('lm'))} runs, 1 already done" in log
    assert len(list(tmp_path.glob("lm/*/done.json"))) == len(grid_runs("lm"))
    residual = tmp_path / "lm" / "residual-s0" / "done.json"
    assert residual.stat().st_mtime_ns == first[residual]  # finished run untouched
    resumed = json.loads(interrupted.read_text())
    assert resumed["resumed"] and resumed["steps"] == 4


def test_seeds_raise_every_variant():
    assert len(grid_runs("lm")) == 13 and len(grid_runs("vit")) == 11
    runs = grid_runs("vit", seeds=2)
    assert len(runs) == 2 * len(GRIDS["vit"]) + 2  # residual and dhc4 keep their third seed
    assert [r.name for r in runs[:2]] == ["residual-s0", "dhc1-s0"]  # seed-major order


def test_units_to_reach_interpolates():
    curve = [(100.0, 3.0), (200.0, 2.0), (300.0, 1.5)]
    assert units_to_reach(curve, 2.5) == pytest.approx(150.0)
    assert units_to_reach(curve, 1.5) == pytest.approx(300.0)
    assert units_to_reach(curve, 3.5) == pytest.approx(100.0)  # reached at the first evaluation
    assert units_to_reach(curve, 1.0) is None


def test_bad_input_stops_the_runner_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--data", str(tmp_path / "nope")])
    message = str(exit_info.value.code)
    assert message.startswith("reproduce: lm residual-s0: error: text source") and str(tmp_path / "nope") in message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_runner_interrupted_inside_a_run_resumes_it_exactly(tmp_path, monkeypatch, capsys):
    """A real Ctrl-C in the middle of the second run: the runner stops with one line (exit 130); started again it
    keeps the finished run, resumes the interrupted one from its step-2 last.ckpt, and ends where an
    uninterrupted runner ends."""
    import torch

    import experiments.reproduce as runner

    original = runner.cli_args

    def ctrl_c_in_dhc1(run, *args):
        extra = ["--trainer.callbacks+=helpers.SignalAtStep", "--trainer.callbacks.step", "2",
                 "--trainer.callbacks.signal", "SIGINT"] if run.name == "dhc1-s0" else []
        return original(run, *args) + extra

    common = ["--quick", "--task", "lm", "--max-runs", "2"]
    monkeypatch.setattr(runner, "cli_args", ctrl_c_in_dhc1)
    with pytest.raises(SystemExit) as exit_info:
        runner.main([*common, "--results", str(tmp_path / "a")])
    assert exit_info.value.code == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("reproduce: lm dhc1-s0 stopped by SIGINT after a finished step")
    run_dir = tmp_path / "a" / "lm" / "dhc1-s0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not (run_dir / "done.json").exists()
    residual = tmp_path / "a" / "lm" / "residual-s0" / "done.json"
    before = residual.stat().st_mtime_ns

    monkeypatch.setattr(runner, "cli_args", original)
    runner.main([*common, "--results", str(tmp_path / "a")])
    runner.main([*common, "--results", str(tmp_path / "b")])  # the same two runs, never interrupted
    assert residual.stat().st_mtime_ns == before
    resumed, straight = (json.loads((tmp_path / r / "lm" / "dhc1-s0" / "done.json").read_text()) for r in "ab")
    assert resumed["resumed"] and not straight["resumed"] and resumed["steps"] == straight["steps"] == 4
    assert resumed["final"]["val_loss"] == pytest.approx(straight["final"]["val_loss"], rel=1e-6)
