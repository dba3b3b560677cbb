"""The benchmark runs end to end (the numbers themselves are not tested: they live in results/bench.md)."""
import csv
import subprocess

import pytest

from experiments.bench import VARIANTS, peer_available
from experiments.bench import main as bench


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # end to end (~40 s here): make test-slow and CI
def test_bench_smoke_eager(tmp_path):
    bench(["--quick", "--mode", "eager", "--repeats", "1", "--steps", "1", "--warmup", "1", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "bench.csv")
    variants = list(VARIANTS) + (["peer-hc4"] if peer_available() else [])  # the peer: with the bench extra
    assert [(r["model"], r["variant"]) for r in rows] == [(m, v) for m in ("lm", "vit") for v in variants]
    for r in rows:
        assert float(r["step_ms"]) > 0 and float(r["memory_mb"]) > 0 and float(r["infer_per_s"]) > 0
        if r["variant"] == "residual":
            assert float(r["step_ratio"]) == float(r["memory_ratio"]) == float(r["infer_ratio"]) == 1.0
        elif r["variant"] != "shc4":  # more streams, more saved activations
            assert float(r["memory_ratio"]) > 1.0
    memory = {(r["model"], r["variant"]): float(r["memory_mb"]) for r in rows}
    for model in ("lm", "vit"):  # recomputation keeps only H of each width connection for backward
        assert all(memory[(model, f"{v}-recompute")] < memory[(model, v)] for v in ("dhc4", "mhc4"))
    md = (tmp_path / "bench.md").read_text()
    assert "python -m experiments.bench --quick" in md and "torch " in md and "| dhc4 |" in md
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert not head or f"Code: commit `{head[:10]}`" in md  # which code made the numbers (none outside a checkout)


@pytest.mark.slow
def test_bench_smoke_compiled(tmp_path):
    bench(["--quick", "--model", "lm", "--mode", "compiled", "--variants", "dhc4", "mhc4", "--repeats", "1",
           "--steps", "1", "--warmup", "1", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "bench.csv")
    assert [(r["mode"], r["variant"]) for r in rows] == [("compiled", v) for v in ("residual", "dhc4", "mhc4")]


def test_unknown_variant_is_an_error(capsys):
    with pytest.raises(SystemExit):
        bench(["--variants", "dhc3"])
    assert "unknown variants ['dhc3']" in capsys.readouterr().err


def test_profile_writes_the_top_operators(tmp_path):
    bench(["--quick", "--model", "lm", "--profile", "--variants", "dhc4", "--out", str(tmp_path)])
    text = (tmp_path / "bench_profile.md").read_text()
    assert "## residual:" in text and "## dhc4:" in text and "`aten::" in text


def test_profile_of_a_sweep_gpt_sets_each_hc_variant_against_the_baseline(tmp_path):
    bench(["--quick", "--profile", "--widths", "d16-L2", "--variants", "dhc4", "--out", str(tmp_path)])
    text = (tmp_path / "bench_profile.md").read_text()
    assert "GPT d16-L2 (n_layer=2, n_embd=16" in text and "## residual:" in text
    table = text.split("## dhc4 against residual")[1].splitlines()
    rows = [r.strip("| ").split(" | ") for r in table if r.startswith("| `")]
    assert len(rows) == 12
    for _, base, this, diff, calls in rows:
        assert abs(float(this) - float(base) - float(diff)) <= 0.11
    assert any(calls.startswith("0 / ") for *_, calls in rows)  # an operator only HC calls
    diffs = [float(r[3]) for r in rows]
    assert diffs == sorted(diffs, reverse=True)


def test_profile_takes_one_sweep_gpt(capsys):
    with pytest.raises(SystemExit):
        bench(["--quick", "--profile", "--widths", "d16-L2", "d32"])
    assert "--profile --widths takes one of d16-L2 d32" in capsys.readouterr().err


def test_floor_bytes_counts_the_stream_passes():
    from experiments.bench import floor_bytes
    from lit_hc import GPTConfig

    arch = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=16)
    # 4 sub-layers x 32 tokens x float32: n = 4 streams move 5 n d = 320 values per token, the baseline 4 d = 64
    assert floor_bytes(arch, 2, 4) == 4 * 32 * 320 * 4 == 163_840
    assert floor_bytes(arch, 2, 1) == 4 * 32 * 64 * 4 == 32_768


def test_compute_floor_is_the_extra_arithmetic_over_the_baselines():
    from experiments.bench import WIDTHS, compute_floor
    from lit_hc import GPTConfig

    arch = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=16)
    assert compute_floor(arch, "residual") == 1.0
    # forward FLOPs per token of one module at d = 16, by hand (multiply-add = 2). DHC x4: the mix's n + 1 rows
    # 2*4*5*16 = 640, the depth connection 2*4*16 - 16 = 112, the LayerNorm 5*4*16 = 320, the projection onto
    # n + 2 coefficients 2*4*16*6 = 768, tanh and scales 3*4*6 = 72: 1,912. mHC x4: RMS 3*64 = 192, phi 2*64*24 =
    # 3,072, 20 Sinkhorn iterations 20*4*16 = 1,280, H_pre H 128, H_res H 2*16*16 = 512, the depth add 128 - 16:
    # 5,296. The same baseline under both, so their overheads stand in that ratio.
    dhc, mhc = compute_floor(arch, "dhc4") - 1, compute_floor(arch, "mhc4") - 1
    assert mhc / dhc == pytest.approx(5296 / 1912, rel=1e-12)
    assert compute_floor(arch, "peer-hc4") == compute_floor(arch, "dhc4-fused") == 1 + dhc  # the same arithmetic
    # the share shrinks with width: at d = 64 x 16 layers mHC x4's floor exceeds DHC x4's by more than 10%
    narrow, wide = WIDTHS["d64-L16"]["arch"], WIDTHS["d1024"]["arch"]
    assert compute_floor(narrow, "mhc4") / compute_floor(narrow, "dhc4") > 1.10
    assert compute_floor(wide, "mhc4") < compute_floor(narrow, "dhc4")


