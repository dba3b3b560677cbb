"""Run the baseline-vs-HC grids through the lit-hc CLI and write results/.

    python -m experiments.reproduce                  # both tasks, CPU grid on the embedded data (make reproduce)
    python -m experiments.reproduce --task lm        # one half
    python -m experiments.reproduce --quick          # a few steps per run (tests)
    python -m experiments.reproduce --scale paper --task lm --data /data/olmo-shards   # multi-GPU machine

One folder per run, results/<task>/<variant>-s<seed>/ (config.yaml, TensorBoard events, checkpoints/ which
git ignores, done.json). A run with done.json is skipped; a run with a checkpoint but no done.json resumes from
it; nothing is deleted. After the runs, results/<task>/summary.{csv,md} and plots are (re)written.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.grids import BASE_CONFIGS, BUDGETS, PAPER_GPU_HOURS, Run, grid_runs
from experiments.summarize import read_run_metrics, summarize_task
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_hc.callbacks import stop_message
from lit_hc.cli import BAD_INPUT, describe
from lit_hc.io import write_atomic

ROOT = Path(__file__).resolve().parents[1]


def cli_args(run: Run, scale: str, quick: bool, results: Path, data: str | None) -> list[str]:
    """The exact `lit-hc` arguments of one run (also stored in its done.json)."""
    budget = BUDGETS["quick" if quick else scale][run.task]
    args = ["fit", "--config", str(ROOT / BASE_CONFIGS[scale][run.task]),
            "--config", str(ROOT / f"configs/hc/{run.variant}.yaml"),
            "--seed_everything", str(run.seed), "--data.init_args.seed", str(run.seed),
            "--trainer.logger.init_args.save_dir", str(results), "--trainer.logger.init_args.name", run.task,
            "--trainer.logger.init_args.version", run.name, "--trainer.enable_progress_bar", "false"]
    if scale == "cpu":
        args += ["--trainer.max_steps", str(budget.steps), "--trainer.val_check_interval", str(budget.val_every),
                 "--trainer.log_every_n_steps", str(budget.log_every),
                 "--data.init_args.batch_size", str(budget.batch_size),
                 "--model.init_args.optim.warmup_steps", str(max(1, budget.steps // 10)),
                 "--model.init_args.log_connections_every_n_steps", str(max(budget.steps // 2, 1))]
    if quick and run.task == "lm":
        args += ["--data.init_args.source", str(quick_corpus())]
    if data is not None:
        args += ["--data.init_args.source" if run.task == "lm" else "--data.init_args.root", data]
    return args + list(budget.overrides)


def quick_corpus() -> Path:
    """A small slice of the stdlib (the email package) so QUICK runs do not read 30 MB each."""
    from lit_hc.data.text import stdlib_root

    return stdlib_root() / "email"


def run_one(run: Run, args: list[str], run_dir: Path, in_process: bool) -> None:
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    if resume:
        args = args + ["--ckpt_path", "last"]
    if in_process:  # the CPU grid: the same CLI a user runs, without paying the imports 24 times
        from unittest import mock

        from lit_hc.cli import cli_main

        with mock.patch.object(sys, "argv", [sys.argv[0]]):  # the runner's own flags are not CLI arguments
            cli = cli_main(args)
        measure = _measure(cli)
    else:  # multi-GPU: Lightning's DDP launcher re-executes the command line, so each run is its own process
        subprocess.run([sys.executable, "-m", "lit_hc", *args], cwd=ROOT, check=True)
        measure = {}
    metrics = read_run_metrics(run_dir, run.task)
    write_atomic(run_dir / "done.json", json.dumps({"run": vars(run), "args": args, "resumed": resume,
                                                   **measure, **metrics}, indent=1) + "\n")


def _measure(cli) -> dict:
    """Parameters, saved activations of one batch, and the learned connection matrices on a val batch."""
    import torch

    from lit_hc.analysis import connection_matrices, count_parameters, residual_gains, saved_activation_bytes

    net = cli.model.net.eval()
    x = next(iter(cli.datamodule.val_dataloader()))[0][:8]
    matrices = connection_matrices(net, x)
    net.train()
    return {"params": count_parameters(net)["total"], "saved_activation_bytes": saved_activation_bytes(net, x),
            "activation_batch": list(x.shape), "connection_matrices": matrices.tolist(),
            "residual_gains": residual_gains(matrices).tolist(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["lm", "vit", "all"], default="all")
    parser.add_argument("--scale", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few steps per run, tiny models (tests)")
    parser.add_argument("--seeds", type=int, default=None, help="raise every variant to this many seeds")
    parser.add_argument("--results", default=None,
                        help="results root (default: results; runs/quick for --quick; results/paper for --scale paper)")
    parser.add_argument("--data", default=None, help="data path for --scale paper (shards folder or ImageNet root)")
    parser.add_argument("--ablations", action="store_true", help="add the opt-in ablation runs (grids.ABLATIONS)")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs (then summarize)")
    a = parser.parse_args(argv)
    if a.scale == "paper" and a.data is None:
        parser.error("--scale paper needs --data: the tokenized shards (lm) or the ImageNet root (vit)")
    results = Path(a.results or ("runs/quick" if a.quick else "results/paper" if a.scale == "paper" else "results"))
    command = "python -m experiments.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
    tasks = ["lm", "vit"] if a.task == "all" else [a.task]
    runs = [r for t in tasks for r in grid_runs(t, a.seeds, a.ablations)]
    todo = [r for r in runs if not (results / r.task / r.name / "done.json").is_file()]
    print(f"reproduce: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run"
          + (f" (paper scale: about {sum(PAPER_GPU_HOURS[t] for t in tasks)} GPU-hours per seed-variant)"
             if a.scale == "paper" else ""), flush=True)
    started, finished = time.time(), 0
    for i, run in enumerate(todo[: a.max_runs]):
        elapsed = time.time() - started
        eta = f", ETA {elapsed / finished * (len(todo) - finished) / 60:.0f} min" if finished else ""
        print(f"[{i + 1}/{len(todo)}] {run.task} {run.name} (elapsed {elapsed / 60:.1f} min{eta})", flush=True)
        args = cli_args(run, a.scale, a.quick, results, a.data)
        try:
            run_one(run, args, results / run.task / run.name, in_process=a.scale == "cpu")
        except BAD_INPUT as e:  # the same one line `lit-hc` prints; finished runs stay as they are
            sys.exit(f"reproduce: {run.task} {run.name}: error: {describe(e)}")
        except SIGTERMException as e:  # SIGTERM or Ctrl-C inside a run: it saved last.ckpt and resumes from it
            message, code = stop_message(e)
            print(f"reproduce: {run.task} {run.name} {message.replace('same command and --ckpt_path last', 'same command')}",
                  file=sys.stderr)
            sys.exit(code)
        except subprocess.CalledProcessError as e:  # lit-hc has printed its own message above
            sys.exit(f"reproduce: {run.task} {run.name} failed (exit {e.returncode}); finished runs are kept, "
                     "run the same command again to continue")
        finished += 1
    for task in tasks:
        summarize_task(results / task, task, command.strip())
    print(f"reproduce: done in {(time.time() - started) / 60:.1f} min; tables and plots in {results}/", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C between runs or while summarizing: every file is written whole or not at all
        sys.exit("reproduce: interrupted; finished runs are kept, run the same command again to continue")
