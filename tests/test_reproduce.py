"""The experiment runner: the QUICK grid end to end, summaries equal to the events, resumption, run folders that
refuse another configuration, and the pairing of runs by seed."""
import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

from experiments.grids import MAIN_SEEDS, VIT_MAIN_LR, depth_study, main_study, run
from experiments.reproduce import cli_args
from experiments.reproduce import main as reproduce
from experiments.summarize import units_to_reach
from helpers import scalars



def grid_runs(task, seeds=None):
    return list(main_study(task, quick=True, seeds=seeds).runs)


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
        out = tmp_path / task / "main"
        for name in ("summary.csv", "summary.md", "val_curves.png", "gains.png", "connections_dhc4.png"):
            assert (out / name).stat().st_size > 0, name
        rows = _csv(out / "summary.csv")
        # a row per variant, and per control: the knobs where a run differs from the grid's (L 1, width 32)
        label = lambda r: "-".join([r.variant, *(f"{k}{v:g}" for k, v in r.knobs if (k, v) not in  # noqa: E731
                                                 (("L", 1), ("d", 32)))])
        assert set(rows) == {label(r) for r in grid_runs(task)} and list(rows)[0] == "residual"
        assert set(rows) - set(MAIN_SEEDS) == {"residual-steps8", "residual-L2", "residual-init-0.5", "dhc4-init-none"}
        assert not list(out.glob(".*.tmp*"))  # nothing half-written left behind
        for variant, row in rows.items():
            seeds = [r for r in grid_runs(task) if label(r) == variant]
            assert int(row["seeds"]) == len(seeds)
            finals = []
            for run in seeds:
                events = scalars(tmp_path / task / "runs" / run.name)[final_tag]
                finals.append(max(events)[1])  # value at the last step
            column, scale = ("val_loss", 1) if task == "lm" else ("top1", 100)
            assert float(row[column]) == pytest.approx(scale * statistics.mean(finals), rel=1e-6)
        md = (out / "summary.md").read_text()
        assert "python -m experiments.reproduce --quick" in md and all(f"| {v} |" in md for v in MAIN_SEEDS)
        assert float(rows["residual"]["step_time_ratio"]) == 1.0 and rows["residual"]["paper"]


@pytest.mark.slow  # end to end (~40 s here): make test-slow and CI
def test_interrupted_runner_reruns_only_unfinished(tmp_path, capsys):
    reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--max-runs", "2"])
    done = sorted(tmp_path.glob("lm/runs/*/done.json"))
    assert len(done) == 2
    first = {p: p.stat().st_mtime_ns for p in done}
    # A run interrupted after its checkpoint was written: it must resume, not restart.
    interrupted = tmp_path / "lm" / "runs" / "dhc4-L1-d32-s0" / "done.json"
    assert interrupted in first
    interrupted.unlink()
    capsys.readouterr()
    reproduce(["--quick", "--task", "lm", "--results", str(tmp_path)])
    log = capsys.readouterr().out
    assert f"{len(grid_runs('lm'))} runs, 1 already done" in log
    assert len(list(tmp_path.glob("lm/runs/*/done.json"))) == len(grid_runs("lm"))
    residual = tmp_path / "lm" / "runs" / "residual-L1-d32-s0" / "done.json"
    assert residual.stat().st_mtime_ns == first[residual]  # finished run untouched
    resumed = json.loads(interrupted.read_text())
    assert resumed["resumed"] and resumed["steps"] == 4
    assert len(resumed["commit"]) == 40 and len(resumed["code"]) == 12 and isinstance(resumed["dirty"], bool)


def test_main_lm_grid_holds_out_confirmation_seeds():
    from experiments.grids import controls_study

    study = main_study("lm")
    assert study.choice_seeds == (0, 1, 2) and study.confirm_seeds == (3, 4, 5)
    grid = [r for r in study.runs if r.knob("steps") is None and r.knob("L") == 16 and r.knob("lr") == 6e-3
            and r.variant in MAIN_SEEDS and r.seed not in study.added_seeds  # those: the test below
            and not r.knob("fused")]  # DHC x4 with the C++ connections, last: the test below too
    seeds = {v: sorted(r.seed for r in grid if r.variant == v) for v in MAIN_SEEDS}
    assert seeds["residual"] == seeds["dhc4"] == [0, 1, 2, 3, 4, 5]  # >= 5 seeds, paired
    assert all(seeds[v] == [0, 1, 2, 3, 4, 5] for v in MAIN_SEEDS)  # the secondary claims get confirmation seeds too
    assert all(sorted(r.seed for r in main_study("vit").runs if r.variant == v and r.knob("lr") == VIT_MAIN_LR)
               == [0, 1, 2] for v in MAIN_SEEDS if v not in ("residual", "dhc4"))  # the ViT's stay on the choice seeds
    # the LR was chosen on seeds 0-1 of the controls' sweep: those runs are the grid's, made once
    assert {r.name for r in grid if r.seed < 2 and r.variant in ("residual", "dhc4")} <= {
        r.name for r in controls_study().runs}
    # the cost control: the baseline for DHC x4's wall-clock time, a whole number of validation intervals
    longer = [r for r in study.runs if r.knob("steps") is not None]
    assert [r.seed for r in longer] == [0, 1, 2] and {r.variant for r in longer} == {"residual"}
    steps = longer[0].knob("steps")
    assert steps % study.budget.val_every == 0 and 1.7 < steps / study.budget.steps < 1.9
    assert study.comparisons[0][:2] == ("dhc4", f"residual-steps{steps}")
    # the confound controls at the grid's LR (6e-3), which the controls study ran at 3e-3
    mhc_lr = {r.name for r in study.runs if r.variant == "mhc4" and r.knob("lr") != 6e-3}
    assert mhc_lr == {f"mhc4-L16-d64-lr{lr}-s{s}" for s in (0, 1) for lr in ("0.003", "0.012")}
    fused = {r.name for r in study.runs if r.knob("fused")}
    confounds = {r.name for r in study.runs if r.seed not in study.added_seeds} - {r.name for r in grid + longer}
    confounds -= mhc_lr | fused
    assert confounds == {f"{v}-d64-lr0.006-s{s}" for s in (0, 1, 2) for v in (
        "residual-L17", "residual-init-0.5-L16", "dhc4-init-none-L16", "dhc4-init-multiply-L16")}
    assert [c[:2] for c in study.comparisons[1:9]] == [("residual-init-0.5", "residual"), ("dhc4-init-none", "dhc4"),
                                                       ("residual-L17", "residual"), ("dhc4", "residual-L17"),
                                                       ("dhc4-init-multiply", "dhc4"),
                                                       ("dhc4-init-multiply", "residual"), ("dhc4-fused", "dhc4"),
                                                       ("dhc4-fused", "residual")]
    # the paper's secondary claims, variant against variant on the seeds both have
    assert [c[:2] for c in study.comparisons[9:]] == [("dhc2", "dhc1"), ("dhc4", "dhc2"), ("dhc8", "dhc4"),
                                                      ("dhc4-notanh", "dhc4"), ("shc2", "dhc2"), ("shc4", "dhc4"),
                                                      ("mhc4", "dhc4"), ("mhc4-lr0.003", "mhc4"),
                                                      ("mhc4-lr0.003", "dhc4"), ("mhc4-lr0.012", "mhc4"),
                                                      ("mhc4-lr0.012", "dhc4")]