def test_width_sweep_smoke(tmp_path):
    bench(["--sweep", "--quick", "--mode", "eager", "--variants", "dhc4", "mhc4", "--repeats", "1", "--steps", "1",
           "--warmup", "1", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "bench_widths.csv")
    assert [(r["width"], r["variant"]) for r in rows] == [(w, v) for w in ("d16-L2", "d32") for v in ("residual", "dhc4", "mhc4")]
    for r in rows:
        assert float(r["floor_ratio"]) >= 1.0 and float(r["bandwidth_gb_s"]) > 0
        if r["variant"] != "residual":  # the overhead over the floor's, as the table states it
            expected = (float(r["step_ratio"]) - 1) / float(r["floor_overhead"])
            assert float(r["overhead_over_floor"]) == pytest.approx(expected, rel=2e-2)
            compute = (float(r["step_ratio"]) - 1) / (float(r["compute_floor_ratio"]) - 1)
            assert float(r["overhead_over_compute_floor"]) == pytest.approx(compute, rel=2e-2)
    md = (tmp_path / "bench_widths.md").read_text()
    assert "| dhc4 |" in md and "compute floor" in md and "mhc4 / dhc4: d16-L2 " in md


def test_width_sweep_gives_the_spread_of_the_ratio_over_rounds(tmp_path):
    bench(["--sweep", "--quick", "--mode", "eager", "--variants", "dhc4", "mhc4", "--repeats", "3", "--steps", "1",
           "--warmup", "1", "--widths", "d32", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in _rows(tmp_path / "bench_widths.csv")}
    base = [float(t) for t in rows["residual"]["round_ms"].split(";")]
    assert len(base) == 3
    for v in ("dhc4", "mhc4"):  # the spread is the per-round ratio to the baseline timed in the same round
        ratios = [float(t) / b for t, b in zip(rows[v]["round_ms"].split(";"), base)]
        assert float(rows[v]["round_ratio_min"]) == pytest.approx(min(ratios), rel=3e-3)
        assert float(rows[v]["round_ratio_max"]) == pytest.approx(max(ratios), rel=3e-3)
    md = (tmp_path / "bench_widths.md").read_text()
    cell = md.split("| dhc4 |")[1].split("|")[0]  # "2.15x [1.99-2.30] (1.004x), ..."
    shown = [float(x) for x in cell.split("[")[1].split("]")[0].split("-")]
    assert shown == pytest.approx([float(rows["dhc4"]["round_ratio_min"]), float(rows["dhc4"]["round_ratio_max"])],
                                  abs=0.006)
    assert "mhc4 / dhc4: d32 " in md and "x [" in md.split("mhc4 / dhc4: d32 ")[1][:12]


def test_width_sweep_takes_a_subset_of_widths(tmp_path, capsys):
    bench(["--sweep", "--quick", "--mode", "eager", "--variants", "dhc4", "--repeats", "1", "--steps", "1",
           "--warmup", "1", "--widths", "d32", "--out", str(tmp_path)])
    assert [(r["width"], r["variant"]) for r in _rows(tmp_path / "bench_widths.csv")] == [("d32", "residual"),
                                                                                          ("d32", "dhc4")]
    with pytest.raises(SystemExit):
        bench(["--sweep", "--quick", "--widths", "d48", "--out", str(tmp_path)])
    assert "--widths d48: not in the sweep; it has d16-L2 d32" in capsys.readouterr().err


def test_connection_costs_smoke(tmp_path):
    import torch

    threads = torch.get_num_threads()
    bench(["--connections", "--quick", "--variants", "dhc4", "mhc4", "--repeats", "1", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # measured on 1 thread, then given back
    rows = _rows(tmp_path / "bench_connections.csv")
    assert [(r["width"], r["variant"]) for r in rows] == [(w, v) for w in ("d16-L2", "d32") for v in ("residual", "dhc4", "mhc4")]
    for r in rows:
        tokens, d, n = int(r["tokens"]), int(r["d"]), int(r["n"])
        assert tokens == 32 and n == (1 if r["variant"] == "residual" else 4)
        # the floor: one sub-layer's extra stream bytes (5 n d per token against the baseline's 4 d; none for the
        # baseline itself) at the measured bandwidth
        floor_ms = 1e3 * tokens * 4 * (5 * n * d - 4 * d if n > 1 else 0) / (float(r["bandwidth_gb_s"]) * 1e9)
        assert float(r["floor_overhead_ms"]) == pytest.approx(floor_ms, rel=2e-3)  # the CSV keeps 4 digits
        if n > 1:
            whole, width = float(r["connection_ms"]), float(r["width_ms"])
            assert float(r["depth_ms"]) == pytest.approx(whole - width, abs=2e-3 * whole)
            assert float(r["overhead_over_floor"]) == pytest.approx(float(r["overhead_ms"]) / floor_ms, rel=2e-3)
    assert "| mhc4 |" in (tmp_path / "bench_connections.md").read_text()


@pytest.mark.slow
def test_fit_mode_times_real_lit_hc_fit_runs(tmp_path):
    """--fit: real `lit-hc fit` runs of the (quick) LM main grid, the fused variant through the CLI flag."""
    bench(["--fit", "--quick", "--variants", "dhc4-fused", "--repeats", "1", "--fit-steps", "3", "--out", str(tmp_path)])
    rows = _rows(tmp_path / "bench_fit.csv")
    assert [(r["round"], r["variant"]) for r in rows] == [("0", "residual"), ("0", "dhc4-fused")]
    assert float(rows[0]["step_ratio"]) == 1.0 and all(float(r["step_ms"]) > 0 for r in rows)
    assert "| dhc4-fused |" in (tmp_path / "bench_fit.md").read_text()


def test_fit_mode_refuses_variants_the_grid_does_not_run(capsys):
    with pytest.raises(SystemExit):
        bench(["--fit", "--variants", "dhc4-recompute"])
    assert "--fit --variants dhc4-recompute" in capsys.readouterr().err


def test_optimizer_ab_times_adamws_implementations_and_checks_their_bits(tmp_path):
    from experiments.optimizer_ab import main as optimizer_ab

    optimizer_ab(["--variants", "dhc4", "--steps", "5", "--out", str(tmp_path)])
    rows = [r.strip("| ").split(" | ") for r in (tmp_path / "optimizer_ab.md").read_text().splitlines()
            if r.startswith("| dhc4 |")]
    assert [r[2] for r in rows] == ["per-tensor loop", "foreach", "fused"]
    assert rows[0][4:] == ["yes", "0.0e+00"] and rows[1][4] == "yes"  # what `lit-hc fit` relies on
    assert all(float(r[3]) > 0 and int(r[1]) == int(rows[0][1]) for r in rows)


def test_optimizer_ab_refuses_bad_input_in_one_line(capsys):
    from experiments.optimizer_ab import main as optimizer_ab

    for args, message in ((["--variants", "dhc3"], "invalid choice: 'dhc3'"), (["--steps", "1"], "--steps 1: at least 2")):
        with pytest.raises(SystemExit):
            optimizer_ab(args)
        assert message in capsys.readouterr().err
