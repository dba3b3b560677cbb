"""Run the experiment studies through the lit-hc CLI and write results/.

    python -m experiments.reproduce                  # both tasks' main grids, CPU, embedded data (make reproduce)
    python -m experiments.reproduce --study depth    # residual vs DHC x4 against depth (make reproduce STUDY=depth)
    python -m experiments.reproduce --task lm        # one half
    python -m experiments.reproduce --quick          # a few steps per run (tests)
    python -m experiments.reproduce --scale paper --task lm --data /data/olmo-shards   # multi-GPU machine

One folder per run in the task's pool, results/<task>/runs/<run name>/ (config.yaml, TensorBoard events,
checkpoints/ which git ignores, run.json, done.json); studies share runs whose settings coincide. A run with
done.json is skipped; a run with a checkpoint but no done.json resumes from it; nothing is deleted. A folder that
holds a run of another configuration (its fingerprint differs) stops the runner with one line. After the runs,
each study's tables and plots are (re)written to results/<task>/<study>/.

With --regenerate, finished runs that other code made (another code version, or uncommitted changes) run again
from this checkout; each one's old folder moves to results/<task>/runs-code-<its version>/<run name>/ just before
its new run starts, so a stopped runner leaves every run either old or new, and the old numbers stay readable.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.grids import BASE_CONFIGS, GPU_HOURS, KNOBS, STUDIES, Run, Study, knob_arg, studies
from experiments.summarize import read_run_metrics, summarize_study
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_hc.callbacks import stop_message
from lit_hc.cli import BAD_INPUT, describe
from lit_hc.io import write_atomic

ROOT = Path(__file__).resolve().parents[1]
# The code that decides a run's numbers once its arguments are fixed: a change anywhere else (the runner, the study
# definitions, docs, summaries, tests) leaves finished runs valid. The YAML files a run reads are tracked per run
# (config_blobs), so adding an overlay does not make every earlier run "other code".
CODE_PATHS = ("lit_hc", "pyproject.toml", "uv.lock")


# Code versions that make the numbers of an earlier version bit for bit, each with its evidence: a run of the
# earlier version is then neither "other code" for --regenerate nor a second version in one table. An entry needs
# both a test that the changed path computes exactly what the old one did and remade runs identical to their
# twins (python -m experiments.summarize drift); anything less is a new version, and its runs are remade.
# version -> (the earlier version whose numbers it makes bit for bit, the evidence)
SAME_NUMBERS: dict[str, tuple[str, str]] = {
    "f5d12c23c11b": (
        "6614ba2c7e22",
        "mHC's Sinkhorn moved into one C++ kernel per call on the CPU, doing the PyTorch loop's arithmetic in its "
        "order: bit for bit at n <= 4 (tests/test_cpu_kernels.py; every mHC run here is x4), and the LM main "
        "grid's mHC x4 seeds 0 and 1, remade, have the same validation curves, connection matrices and residual "
        "gains to the last bit (results/lm/drift.md)",
    ),
    "96f8bf2eeb2d": (
        "f5d12c23c11b",
        "the same Sinkhorn kernel also called as a custom op under torch.compile (no run here is compiled); the "
        "eager path makes the same calls in the same order (tests/test_cpu_kernels.py), and the LM main grid's "
        "mHC x4 seed 0, remade, has the same validation curve, connection matrices and residual gains to the last "
        "bit (results/lm/drift.md)",
    ),
    "db7544dd581c": (
        "96f8bf2eeb2d",
        "HCConfig.fused, an opt-in C++ path (off in every run here): with it off, the Functions make the same calls "
        "in the same order (tests/test_fused_kernels.py checks the off path bit for bit), and the depth study's DHC "
        "x4 L = 4 seed 0 at lr 6e-3 and the LM main grid's mHC x4 seed 0, remade, have the same validation curves, "
        "connection matrices and residual gains to the last bit (results/lm/drift.md)",
    ),
    "3490d68d7ffc": (
        "db7544dd581c",
        "the C++ kernels built with OpenMP, so the Sinkhorn kernel's blocks of tokens, each computed alone, run on "
        "every thread (before, on one): the same arithmetic per block (tests/test_cpu_kernels.py, bit for bit), and "
        "the same two runs, remade again, are identical to the last bit (results/lm/drift.md)",
    ),
    "7ad7f64bcf88": (
        "3490d68d7ffc",
        "hc_fused.cpp's loops rewritten with vector accumulators, the opt-in fused path only (off in every run here; "
        "with it off the kernel is not even built: _fused_kernel). The depth study's DHC x4 L = 4 seed 0 at lr 6e-3, "
        "made by both versions on the same machine the same day, has the same events to the last bit (validation and "
        "training curves, residual gains); both differ from the committed run of 3490d68d7ffc by float rounding, as "
        "a residual run of unchanged code does: this machine's float results vary between sessions "
        "(results/lm/machine-check/)",
    ),
    "f793a12d2926": (
        "7ad7f64bcf88",
        "mHC's width connection in one C++ call, the opt-in fused path only (off in every run here, so the kernel is "
        "not even built: _fused_kernel returns None before anything else changes). The depth study's DHC x4 L = 4 "
        "seed 0 at lr 6e-3, made by both versions on the same machine the same day, has the same events, connection "
        "matrices and residual gains to the last bit (results/lm/machine-check/, 2026-12-05)",
    ),
    "67c12d99b390": (
        "f793a12d2926",
        "a comment in lit_hc/csrc/hc_fused.cpp reworded, nothing else; the same DHC x4 L = 4 seed 0, made by both "
        "versions the same day, is identical to the last bit (results/lm/machine-check/, 2026-12-05, later)",
    ),
    "c3ce5a52e9a5": (
        "67c12d99b390",
        "the opt-in fused path's width connections also as library ops under torch.compile (off in every run here, "
        "and no run here is compiled); the eager path's conditions moved into a helper unchanged. The same DHC x4 "
        "L = 4 seed 0, made by both versions one after the other, is identical to the last bit "
        "(results/lm/machine-check/, 2026-12-05, a session later)",
    ),
    "0a6cccdd2149": (
        "c3ce5a52e9a5",
        "the compiled fused path's op registrations tidied (one fake for both backward ops, shorter autograd "
        "wrappers) and a comment; no run here is compiled. The same DHC x4 L = 4 seed 0, made by both versions one "
        "after the other, is identical to the last bit (results/lm/machine-check/, 2026-12-05, last)",
    ),
    "c2aa6da331e1": (
        "0a6cccdd2149",
        "mHC's width connection in the opt-in fused kernel vectorised over tokens (no run here uses mHC with fused; "
        "DHC's part of the kernel unchanged). The same DHC x4 L = 4 seed 0, made by both versions one after the "
        "other, is identical to the last bit (results/lm/machine-check/, 2026-12-05, a session later)",
    ),
    "ce0582e48414": (
        "c2aa6da331e1",
        "the training modules' AdamW with foreach=True, the same update per element as the per-tensor loop (tested bit "
        "for bit for GPT and ViT in tests/test_models.py). The same DHC x4 and residual L = 4 seed 0, made by both "
        "versions one after the other, are identical to the last bit (results/lm/machine-check/, 2026-12-05, a "
        "session later, second)",
    ),
    "dd25ed7da4a7": (
        "ce0582e48414",
        "the fused width connections save H as given for backward, not a contiguous copy (the same values reach the "
        "kernel both ways). The LM main grid's fused DHC x4 seed 0, made by both versions one after the other, has "
        "the same curves and final parameters to the last bit (results/lm/machine-check/, 2026-12-05, a session "
        "later, third)",
    ),
}


def numbers_version(code: str) -> str:
    """The oldest code version whose numbers `code` makes bit for bit (SAME_NUMBERS), `code` itself if none."""
    seen = {code}
    while code in SAME_NUMBERS:
        code = SAME_NUMBERS[code][0]
        if code in seen:
            raise ValueError(f"SAME_NUMBERS loops at {code}; each entry must point to an older version")
        seen.add(code)
    return code


class ConfigMismatch(ValueError):
    """A run folder holds a run of another configuration."""


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def code_version(commit: str) -> str | None:
    """A short hash of git's tree ids of CODE_PATHS at `commit`: equal for two commits whose model, training
    and config code are equal. None where git cannot resolve the commit (not a checkout, a shallow clone)."""
    try:
        return hashlib.sha1(_git("rev-parse", *(f"{commit}:{p}" for p in CODE_PATHS)).encode()).hexdigest()[:12]
    except (OSError, subprocess.CalledProcessError):
        return None


def config_blobs(commit: str, args: list[str]) -> dict[str, str] | None:
    """{config path relative to the checkout: git's blob id at `commit`} for every --config file of a run."""
    paths = [Path(args[i + 1]).resolve() for i, a in enumerate(args[:-1]) if a == "--config"]
    try:
        rel = [p.relative_to(ROOT).as_posix() for p in paths]
        return dict(zip(rel, _git("rev-parse", *(f"{commit}:{r}" for r in rel)).split()))
    except (ValueError, OSError, subprocess.CalledProcessError):  # outside the checkout, or not a git checkout
        return None


def provenance() -> dict:
    """The commit the runner's code comes from, whether CODE_PATHS or configs/ had uncommitted changes, and the
    code version.
    Read once when the runner starts: the runner keeps the code it imported even if the tree changes later."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--", *CODE_PATHS, "configs"))
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist, a copied folder)
        return {"commit": "unknown", "dirty": True, "code": "unknown"}
    return {"commit": commit, "dirty": dirty, "code": code_version(commit) or "unknown"}


def cli_args(run: Run, study: Study, scale: str, quick: bool, results: Path, data: str | None) -> list[str]:
    """The exact `lit-hc` arguments of one run (also stored in its done.json)."""
    budget = study.budget
    args = ["fit", "--config", str(ROOT / BASE_CONFIGS[scale][run.task]),
            "--config", str(ROOT / f"configs/hc/{run.variant}.yaml"),
            "--seed_everything", str(run.seed), "--data.init_args.seed", str(run.seed),
            "--trainer.logger.init_args.save_dir", str(results / run.task), "--trainer.logger.init_args.name", "runs",
            "--trainer.logger.init_args.version", run.name, "--trainer.enable_progress_bar", "false"]
    if scale == "cpu":
        args += ["--trainer.max_steps", str(budget.steps), "--trainer.val_check_interval", str(budget.val_every),
                 "--trainer.log_every_n_steps", str(budget.log_every),
                 "--data.init_args.batch_size", str(budget.batch_size),
                 "--model.init_args.optim.warmup_steps", str(max(1, budget.steps // 10)),
                 "--model.init_args.log_connections_every_n_steps", str(max(budget.steps // 2, 1))]
    for key, value in run.knobs:
        args += [KNOBS[key][run.task], knob_arg(value)]
    if quick and run.task == "lm":
        args += ["--data.init_args.source", str(quick_corpus())]
    if data is not None:
        args += ["--data.init_args.source" if run.task == "lm" else "--data.init_args.root", data]
    return args + list(budget.overrides)


def fingerprint(args: list[str], results: Path) -> str:
    """A hash of a run's arguments with this checkout's and the results' locations taken out, so the same run
    has the same fingerprint in any clone."""
    portable = [a.replace(str(results), "<results>").replace(str(ROOT), "<root>") for a in args]
    return hashlib.sha1(json.dumps(portable).encode()).hexdigest()[:12]


def check_folder(run_dir: Path, print_: str) -> None:
    """Refuse a folder that holds a run of another configuration: its events would be merged into this run's."""
    for name in ("run.json", "done.json"):
        path = run_dir / name
        if path.is_file():
            found = json.loads(path.read_text()).get("fingerprint")
            if found != print_:
                raise ConfigMismatch(
                    f"{run_dir} holds a run of another configuration (fingerprint {found}, this one {print_}); "
                    "move that folder away or give this run other settings")


def made_by_other_code(run_dir: Path, code: str) -> str | None:
    """The code version of the finished run in `run_dir` if it does not make `code`'s numbers (SAME_NUMBERS) or had
    uncommitted changes (then "<version>-dirty"); None for an unfinished run or one this code's numbers."""
    done = run_dir / "done.json"
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    version = str(record.get("code") or "unknown")
    if record.get("dirty", True):
        return version + "-dirty"
    return None if numbers_version(version) == numbers_version(code) else version


def archive_run(run_dir: Path, version: str) -> None:
    """Move a finished run of other code to <pool>-code-<version>/<name>/ (nothing is deleted)."""
    dest = run_dir.parent.with_name(f"{run_dir.parent.name}-code-{version}") / run_dir.name
    if dest.exists():
        raise ConfigMismatch(f"{run_dir} was made by code {version}, and {dest} already holds a run of that code; "
                             "move one of them away")
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(dest)


def quick_corpus() -> Path:
    """A small slice of the stdlib (the email package) so QUICK runs do not read 30 MB each."""
    from lit_hc.data.text import stdlib_root

    return stdlib_root() / "email"


def run_one(run: Run, args: list[str], run_dir: Path, in_process: bool, record: dict) -> None:
    """Train one run and write its done.json; `record` (fingerprint, provenance) goes into run.json first."""
    write_atomic(run_dir / "run.json", json.dumps({"run": vars(run), "name": run.name, **record}, indent=1) + "\n")
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
    write_atomic(run_dir / "done.json", json.dumps({"run": vars(run), "name": run.name, **record, "args": args,
                                                   "resumed": resume, **measure, **metrics}, indent=1) + "\n")


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
    parser.add_argument("--study", choices=list(STUDIES), default="main")
    parser.add_argument("--task", choices=["lm", "vit", "all"], default="all")
    parser.add_argument("--scale", choices=["cpu", "mid", "paper"], default="cpu",
                        help="cpu: the studies here; mid: GPT-2 small on 8 GPUs; paper: the HC paper's OLMo-1B / ViT-B")
    parser.add_argument("--quick", action="store_true", help="a few steps per run, tiny models (tests)")
    parser.add_argument("--seeds", type=int, default=None, help="raise every variant of the main grid to this many seeds")
    parser.add_argument("--results", default=None,
                        help="results root (default: results; runs/quick for --quick; results/paper for --scale paper)")
    parser.add_argument("--data", default=None, help="data path for --scale mid/paper (shards folder or ImageNet root)")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs (then summarize)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help="run only these variants of the study (e.g. the baseline first); the tables cover all")
    parser.add_argument("--allow-mixed-code", action="store_true",
                        help="let a table combine runs made by different code versions (they are marked)")
    parser.add_argument("--regenerate", action="store_true",
                        help="run again the finished runs that other code made; their folders move to "
                             "results/<task>/runs-code-<version>/")
    a = parser.parse_args(argv)
    if a.scale != "cpu" and a.data is None:
        parser.error(f"--scale {a.scale} needs --data: the tokenized shards (lm) or the ImageNet root (vit)")
    results = Path(a.results or ("runs/quick" if a.quick else f"results/{a.scale}" if a.scale != "cpu" else "results"))
    command = "python -m experiments.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        chosen = studies(a.study, ["lm", "vit"] if a.task == "all" else [a.task], a.quick, a.seeds, a.scale)
    except ValueError as e:
        parser.error(str(e))
    runs = list(dict.fromkeys(r for study in chosen for r in study.runs))
    if a.variants:
        unknown = sorted(set(a.variants) - {r.variant for r in runs})
        if unknown:
            parser.error(f"--variants {' '.join(unknown)}: not in the {a.study} study; it has "
                         f"{' '.join(dict.fromkeys(r.variant for r in runs))}")
        runs = [r for r in runs if r.variant in a.variants]
    origin = provenance()
    if a.regenerate and (origin["code"] == "unknown" or origin["dirty"]):
        parser.error("--regenerate needs a git checkout without uncommitted changes to lit_hc/, configs/, "
                     "pyproject.toml or uv.lock: commit them first, so the new runs name the code that made them")
    plan = []
    for r in runs:
        args = cli_args(r, next(s for s in chosen if r in s.runs), a.scale, a.quick, results, a.data)
        plan.append((r, args, fingerprint(args, results)))
    try:
        for r, _, print_ in plan:
            check_folder(r.folder(results), print_)
    except ConfigMismatch as e:
        sys.exit(f"reproduce: error: {e}")
    stale = {}  # run -> the code version that made its finished folder, when --regenerate runs it again
    if a.regenerate:
        stale = {r: v for r, *_ in plan if (v := made_by_other_code(r.folder(results), origin["code"]))}
    todo = [p for p in plan if p[0] in stale or not (p[0].folder(results) / "done.json").is_file()]
    if stale:
        print(f"reproduce: --regenerate: other code made {len(stale)} of the finished runs "
              f"({', '.join(sorted(set(stale.values())))}); each one's folder moves to runs-code-<version>/ as it "
              "runs again", flush=True)
    print(f"reproduce: {a.study}: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run "
          f"(commit {origin['commit'][:10]}{', uncommitted changes' if origin['dirty'] else ''})"
          + (f" ({a.scale} scale: about {sum(GPU_HOURS[a.scale][r.task] for r in runs):,} GPU-hours in all)"
             if a.scale != "cpu" else ""), flush=True)
    started, finished = time.time(), 0
    for i, (run, args, print_) in enumerate(todo[: a.max_runs]):
        elapsed = time.time() - started
        eta = f", ETA {elapsed / finished * (len(todo) - finished) / 60:.0f} min" if finished else ""
        print(f"[{i + 1}/{len(todo)}] {run.task} {run.name} (elapsed {elapsed / 60:.1f} min{eta})", flush=True)
        record = {"fingerprint": print_, **origin, "configs": config_blobs(origin["commit"], args), "study": a.study}
        try:
            if run in stale:
                archive_run(run.folder(results), stale[run])
            run_one(run, args, run.folder(results), in_process=a.scale == "cpu", record=record)
        except ConfigMismatch as e:
            sys.exit(f"reproduce: error: {e}")
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
    try:
        for study in chosen:
            summarize_study(results, study, command.strip(), allow_mixed=a.allow_mixed_code)
    except ValueError as e:  # runs of different code in one table
        sys.exit(f"reproduce: error: {e}")
    print(f"reproduce: done in {(time.time() - started) / 60:.1f} min; tables and plots in {results}/", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C between runs or while summarizing: every file is written whole or not at all
        sys.exit("reproduce: interrupted; finished runs are kept, run the same command again to continue")