def test_seeds_raise_every_variant():
    for task in ("lm", "vit"):  # QUICK: at most 2 seeds, + the cost, parameter and 2 init controls on choice seed 0
        assert len(grid_runs(task)) == 2 * len(MAIN_SEEDS) + 4
    runs = grid_runs("vit", seeds=3)
    assert len(runs) == 3 * len(MAIN_SEEDS) + 4
    assert [r.name for r in runs[:2]] == ["residual-L1-d32-s0", "dhc4-L1-d32-s0"]  # the headline pair first


def test_run_names_spell_every_setting():
    assert run("lm", "dhc4", 2, lr=3e-3, L=16, d=64).name == "dhc4-L16-d64-lr0.003-s2"  # knobs in a fixed order
    with pytest.raises(ValueError, match="unknown knobs"):
        run("lm", "dhc4", 0, depth=16)
    with pytest.raises(ValueError, match=r"knobs \['train'\] do not apply to the lm task"):
        run("lm", "dhc4", 0, train=1500)


def test_vit_studies_share_one_regime_named_in_every_run():
    from experiments.grids import VIT_REGIME, controls_study

    studies = [depth_study("vit"), controls_study("vit"), main_study("vit")]
    for study in studies:
        for r in study.runs:  # the dataset size and the length are in every name, so no folder of the old code's
            assert r.knob("train") == VIT_REGIME["train"] == 500  # runs of the same settings (named without
            assert "-train500-" in r.name and "-steps" in r.name  # them) can be reused by mistake
            assert r.knob("obj") is None and "-obj" not in r.name  # one shape per image
    assert {r.knob("L") for r in depth_study("vit").runs} == {4, 8, 12, 24, 32}
    lrs = [r.knob("lr") for r in controls_study("vit").runs]  # DHC x4's bracket from above before the 0.25x point
    assert lrs.index(0.004) < lrs.index(0.0005)
    main = main_study("vit")
    assert {r.knob("L") for r in main.runs if r.variant == "dhc4"} == {24}
    names = {r.name for r in main.runs}  # the grid at the baseline's best LR, DHC x4 at its own too, every seed
    assert {f"{v}-L24-d64-lr0.001-steps600-train500-s{s}" for v in ("residual", "dhc4") for s in range(6)} <= names
    own = "dhc4-L24-d64-lr0.002-steps600-train500"
    assert {n for n in names if n.startswith("dhc4-L24-d64-lr0.002")} == {f"{own}-s{s}" for s in range(19)}
    assert main.comparisons[1][:2] == ("dhc4-lr0.002", "residual")
    longer = {r.knob("steps") for r in main.runs} - {VIT_REGIME["steps"]}
    assert longer == {1200}  # the cost control: 2 x 600 steps, a whole number of 100-step validation intervals
    assert main.comparisons[0][:2] == ("dhc4", "residual-steps1200")
    assert "(600 steps)" in main.comparisons[0][2]
    # seeds 6-8 of the headline pair, added after the confirmation: a set of their own, run after the first plan
    assert main.choice_seeds == (0, 1, 2) and main.confirm_seeds == (3, 4, 5) and main.added_seeds == (6, 7, 8)
    added = [r.name for r in main.runs if r.seed in (6, 7, 8)]
    assert added == [f"{v}-L24-d64-lr{lr}-steps600-train500-s{s}" for s in (6, 7, 8)
                     for v, lr in (("residual", "0.001"), ("dhc4", "0.001"), ("dhc4", "0.002"))]
    order = [r.name for r in main.runs]
    assert max(i for i, n in enumerate(order) if n.startswith("mhc4-")) < order.index(added[0])  # after the plan
    # then the output-init control at DHC x4's own LR, on the choice seeds
    added2 = [r.name for r in main.runs if r.seed in main.added2_seeds]
    assert order[-9 - len(added2):-3 - len(added2)] == [f"{v}-L24-d64-lr0.002-steps600-train500-s{s}" for v in
                                                        ("dhc4-init-none", "residual-init-0.5") for s in (0, 1, 2)]
    # then the second added set: ten seeds of the pair at each arm's best LR only, seed by seed
    assert main.added2_seeds == tuple(range(9, 19)) and order[-3 - len(added2):-3] == added2
    # last of all, the init control added after every other run had been read, at DHC x4's own LR, choice seeds
    assert order[-3:] == [f"dhc4-init-multiply-L24-d64-lr0.002-steps600-train500-s{s}" for s in (0, 1, 2)]
    assert {("dhc4-init-multiply-lr0.002", "dhc4-lr0.002"), ("dhc4-init-multiply-lr0.002", "residual")} <= {
        c[:2] for c in main.comparisons}
    assert added2 == [f"{v}-L24-d64-lr{lr}-steps600-train500-s{s}" for s in range(9, 19)
                      for v, lr in (("residual", "0.001"), ("dhc4", "0.002"))]
    assert main.seeds == tuple(range(19)) and not set(main.added2_seeds) & set(main.added_seeds + main.confirm_seeds)
    assert [c[:2] for c in main.comparisons[1:8]] == [("dhc4-lr0.002", "residual"),
                                                      ("dhc4-init-none-lr0.002", "dhc4-lr0.002"),
                                                      ("dhc4-init-none-lr0.002", "residual"),
                                                      ("residual-init-0.5-lr0.002", "residual"),
                                                      ("dhc4-lr0.002", "residual-init-0.5-lr0.002"),
                                                      ("dhc4-lr0.002", "residual-L25"),
                                                      ("dhc4-lr0.002", "residual-steps1200")]
    # the last two read runs made for the grid's own controls, at the baseline's LR (its best)
    assert {f"residual-{k}-s{s}" for k in ("L25-d64-lr0.001-steps600-train500", "L24-d64-lr0.001-steps1200-train500")
            for s in (0, 1, 2)} <= names
    assert main.comparisons[-1][:2] == ("mhc4", "dhc4-lr0.002")  # mHC x4 and DHC x4, each at its best LR
    assert not main_study("lm", quick=True).added_seeds and not main_study("vit", quick=True).added_seeds
    assert not main_study("vit", quick=True).added2_seeds and not main_study("lm").added2_seeds


def test_lm_main_grid_adds_seeds_6_to_11_for_the_secondary_claims_only():
    """The secondary variants' added seeds: a set of their own after the whole first plan, seed by seed, every
    variant there paired with a baseline run of its seed, and nothing of it in the choice or confirmation sets."""
    main = main_study("lm")
    assert main.choice_seeds == (0, 1, 2) and main.confirm_seeds == (3, 4, 5)
    assert main.added_seeds == (6, 7, 8, 9, 10, 11)
    order = [r.name for r in main.runs]
    added = [r.name for r in main.runs if r.seed >= 6]
    assert added == [f"{v}-L16-d64-lr0.006-s{s}" for s in range(6, 12)
                     for v in ("residual", "dhc4", "dhc2", "dhc4-notanh", "shc2", "shc4")]
    multiply = [f"dhc4-init-multiply-L16-d64-lr0.006-s{s}" for s in (0, 1, 2)]
    fused = [f"dhc4-L16-d64-lr0.006-fused-s{s}" for s in range(6)]
    # after the first plan: an interrupted grid holds it whole; then the init control added after every other run
    # had been read, on the choice seeds, read against DHC x4 and the baseline of its seed; last, DHC x4 with the
    # C++ connections on the choice and confirmation seeds
    assert order[-len(added) - 9:-9] == added and order[-9:-6] == multiply and order[-6:] == fused
    assert {("dhc4-init-multiply", "dhc4"), ("dhc4-init-multiply", "residual"), ("dhc4-fused", "dhc4"),
            ("dhc4-fused", "residual")} <= {c[:2] for c in main.comparisons}
    args = [cli_args(r, main, "cpu", False, Path("/r"), None) for r in (main.runs[-1], main.runs[0])]
    assert args[0][-2:] == ["--model.init_args.hc.fused", "true"] and not [a for a in args[1] if "fused" in a]
    assert {r.seed for r in main.runs if r.variant in ("dhc1", "dhc8", "mhc4")} <= set(range(6))
    # SEEDS=N >= 12 makes them ordinary seeds of every variant instead
    assert not main_study("lm", seeds=12).added_seeds


def test_runner_runs_only_the_variants_asked_for(tmp_path, capsys):
    reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--variants", "residual", "--max-runs", "1"])
    assert [p.parent.name for p in tmp_path.glob("lm/runs/*/done.json")] == ["residual-L1-d32-s0"]
    with pytest.raises(SystemExit):
        reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--variants", "dhc5"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --variants dhc5: not in the main study; it has residual dhc4" in err


def test_controls_pair_with_the_baseline_at_the_main_depth():
    from experiments.grids import LM_MAIN_DEPTH, controls_study

    study = controls_study()
    names = {r.name for r in study.runs}
    assert len(names) == len(study.runs)
    for s in study.choice_seeds:  # every control has its reference pair at the same seed
        assert {f"residual-L{LM_MAIN_DEPTH}-d64-lr0.003-s{s}", f"dhc4-L{LM_MAIN_DEPTH}-d64-lr0.003-s{s}"} <= names
    lrs = {r.knob("lr") for r in study.runs}
    assert lrs == {0.0015, 0.003, 0.006, 0.012, 0.024}
    # DHC x4's bracket from above (8x) for DHC x4 alone, last: it was added after the rest had run
    assert [r.name for r in study.runs[-2:]] == [f"dhc4-L16-d64-lr0.024-s{s}" for s in (0, 1)]
    assert not [r for r in study.runs if r.knob("lr") == 0.024 and r.variant != "dhc4"]
    assert {r.variant for r in study.runs} == {"residual", "dhc4", "residual-init-0.5", "dhc4-init-none"}
    # the held-out seeds of the main grid are never used to choose anything here
    assert max(r.seed for r in study.runs) == 2


def test_depth_study_pairs_every_depth_and_seed():
    study = depth_study()
    assert study.choice_seeds == (0, 1, 2) and study.confirm_seeds == (3, 4, 5)
    cells = {(r.knob("L"), r.seed): set() for r in study.runs}
    for r in study.runs:
        cells[(r.knob("L"), r.seed)].add(r.variant)
        assert r.knob("d") == 64 and r.knob("lr") == 3e-3
    assert sorted({L for L, _ in cells}) == [4, 8, 16, 32]
    assert sorted({s for _, s in cells}) == [0, 1, 2, 3, 4, 5]
    assert all(v == {"residual", "dhc4"} for v in cells.values())  # each depth and seed has both arms
    assert len({r.name for r in study.runs}) == len(study.runs) == 48
    # every choice run comes before every held-out one (the study as first read is the first half, unchanged),
    # and the held-out half again goes depth by depth, both arms of a seed together
    assert [r.seed in (0, 1, 2) for r in study.runs] == [True] * 24 + [False] * 24
    assert [(r.knob("L"), r.seed, r.variant) for r in study.runs[24:28]] == [
        (4, 3, "residual"), (4, 3, "dhc4"), (4, 4, "residual"), (4, 4, "dhc4")]
    vit = depth_study("vit")
    assert vit.choice_seeds == (0, 1, 2) and vit.confirm_seeds == (3, 4, 5) and len(set(vit.runs)) == 60
    assert [r.seed in (0, 1, 2) for r in vit.runs] == [True] * 30 + [False] * 30
    # its held-out seeds share only the main grid's DHC x4 runs at the depth study's LR (the main grid's L = 24)
    main = {r.name for r in main_study("vit").runs}
    assert {r.name for r in vit.runs[30:] if r.name in main} == {
        f"dhc4-L24-d64-lr0.002-steps600-train500-s{s}" for s in (3, 4, 5)}


def test_depth_study_at_the_grid_lr_shares_the_main_grids_runs():
    """The depth study again at the main grid's LR: its 16-layer runs are the main grid's own (one pool, the same
    names), every other run is new, seeds 0-2 before 3-5, and it is an LM study (`--task all` means the LM)."""
    from experiments.grids import LM_MAIN_LR, depth_grid_lr_study, studies

    study = depth_grid_lr_study()
    assert study.name == "depth-grid-lr" and study.choice_seeds == (0, 1, 2) and study.confirm_seeds == (3, 4, 5)
    assert {r.knob("lr") for r in study.runs} == {LM_MAIN_LR} and len(set(study.runs)) == 48
    main = {r.name for r in main_study("lm").runs}
    assert {r.name for r in study.runs if r.name in main} == {
        f"{v}-L16-d64-lr0.006-s{s}" for v in ("residual", "dhc4") for s in range(6)}
    assert not {r.name for r in study.runs} & {r.name for r in depth_study().runs}  # another LR: other runs
    assert [r.seed in (0, 1, 2) for r in study.runs] == [True] * 24 + [False] * 24
    assert [s.name for s in studies("depth-grid-lr", ["lm", "vit"])] == ["depth-grid-lr"]
    with pytest.raises(ValueError, match="LM's"):
        studies("depth-grid-lr", ["vit"])


def test_depth_rows_report_the_choice_and_the_held_out_seeds_apart():
    """At each depth: the paired Δ over all seeds, and on the choice and the confirmation seeds apart (hand-computed
    means and t-intervals), the seeds behind each plotted difference, and a table with one column per set."""
    from experiments.grids import LM_BUDGET, Study
    from experiments.summarize import _png, depth_figure, depth_markdown, depth_rows

    base = {0: 2.0, 1: 2.1, 2: 2.2, 3: 2.0, 4: 2.1}
    hc = {0: 1.9, 1: 2.0, 2: 2.15, 3: 1.96, 4: 2.08}  # diffs -0.1, -0.1, -0.05 | -0.04, -0.02
    done = lambda v, s, loss: {"run": {"variant": v, "knobs": [["L", 16]]}, "seed": s,  # noqa: E731
                               "final": {"val_loss": loss}, "params": 10}
    runs = {"residual-L16": [done("residual", s, x) for s, x in base.items()],
            "dhc4-L16": [done("dhc4", s, x) for s, x in hc.items()]}
    study = Study("depth", "lm", LM_BUDGET, (), (0, 1, 2), (3, 4, 5), about="a", base_knobs={"d": 64, "lr": 3e-3})
    (row,) = depth_rows(study, runs)
    assert row["n"] == 5 and row["delta"] == pytest.approx(-0.062, abs=1e-12) and row["wins"] == 5
    assert row["choice_n"] == 3 and row["choice_delta"] == pytest.approx(-0.25 / 3, abs=1e-12)
    # choice: std of (-0.1, -0.1, -0.05) = 0.0288675; t(2) = 4.303 (the table's 3 decimals) -> half-width 0.071717
    assert row["choice_ci_hi"] - row["choice_delta"] == pytest.approx(4.303 * 0.0288675 / 3 ** 0.5, rel=1e-5)
    # confirmation: 2 of its 3 seeds ran; diffs -0.04, -0.02, std 0.0141421, t(1) = 12.706
    assert row["confirm_n"] == 2 and row["confirm_delta"] == pytest.approx(-0.03, abs=1e-12)
    assert row["confirm_ci_lo"] == pytest.approx(-0.03 - 12.706 * 0.0141421 / 2 ** 0.5, rel=1e-5)
    assert json.loads(row["diff_seeds"]) == [0, 1, 2, 3, 4]
    text = depth_markdown(study, [row], "cmd", [])
    assert "| choice seeds [0, 1, 2] [95% CI], wins | confirmation seeds [3, 4, 5] [95% CI], wins |" in text
    assert "| -0.083 [-0.155, -0.012], 3/3 | -0.030 [-0.157, +0.097], 2/2 |" in text
    assert _png(depth_figure([row], "lm", study.confirm_seeds)).startswith(b"\x89PNG")


def test_paired_runs_share_data_order_and_non_hc_init(tmp_path):
    """Seed s of DHC x4 and of the baseline: the same training windows in the same order, and the same initial
    weights except the output projections, which DHC's 'divide' init scales by exactly 1/sqrt(4)."""
    from lit_hc.cli import HCCLI

    study = depth_study(quick=True)
    arms = {r.variant: r for r in study.runs if r.seed == 1 and r.knob("L") == 2}
    built = {}
    for variant, r in arms.items():
        args = cli_args(r, study, "cpu", True, tmp_path, None)[1:]  # without the `fit` subcommand
        cli = HCCLI(subclass_mode_model=True, subclass_mode_data=True, args=args, run=False)
        cli.datamodule.setup("fit")
        batches = [x for x, _ in zip(cli.datamodule.train_dataloader(), range(3))]
        built[variant] = (batches, cli.model.net.state_dict())
    (base_batches, base), (hc_batches, hc) = built["residual"], built["dhc4"]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(base_batches, hc_batches))
    shared = [k for k in base if k in hc]
    assert len(shared) == len(base)  # the baseline's parameters all exist in the HC model
    for key in shared:
        if key.endswith(("attn.proj.weight", "mlp.fc2.weight")):
            torch.testing.assert_close(hc[key], base[key] / 2, rtol=0, atol=1e-7)
        else:
            assert torch.equal(hc[key], base[key]), key


def test_folder_of_another_configuration_is_refused(tmp_path):
    reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--max-runs", "1"])
    done = tmp_path / "lm" / "runs" / "residual-L1-d32-s0" / "done.json"
    record = json.loads(done.read_text())
    done.write_text(json.dumps(record | {"fingerprint": "another"}))
    with pytest.raises(SystemExit) as exit_info:
        reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--max-runs", "1"])
    message = str(exit_info.value.code)
    assert "holds a run of another configuration" in message and "\n" not in message


def test_tables_refuse_runs_of_different_code(tmp_path):
    from experiments.summarize import summarize_study

    reproduce(["--quick", "--task", "lm", "--results", str(tmp_path), "--max-runs", "2"])
    done = tmp_path / "lm" / "runs" / "dhc4-L1-d32-s0" / "done.json"
    # a commit git does not know (made elsewhere): its recorded code version is what counts
    done.write_text(json.dumps(json.loads(done.read_text()) | {"commit": "f" * 40, "code": "0123456789ab"}))
    study = main_study("lm", quick=True)
    with pytest.raises(ValueError, match="2 code versions"):
        summarize_study(tmp_path, study, "test")
    rows = summarize_study(tmp_path, study, "test", allow_mixed=True)
    assert {r["code"] for r in rows} == {"0123456789ab", json.loads(
        (done.parent.parent / "residual-L1-d32-s0" / "done.json").read_text())["code"]}
    assert "code 0123456789ab" in (tmp_path / "lm" / "main" / "summary.md").read_text()
    # the same code, but the base config edited between the runs
    record = json.loads(done.read_text())
    other = json.loads((done.parent.parent / "residual-L1-d32-s0" / "done.json").read_text())
    base = next(k for k in other["configs"] if k.endswith("lm/base.yaml"))
    done.write_text(json.dumps(record | {"code": other["code"], "configs": other["configs"] | {base: "0" * 40}}))
    with pytest.raises(ValueError, match="several versions of configs/lm/base.yaml"):
        summarize_study(tmp_path, study, "test")


def test_code_that_makes_the_same_numbers_counts_as_the_old_version(tmp_path, monkeypatch):
    import experiments.reproduce as runner
    from experiments.summarize import load_study, provenance_lines

    monkeypatch.setattr(runner, "SAME_NUMBERS", {"bbbbbbbbbbbb": ("aaaaaaaaaaaa", "a kernel, bit for bit"),
                                                 "cccccccccccc": ("bbbbbbbbbbbb", "a refactor")})
    assert runner.numbers_version("cccccccccccc") == "aaaaaaaaaaaa" == runner.numbers_version("aaaaaaaaaaaa")
    assert runner.numbers_version("dddddddddddd") == "dddddddddddd"
    study = main_study("lm", quick=True)
    for r, code in zip(study.runs[:2], ("aaaaaaaaaaaa", "cccccccccccc")):
        r.folder(tmp_path).mkdir(parents=True)
        (r.folder(tmp_path) / "done.json").write_text(json.dumps(
            {"commit": "unknown", "code": code, "dirty": False, "args": [], "run": vars(r), "name": r.name,
             "final": {"val_loss": 1.0}}))
    # --regenerate keeps a run of code that makes this code's numbers, remakes one that does not or was dirty
    first = study.runs[0].folder(tmp_path)
    assert runner.made_by_other_code(first, "cccccccccccc") is None
    assert runner.made_by_other_code(first, "dddddddddddd") == "aaaaaaaaaaaa"
    runs = load_study(tmp_path, study)  # one table: no mixing refused
    lines = provenance_lines(runs)
    assert "Code cccccccccccc makes the numbers of code bbbbbbbbbbbb bit for bit: a refactor." in lines
    monkeypatch.setattr(runner, "SAME_NUMBERS", {})
    with pytest.raises(ValueError, match="2 code versions"):
        load_study(tmp_path, study)
    monkeypatch.setattr(runner, "SAME_NUMBERS", {"aaaaaaaaaaaa": ("bbbbbbbbbbbb", ""), "bbbbbbbbbbbb": ("aaaaaaaaaaaa", "")})
    with pytest.raises(ValueError, match="SAME_NUMBERS loops"):
        runner.numbers_version("aaaaaaaaaaaa")


@pytest.mark.slow
def test_quick_depth_study_end_to_end(tmp_path):
    reproduce(["--quick", "--study", "depth", "--results", str(tmp_path)])
    out = tmp_path / "lm" / "depth"
    assert (out / "depth.png").stat().st_size > 0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["depth"]) for r in rows] == [1, 2]
    for row in rows:
        runs = {v: [json.loads((tmp_path / "lm" / "runs" / f"{v}-L{row['depth']}-d32-lr0.003-s{s}" / "done.json").read_text())
                    ["final"]["val_loss"] for s in (0, 1)] for v in ("residual", "dhc4")}
        diffs = [h - b for h, b in zip(runs["dhc4"], runs["residual"])]
        assert float(row["delta"]) == pytest.approx(statistics.mean(diffs), rel=1e-9)
        assert json.loads(row["diffs"]) == pytest.approx(diffs, abs=1e-6)
        assert int(row["n"]) == 2 and int(row["wins"]) == sum(d < 0 for d in diffs)


@pytest.mark.slow
def test_regenerate_reruns_a_run_other_code_made_and_keeps_the_old_folder(tmp_path, monkeypatch, capsys):
    import experiments.reproduce as runner

    def made_by(code, dirty=False):
        monkeypatch.setattr(runner, "provenance", lambda: {"commit": "0" * 40, "dirty": dirty, "code": code})

    made_by("aaaaaaaaaaaa")
    args = ["--quick", "--study", "depth", "--results", str(tmp_path), "--max-runs", "1"]
    reproduce(args)
    pool = tmp_path / "lm" / "runs"
    old = json.loads((pool / "residual-L1-d32-lr0.003-s0" / "done.json").read_text())
    assert old["code"] == "aaaaaaaaaaaa"
    made_by("bbbbbbbbbbbb", dirty=True)  # new runs must name the code that made them
    with pytest.raises(SystemExit):
        reproduce(args + ["--regenerate"])
    assert "commit them first" in capsys.readouterr().err
    made_by("bbbbbbbbbbbb")
    reproduce(args + ["--regenerate"])  # the stale run goes first, ahead of the runs never made
    assert "other code made 1 of the finished runs (aaaaaaaaaaaa)" in capsys.readouterr().out
    archived = tmp_path / "lm" / "runs-code-aaaaaaaaaaaa" / "residual-L1-d32-lr0.003-s0" / "done.json"
    assert json.loads(archived.read_text()) == old  # moved whole, not rewritten
    new = json.loads((pool / "residual-L1-d32-lr0.003-s0" / "done.json").read_text())
    assert new["code"] == "bbbbbbbbbbbb" and new["final"]["val_loss"] == pytest.approx(old["final"]["val_loss"])
    assert not (pool / "dhc4-L1-d32-lr0.003-s0").exists()  # --max-runs 1: only the regenerated run ran
    reproduce(args)  # without --regenerate a finished run of any code is kept
    assert json.loads((pool / "residual-L1-d32-lr0.003-s0" / "done.json").read_text()) == new


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
    assert message.startswith("reproduce: lm residual-L1-d32-s0: error: text source") and str(tmp_path / "nope") in message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_runner_interrupted_inside_a_run_resumes_it_exactly(tmp_path, monkeypatch, capsys):
    """A real Ctrl-C in the middle of the second run: the runner stops with one line (exit 130); started again it
    keeps the finished run, resumes the interrupted one from its step-2 last.ckpt, and ends where an
    uninterrupted runner ends."""
    import torch

    import experiments.reproduce as runner

    original = runner.cli_args

    signal = ["--trainer.callbacks+=helpers.SignalAtStep", "--trainer.callbacks.step", "2",
              "--trainer.callbacks.signal", "SIGINT"]

    def ctrl_c_in_dhc4(run, *args):
        return original(run, *args) + (signal if run.name == "dhc4-L1-d32-s0" else [])

    def without_the_signal(args, results):  # the interrupted run is the same configuration as the resumed one
        return fingerprint(args[: len(args) - len(signal)] if args[-len(signal):] == signal else args, results)

    fingerprint = runner.fingerprint
    common = ["--quick", "--task", "lm", "--max-runs", "2"]
    monkeypatch.setattr(runner, "cli_args", ctrl_c_in_dhc4)
    monkeypatch.setattr(runner, "fingerprint", without_the_signal)
    with pytest.raises(SystemExit) as exit_info:
        runner.main([*common, "--results", str(tmp_path / "a")])
    assert exit_info.value.code == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("reproduce: lm dhc4-L1-d32-s0 stopped by SIGINT after a finished step")
    run_dir = tmp_path / "a" / "lm" / "runs" / "dhc4-L1-d32-s0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not (run_dir / "done.json").exists()
    residual = tmp_path / "a" / "lm" / "runs" / "residual-L1-d32-s0" / "done.json"
    before = residual.stat().st_mtime_ns

    monkeypatch.setattr(runner, "cli_args", original)
    runner.main([*common, "--results", str(tmp_path / "a")])
    runner.main([*common, "--results", str(tmp_path / "b")])  # the same two runs, never interrupted
    assert residual.stat().st_mtime_ns == before
    resumed, straight = (json.loads((tmp_path / r / "lm" / "runs" / "dhc4-L1-d32-s0" / "done.json").read_text()) for r in "ab")
    assert resumed["resumed"] and not straight["resumed"] and resumed["steps"] == straight["steps"] == 4
    assert resumed["final"]["val_loss"] == pytest.approx(straight["final"]["val_loss"], rel=1e-6)


def test_lr_sweep_table_pairs_the_arms_at_each_lr():
    from experiments.summarize import lr_sweep_markdown

    def done(variant, seed, lr, loss):
        return {"run": {"variant": variant, "knobs": [["L", 16], ["lr", lr]]}, "seed": seed, "final": {"val_loss": loss}}

    runs = {"residual": [done("residual", 0, 0.003, 2.2), done("residual", 1, 0.003, 2.1)],
            "dhc4": [done("dhc4", 0, 0.003, 2.1), done("dhc4", 1, 0.003, 2.05)],
            "residual-lr0.006": [done("residual", 0, 0.006, 2.0)], "dhc4-lr0.006": [done("dhc4", 0, 0.006, 1.9)],
            "dhc4-lr0.012": [done("dhc4", 0, 0.012, 1.8)]}  # DHC x4 alone at 4x: its row, nothing paired
    lines = lr_sweep_markdown(runs, 0.003).splitlines()
    rows = [line for line in lines if line.startswith("| 0.")]
    assert len(rows) == 3
    # 1x: diffs -0.1, -0.05 -> mean -0.075, std 0.035355, half width 12.706 * 0.035355 / sqrt(2) = 0.317650
    assert rows[0] == ("| 0.003 (1x) | 2.150 ± 0.071 (2 seeds) | 2.075 ± 0.035 (2 seeds) | "
                       "-0.075 [-0.393, +0.243], 2/2 |")
    assert rows[1] == "| 0.006 (2x) | 2.000 (1 seed) | 1.900 (1 seed) | -0.100, 1/1 |"
    assert rows[2] == "| 0.012 (4x) | — | 1.800 (1 seed) | — |"


def test_comparisons_table_pairs_a_control_with_its_reference():
    from experiments.grids import Study
    from experiments.summarize import comparisons_markdown

    def done(seed, loss):
        return {"seed": seed, "final": {"val_loss": loss}}

    study = Study("main", "lm", None, (), (0, 1, 2), comparisons=(
        ("dhc4", "residual-steps1100", "equal wall-clock"), ("mhc4", "residual", "not finished")))
    runs = {"dhc4": [done(0, 2.0), done(1, 2.1), done(2, 1.9)],
            "residual-steps1100": [done(0, 1.9), done(2, 1.95)]}  # seed 1 not finished: paired over 0 and 2
    rows = [line for line in comparisons_markdown(study, runs).splitlines() if line.startswith("| ") and "|---" not in line][1:]
    # diffs +0.1, -0.05: mean +0.025, std 0.106066, half width 12.706 * 0.106066 / sqrt(2) = 0.952950
    assert rows[0] == "| equal wall-clock | +0.025 [-0.928, +0.978], 1/2 | dhc4 | residual-steps1100 |"
    assert rows[1] == "| not finished | not run yet | mhc4 | residual |"


def test_vit_tables_pair_the_loss_and_top1():
    """ViT: the loss is the paired metric (lower is better), top-1 is paired beside it (higher is better)."""
    from experiments.grids import Study
    from experiments.summarize import comparisons_markdown, depth_markdown, depth_rows

    def done(variant, seed, loss, acc):
        return {"run": {"variant": variant, "knobs": [["L", 12], ["d", 64]]}, "seed": seed,
                "final": {"val_loss": loss, "val_acc1": acc}, "params": 100 if variant == "residual" else 110}

    runs = {"residual": [done("residual", 0, 1.0, 0.60), done("residual", 1, 1.2, 0.50)],
            "dhc4": [done("dhc4", 0, 0.9, 0.62), done("dhc4", 1, 1.25, 0.51)]}
    study = Study("controls", "vit", None, (), (0, 1), comparisons=(("dhc4", "residual", "q"),))
    row = [line for line in comparisons_markdown(study, runs).splitlines() if line.startswith("| q |")][0]
    # loss diffs -0.1, +0.05: mean -0.025, std 0.106066, half width 12.706 * 0.106066 / sqrt(2) = 0.952950;
    # top-1 diffs +2, +1 points: mean +1.5, std 0.707107, half width 6.353
    assert row == "| q | -0.025 [-0.978, +0.928], 1/2 | +1.5 [-4.9, +7.9], 2/2 | dhc4 | residual |"
    depth = Study("depth", "vit", None, (), (0, 1), base_knobs={"d": 64, "lr": 2e-3})
    (r,) = depth_rows(depth, runs)
    assert (r["depth"], r["n"], r["wins"], r["top1_wins"]) == (12, 2, 1, 2)
    assert r["top1_delta"] == pytest.approx(1.5) and r["residual_top1"] == pytest.approx(55.0)


def test_tables_report_each_seed_set_apart():
    """Choice, confirmation and added seeds each get their own paired cell, computed on that set's seeds only."""
    from experiments.grids import Study
    from experiments.summarize import comparisons_markdown, markdown, summary_rows

    def done(variant, seed, loss):
        return {"run": {"variant": variant, "knobs": []}, "seed": seed, "final": {"val_loss": loss, "val_ppl": 1.0},
                "params": 100, "val_curve": [[1, 16, loss]]}

    base = {0: 2.0, 1: 2.1, 2: 2.2, 3: 2.0, 4: 2.4}
    hc = {0: 1.9, 1: 2.0, 2: 2.25, 3: 1.8, 4: 2.45}  # diffs -0.1, -0.1 | +0.05 | -0.2, +0.05
    runs = {"residual": [done("residual", s, v) for s, v in base.items()],
            "dhc4": [done("dhc4", s, v) for s, v in hc.items()]}
    study = Study("main", "lm", None, (), (0, 1), confirm_seeds=(2,), added_seeds=(3, 4),
                  comparisons=(("dhc4", "residual", "q"),))
    row = [line for line in comparisons_markdown(study, runs).splitlines() if line.startswith("| q |")][0]
    # all 5: mean -0.06, std 0.108397, half 2.776445 * 0.108397 / sqrt(5) = 0.134590; choice: -0.1 +- 0 (2/2);
    # confirmation: one seed (no interval); added: mean -0.075, std 0.176777, half 12.706205 * 0.125 = 1.588276
    assert row == ("| q | -0.060 [-0.195, +0.075], 3/5 | -0.100 [-0.100, -0.100], 2/2 | +0.050, 0/1 | "
                   "-0.075 [-1.663, +1.513], 1/2 | dhc4 | residual |")
    (_, dhc4) = summary_rows("lm", runs, study)
    assert (dhc4["confirm_n"], dhc4["added_n"], dhc4["added_wins"]) == (1, 2, 1)
    table = markdown("lm", [dhc4], "cmd", added=True)
    assert "| confirmation seeds | added seeds | val ppl |" in table and "| +0.050, 0/1 | -0.075 [-1.663, +1.513], 1/2 |" in table


def test_a_second_added_set_is_reported_apart_from_the_first():
    """Seeds added after the added seeds were read get a column of their own: pooling them with the first added
    set (or the confirmation) would hide when they were added."""
    from experiments.grids import Study
    from experiments.summarize import comparisons_markdown, markdown, summary_rows

    def done(variant, seed, loss):
        return {"run": {"variant": variant, "knobs": []}, "seed": seed, "final": {"val_loss": loss, "val_ppl": 1.0},
                "params": 100, "val_curve": [[1, 16, loss]]}

    diffs = {0: -0.1, 1: +0.1, 2: -0.3, 3: -0.2, 4: -0.4}  # choice 0 | confirmation 1 | added 2 | second added 3, 4
    runs = {"residual": [done("residual", s, 2.0) for s in diffs],
            "dhc4": [done("dhc4", s, 2.0 + d) for s, d in diffs.items()]}
    study = Study("main", "lm", None, (), (0,), confirm_seeds=(1,), added_seeds=(2,), added2_seeds=(3, 4),
                  comparisons=(("dhc4", "residual", "q"),))
    row = [line for line in comparisons_markdown(study, runs).splitlines() if line.startswith("| q |")][0]
    # second added: mean -0.3, std 0.141421, half 12.706205 * 0.141421 / sqrt(2) = 1.270620
    assert row.endswith("| -0.300, 1/1 | -0.300 [-1.571, +0.971], 2/2 | dhc4 | residual |")
    (_, dhc4) = summary_rows("lm", runs, study)
    assert (dhc4["added_n"], dhc4["added2_n"], dhc4["added2_wins"]) == (1, 2, 2)
    table = markdown("lm", [dhc4], "cmd", added=2)
    assert "| added seeds | second added seeds | val ppl |" in table and "their number fixed before any ran" in table
    assert "| -0.300, 1/1 | -0.300 [-1.571, +0.971], 2/2 |" in table
    assert len(table.splitlines()[-2].split("|")) == len(table.splitlines()[-1].split("|"))  # header = row width


def test_step_time_ratio_pairs_each_run_with_its_seeds_baseline():
    """Seeds run on a slower day, which only the baseline has, do not move a variant's time ratio: each run is
    divided by the baseline run of its own seed."""
    from experiments.summarize import summary_rows

    def done(variant, seed, step):
        return {"run": {"variant": variant, "knobs": []}, "seed": seed, "final": {"val_loss": 2.0, "val_ppl": 1.0},
                "params": 100, "val_curve": [[1, 16, 2.0]], "step_time_s": step}

    runs = {"residual": [done("residual", 0, 0.1), done("residual", 1, 0.2), done("residual", 2, 0.4)],
            "dhc4": [done("dhc4", 0, 0.2), done("dhc4", 1, 0.3)]}
    base, dhc4 = summary_rows("lm", runs)
    assert base["step_time_ratio"] == 1.0
    assert dhc4["step_time_ratio"] == pytest.approx((2.0 + 1.5) / 2)  # unpaired it would read 0.25 / 0.233 = 1.07


def test_depth_table_describes_the_regime_its_knobs_set():
    """A study whose base knobs lengthen the budget and grow the dataset says so in its table's setup line."""
    from experiments.grids import VIT_BUDGET, Budget, Study
    from experiments.summarize import depth_markdown

    vit = Study("depth", "vit", VIT_BUDGET, (), (0, 1, 2), about="a",
                base_knobs={"d": 64, "lr": 2e-3, "steps": 1800, "train": 1500})
    text = depth_markdown(vit, [], "cmd", [])
    assert ("15,000 training and 3,000 validation images" in text
            and "1,800 steps x 64 images = 115,200 images per run" in text and "warmup 60 steps" in text)
    lm = Study("depth", "lm", Budget(steps=600, batch_size=16, val_every=100), (), (0,), about="a",
               base_knobs={"d": 64, "lr": 3e-3})
    assert "600 steps x 16 windows = 1,228,800 tokens per run" in depth_markdown(lm, [], "cmd", [])


def test_depth_figure_of_a_study_part_way():
    """Only the baseline finished (the runner summarizes after every --max-runs batch): the figure still draws."""
    from experiments.summarize import _png, depth_figure

    rows = [{"depth": 12, "residual_loss": 0.48, "residual_std": 0.01}, {"depth": 4, "residual_loss": 0.6,
                                                                       "residual_std": None}]
    assert _png(depth_figure(rows, "vit")).startswith(b"\x89PNG")


def test_drift_pairs_each_remade_run_with_its_archived_twin(tmp_path):
    """summarize drift: a run in runs/ against its twin in runs-code-<version>/, by final loss; runs without a
    twin are left out, and a variant's bit-identical runs are counted."""
    from experiments.summarize import drift_markdown, drift_rows

    def done(folder, variant, loss):
        folder.mkdir(parents=True)
        (folder / "done.json").write_text(json.dumps({"run": {"variant": variant}, "final": {"val_loss": loss},
                                                      "commit": "unknown", "code": folder.parent.name[-4:]}))  # aaaa or runs
    lm = tmp_path / "lm"
    done(lm / "runs-code-aaaa" / "dhc4-s0", "dhc4", 2.0)
    done(lm / "runs" / "dhc4-s0", "dhc4", 1.975)
    done(lm / "runs-code-aaaa" / "dhc4-s1", "dhc4", 2.0)
    done(lm / "runs" / "dhc4-s1", "dhc4", 2.01)
    done(lm / "runs-code-aaaa" / "residual-s0", "residual", 2.5)
    done(lm / "runs" / "residual-s0", "residual", 2.5)
    done(lm / "runs-code-aaaa" / "shc4-s0", "shc4", 2.1)  # its new run has not finished: not a pair
    rows = drift_rows(tmp_path, "lm")
    assert [(r["run"], r["old_code"], r["new_code"]) for r in rows] == [
        ("dhc4-s0", "aaaa", "runs"), ("dhc4-s1", "aaaa", "runs"), ("residual-s0", "aaaa", "runs")]
    assert [round(r["delta"], 6) for r in rows] == [-0.025, 0.01, 0.0] and [r["identical"] for r in rows] == [
        False, False, True]
    md = drift_markdown("lm", rows, "cmd")
    assert "| dhc4 | 2 | 0 | 0.0175 | 0.0250 (dhc4-s0) |" in md and "| residual | 1 | 1 | 0.0000 |" in md
    (lm / "runs" / "shc4-s0").mkdir()
    (lm / "runs" / "shc4-s0" / "done.json").write_text("{}")  # not a runner's done.json: named, not a KeyError
    with pytest.raises(ValueError, match="shc4-s0/done.json has no final val_loss"):
        drift_rows(tmp_path, "lm")


def test_product_gains_table_reads_the_last_sub_layer_of_every_seed():
    from experiments.summarize import product_gains_markdown

    def done(*last):
        return {"residual_gains": [[1.0, 1.0], list(last)]}

    runs = {"residual": [done(1.0, 1.0)], "dhc4": [done(9.0, 4.0), done(3.0, 2.0), done(5.0, 8.0)],
            "mhc4": [done(1.0, 1.0)]}
    rows = [line for line in product_gains_markdown(runs).splitlines() if line.startswith("| ") and "---" not in line]
    # median [min, max] over seeds of the last sub-layer's gains; the baseline has no stream product
    assert rows[1:] == ["| dhc4 | 3 | 2 | 5 [3, 9] | 4 [2, 8] |", "| mhc4 | 1 | 2 | 1 [1, 1] | 1 [1, 1] |"]
    assert product_gains_markdown({"residual": [done(1.0, 1.0)]}) == ""


def test_token_speedup_is_paired_seed_by_seed_with_an_interval_on_the_log_ratio():
    """Each seed's variant run against the same seed's baseline run: the baseline's units to its own final loss over
    the variant's units to that loss; a seed whose variant never gets there is counted, not averaged in."""
    from experiments.summarize import seed_speedups, speedup_cell

    def done(seed, curve):  # val_curve rows: step, units, loss
        return {"seed": seed, "final": {"val_loss": curve[-1][1]}, "val_curve": [[u, u, loss] for u, loss in curve]}

    base = [done(0, [(100, 3.0), (200, 2.0)]), done(1, [(100, 3.0), (200, 2.2)]), done(2, [(100, 3.0), (200, 2.0)])]
    hc = [done(0, [(100, 2.5), (200, 1.5)]),  # reaches 2.0 halfway: 150 units, 200 / 150 = 4/3
          done(1, [(100, 2.2), (200, 2.0)]),  # at the first evaluation: 200 / 100 = 2
          done(2, [(100, 2.6), (200, 2.1)]),  # never reaches 2.0
          done(3, [(100, 1.0), (200, 0.5)])]  # no baseline run of seed 3: not paired
    r = seed_speedups(hc, base)
    # geometric mean sqrt(4/3 * 2) = 1.632993; log ratios 0.287682, 0.693147: std 0.286707, half-width
    # 12.706 * 0.286707 / sqrt(2) = 2.575925 around their mean 0.490415
    assert (r["speedup_seeds"], r["speedup_reached"]) == (3, 2)
    assert r["speedup_geomean"] == pytest.approx(1.632993, rel=1e-6)
    assert (r["speedup_lo"], r["speedup_hi"]) == (pytest.approx(0.124244, rel=1e-4), pytest.approx(21.4631, rel=1e-4))
    assert speedup_cell(r) == "1.63 [0.12, 21.46], 2/3"
    assert speedup_cell(seed_speedups(hc[2:3], base)) == "—, 0/1" and seed_speedups(hc[3:], base) == {}
