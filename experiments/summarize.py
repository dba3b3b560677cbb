"""Tables and plots of a study from its run folders, into results/<task>/<study>/: summary.{csv,md} and plots.
Every number is read from the runs' TensorBoard events and done.json files.

    python -m experiments.summarize depth --task lm  # results/lm/depth/ from results/lm/runs/
    python -m experiments.summarize main --task lm
    python -m experiments.summarize drift --task lm  # results/lm/drift.md: runs remade by newer code vs. their old twins
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import yaml
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.grids import LM_MAIN_DEPTH, PAPER, STUDIES, VARIANTS, Study, knob_text, studies
from experiments.stats import Paired, mean_std, paired
from lit_hc.analysis import unrolled_connections
from lit_hc.io import write_atomic
from lit_hc.plots import unrolled_connections_figure

UNIT = {"lm": "tokens", "vit": "images"}
TASK_NAME = {"lm": "LM", "vit": "ViT"}


def event_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} over all event files of a run (a resumed run has several; later files win)."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(str(run_dir / "events.out.tfevents.*")), key=os.path.getmtime):
        ea = EventAccumulator(path, size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in ea.Scalars(tag)})
    return out


def units_per_step(run_dir: Path, task: str) -> int:
    """Tokens (LM) or images (ViT) per optimizer step, from the run's saved config.yaml."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    trainer, data = config["trainer"], config["data"]["init_args"]
    devices = trainer.get("devices", 1)
    devices = devices if isinstance(devices, int) and devices > 0 else 1  # -1 / 'auto': unknown here, as 1
    per_step = data["batch_size"] * devices * (trainer.get("num_nodes") or 1) * (trainer.get("accumulate_grad_batches") or 1)
    return per_step * (data["block_size"] if task == "lm" else 1)


def read_run_metrics(run_dir: Path, task: str) -> dict:
    """Validation curve, final validation metrics and median step time of one run, from its events."""
    s = event_scalars(run_dir)
    per_step = units_per_step(run_dir, task)
    metric = "val/loss"
    # Lightning logs the validation that follows N optimizer steps at step N - 1; the curve stores N.
    curve = [[step + 1, (step + 1) * per_step, s[metric][step]] + ([s["val/acc1"][step]] if task == "vit" else [])
             for step in sorted(s[metric])]
    final = {k.replace("/", "_"): v[max(v)] for k, v in s.items() if k.startswith("val/")}
    rate_tag = f"train/{UNIT[task]}_per_sec"
    rates = list(s.get(rate_tag, {}).values())
    # The rate is logged per step; the batch units divided by it is the wall time of one training step.
    step_time = per_step / statistics.median(rates) if rates else None
    return {"units_per_step": per_step, "val_curve": curve, "final": final, "step_time_s": step_time,
            "steps": max(s[metric]) + 1}


def label(run: dict, study: Study) -> str:
    """A run's row in a table: its variant and the knobs in which it differs from the study's base settings."""
    knobs = [(k, v) for k, v in run["run"]["knobs"] if study.base_knobs.get(k) != v]
    return "-".join([run["run"]["variant"], *(knob_text(k, v) for k, v in knobs)])


def _code(done: dict) -> tuple[str, dict[str, str]]:
    """The run's code version and the blob ids of the config files it read, recomputed from its commit where git
    knows it (so a change of what counts as code applies to old runs too), else what it recorded."""
    from experiments.reproduce import code_version, config_blobs

    commit = done.get("commit", "unknown")
    known = commit != "unknown"
    code = (code_version(commit) if known else None) or done.get("code", "unknown")
    return code, (config_blobs(commit, done["args"]) if known else None) or done.get("configs") or {}


def load_study(results: Path, study: Study, allow_mixed: bool = False) -> dict[str, list[dict]]:
    """label -> finished runs (done.json, plus 'seed'), in the study's order; runs not finished yet are left out.

    Runs made by different code (the `code` hash in done.json; versions that make the same numbers bit for bit,
    SAME_NUMBERS, count as one) are refused in one table unless allow_mixed."""
    runs: dict[str, list[dict]] = {}
    for r in study.runs:
        path = r.folder(results) / "done.json"
        if path.is_file():
            done = json.loads(path.read_text())
            code, blobs = _code(done)
            runs.setdefault(label(done, study), []).append(done | {"seed": r.seed, "code": code, "configs": blobs})
    from experiments.reproduce import numbers_version

    done = [d for rs in runs.values() for d in rs]
    codes = {numbers_version(d["code"]) for d in done}  # versions that make the same numbers count as one
    configs = {path: {d["configs"][path] for d in done if path in d["configs"]} for d in done for path in d["configs"]}
    changed = sorted(path for path, blobs in configs.items() if len(blobs) > 1)
    if (len(codes) > 1 or changed) and not allow_mixed:
        raise ValueError(f"the {study.task} {study.name} study has runs of {len(codes)} code versions "
                         f"({', '.join(sorted(codes))})" + (f" and of several versions of {', '.join(changed)}"
                                                             if changed else "") +
                         "; rerun them with one version, or pass --allow-mixed-code to mark them in the table")
    return runs


def _mean_curve(runs: list[dict]) -> list[tuple[float, float]]:
    """(units, mean val loss) at the eval steps all seeds share."""
    by_step = [dict((p[0], p) for p in r["val_curve"]) for r in runs]
    steps = sorted(set.intersection(*(set(b) for b in by_step)))
    return [(by_step[0][st][1], statistics.mean(b[st][2] for b in by_step)) for st in steps]


def units_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First point where the curve reaches target, linearly interpolated between evaluations; None if never."""
    for (u0, l0), (u1, l1) in zip([(0.0, math.inf)] + curve[:-1], curve):
        if l1 <= target:
            return u1 if not math.isfinite(l0) else u0 + (l0 - target) / (l0 - l1) * (u1 - u0)
    return None


def seed_speedups(rs: list[dict], base: list[dict]) -> dict:
    """Token (image) efficiency one seed at a time: for each seed both have, the units the baseline's run needs to
    reach its own final validation loss over the units this variant's run of the same seed needs to reach it
    (interpolated between evaluations, as units_to_reach), summarised as a geometric mean with a 95% t-interval on
    the paired log ratio (ratios multiply, so their logs are what averages). Seeds where the variant never reaches
    the baseline's loss have no ratio; they are counted, not dropped silently ('speedup_reached' of 'speedup_seeds')."""
    by_seed = {r["seed"]: r for r in base}
    curve = lambda r: [(p[1], p[2]) for p in r["val_curve"]]  # noqa: E731
    mine, theirs, seeds = {}, {}, 0
    for r in rs:
        b = by_seed.get(r["seed"])
        if b is None:
            continue
        seeds += 1
        target = b["final"]["val_loss"]
        ours, ref = units_to_reach(curve(r), target), units_to_reach(curve(b), target)
        if ours and ref:
            mine[r["seed"]], theirs[r["seed"]] = math.log(ours), math.log(ref)
    d = paired(mine, theirs)
    if d is None:
        return {"speedup_seeds": seeds, "speedup_reached": 0} if seeds else {}
    return {"speedup_seeds": seeds, "speedup_reached": d.n, "speedup_geomean": math.exp(-d.mean),
            "speedup_lo": math.exp(-d.ci[1]) if d.ci else None, "speedup_hi": math.exp(-d.ci[0]) if d.ci else None}


def _finals(rs: list[dict], metric: str = "val_loss") -> dict[int, float]:
    """{seed: final metric}: the validation loss (the paired metric of both tasks: on 3,000 images it is far less
    noisy than top-1, which moves in steps of 1/3,000 per image), or top-1 % ("top1", ViT)."""
    return {r["seed"]: (r["final"]["val_loss"] if metric == "val_loss" else 100 * r["final"]["val_acc1"]) for r in rs}


def paired_columns(rs: list[dict], base: list[dict] | None, seeds: tuple[int, ...], metric: str = "val_loss") -> dict:
    """The paired difference to the baseline over `seeds` (those both have), flattened for a table row."""
    if not base or not seeds:
        return {}
    pick = lambda runs: {k: v for k, v in _finals(runs, metric).items() if k in seeds}  # noqa: E731
    d = paired(pick(rs), pick(base), lower_is_better=metric == "val_loss")
    if d is None:
        return {}
    return {"n": d.n, "delta": d.mean, "delta_std": d.std, "ci_lo": d.ci[0] if d.ci else None,
            "ci_hi": d.ci[1] if d.ci else None, "wins": d.wins}


# The seed sets a study's tables report apart, by the part name their columns carry (Study's docstring says why).
SEED_SET_NAMES = {"choice": "choice seeds", "confirm": "confirmation seeds", "added": "added seeds",
                  "added2": "second added seeds"}


def seed_sets(study: Study) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """(part, seeds) of the seed sets a study's tables report apart: choice, confirmation and, where the study has
    them, the seeds added after the confirmation was read, and those added after them."""
    parts = (("choice", study.choice_seeds), ("confirm", study.confirm_seeds))
    later = (("added", study.added_seeds), ("added2", study.added2_seeds))
    return parts + tuple((part, seeds) for part, seeds in later if seeds)


def seed_set_columns(rs: list[dict], base: list[dict] | None, study: Study,
                     metrics: tuple[str, ...] = ("val_loss",)) -> dict:
    """paired_columns on each of the study's seed sets apart, set by set, keyed '<part>_<column>' for the loss and
    '<part>_<metric>_<column>' for another metric."""
    return {f"{part}_{'' if metric == 'val_loss' else metric + '_'}{k}": v for part, seeds in seed_sets(study)
            for metric in metrics for k, v in paired_columns(rs, base, seeds, metric).items()}


def summary_rows(task: str, runs: dict[str, list[dict]], study: Study | None = None) -> list[dict]:
    base = runs.get("residual")
    base_loss = mean_std([r["final"]["val_loss"] for r in base])[0] if base else None
    base_curve = _mean_curve(base) if base else None
    base_units = units_to_reach(base_curve, base_loss) if base else None
    base_params = base[0].get("params") if base else None
    base_times = {r["seed"]: r["step_time_s"] for r in base or [] if r.get("step_time_s")}
    base_act = base[0].get("saved_activation_bytes") if base else None
    rows = []
    for variant, rs in runs.items():
        loss, loss_sd = mean_std([r["final"]["val_loss"] for r in rs])
        row = {"variant": variant, "seeds": len(rs), "params": rs[0].get("params"),
               "params_delta": (rs[0]["params"] - base_params) if base_params and rs[0].get("params") else None,
               "val_loss": loss, "val_loss_std": loss_sd,
               "val_loss_delta": loss - base_loss if base_loss is not None else None}
        if task == "lm":
            row["val_ppl"] = statistics.mean(r["final"]["val_ppl"] for r in rs)
        else:
            acc1, acc1_sd = mean_std([100 * r["final"]["val_acc1"] for r in rs])
            row |= {"top1": acc1, "top1_std": acc1_sd, "top5": statistics.mean(100 * r["final"]["val_acc5"] for r in rs)}
            if base:
                row["top1_delta"] = acc1 - statistics.mean(100 * r["final"]["val_acc1"] for r in base)
        reach = units_to_reach(_mean_curve(rs), base_loss) if base else None
        row[f"{UNIT[task]}_to_baseline_loss"] = reach
        row["speedup_to_baseline_loss"] = base_units / reach if reach and base_units else None
        if base and variant != "residual":
            row |= seed_speedups(rs, base)
        # paired by seed, as the losses: a variant's seeds can be fewer than the baseline's, and seeds run on
        # another day run at another speed (this machine's varies ~2x between days)
        ratios = [r["step_time_s"] / base_times[r["seed"]] for r in rs if r.get("step_time_s") and r["seed"] in base_times]
        row["step_time_ratio"] = statistics.mean(ratios) if ratios else None
        row["saved_activations_ratio"] = (rs[0]["saved_activation_bytes"] / base_act
                                          if base_act and rs[0].get("saved_activation_bytes") else None)
        if study is not None and variant != "residual":
            row |= seed_set_columns(rs, base, study, ("val_loss", "top1") if task == "vit" else ("val_loss",))
        row["code"] = ",".join(sorted({r.get("code", "unknown") for r in rs}))
        paper = PAPER[task].get(variant)
        row["paper"] = paper
        base_paper = PAPER[task].get("residual")
        row["paper_delta"] = paper - base_paper if paper is not None and variant != "residual" else None
        rows.append(row)
    return rows


def _fmt(value, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:+,}" if sign else f"{value:,}"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _pm(mean: float, std: float | None, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def paired_cell(row: dict, part: str, digits: int = 3) -> str:
    """'−0.054 [−0.101, −0.007], 3/3': mean paired difference, its 95% t-interval, seeds where the variant wins."""
    if f"{part}_delta" not in row:
        return "—"
    ci = (f" [{row[f'{part}_ci_lo']:+.{digits}f}, {row[f'{part}_ci_hi']:+.{digits}f}]"
          if row.get(f"{part}_ci_lo") is not None else "")
    return f"{row[f'{part}_delta']:+.{digits}f}{ci}, {row[f'{part}_wins']}/{row[f'{part}_n']}"


def speedup_cell(row: dict) -> str:
    """'1.37 [1.31, 1.44], 12/12': seed_speedups' geometric mean, its interval and the seeds reaching the baseline's
    loss of the seeds paired."""
    if not row.get("speedup_seeds"):
        return "—"
    if "speedup_geomean" not in row:
        return f"—, 0/{row['speedup_seeds']}"
    ci = f" [{row['speedup_lo']:.2f}, {row['speedup_hi']:.2f}]" if row.get("speedup_lo") is not None else ""
    return f"{row['speedup_geomean']:.2f}{ci}, {row['speedup_reached']}/{row['speedup_seeds']}"


def markdown(task: str, rows: list[dict], command: str, added: int = 0) -> str:
    """The grid's table; `added`: how many sets of seeds added after the confirmation get a column of their own
    (Study.added_seeds, then Study.added2_seeds)."""
    unit = UNIT[task]
    parts = list(SEED_SET_NAMES)[: 2 + added]
    sets = " | ".join(SEED_SET_NAMES[p] for p in parts)

    def cells(r: dict, metric: str = "", digits: int = 3) -> str:
        return " | ".join(paired_cell(r, f"{p}{metric}", digits) for p in parts)

    if task == "lm":
        head = (f"| variant | seeds | params | Δ params | val loss (nats/byte) | paired Δ [95% CI], wins: {sets} | "
                "val ppl | tokens to "
                "residual's final loss | speed-up | speed-up per seed [95% CI], seeds reaching | step time × | "
                "saved activations × | paper: OLMo-1B loss | paper Δ |")
        lines = [head, "|" + "---|" * (15 + added)]
        for r in rows:
            lines.append(f"| {r['variant']} | {r['seeds']} | {_fmt(r['params'])} | {_fmt(r['params_delta'], sign=True)} | "
                         f"{_pm(r['val_loss'], r['val_loss_std'])} | {cells(r)} | "
                         f"{_fmt(r['val_ppl'])} | {_fmt(r[f'{unit}_to_baseline_loss'], 0)} | "
                         f"{_fmt(r['speedup_to_baseline_loss'], 2)} | {speedup_cell(r)} | {_fmt(r['step_time_ratio'], 2)} | "
                         f"{_fmt(r['saved_activations_ratio'], 2)} | {_fmt(r['paper'])} | {_fmt(r['paper_delta'], sign=True)} |")
    else:
        head = (f"| variant | seeds | params | Δ params | val loss | paired Δ val loss [95% CI], wins: {sets} | "
                f"top-1 % | paired Δ top-1: {sets} | top-5 % | "
                "images to residual's final loss | speed-up | speed-up per seed [95% CI], seeds reaching | step time × | "
                "saved activations × | paper: ViT-B top-1 | paper Δ |")
        lines = [head, "|" + "---|" * (18 + 2 * added)]
        for r in rows:
            lines.append(f"| {r['variant']} | {r['seeds']} | {_fmt(r['params'])} | {_fmt(r['params_delta'], sign=True)} | "
                         f"{_pm(r['val_loss'], r['val_loss_std'])} | {cells(r)} | "
                         f"{_pm(r['top1'], r['top1_std'], 1)} | {cells(r, '_top1', 1)} | {_fmt(r['top5'], 1)} | "
                         f"{_fmt(r[f'{unit}_to_baseline_loss'], 0)} | {_fmt(r['speedup_to_baseline_loss'], 2)} | "
                         f"{speedup_cell(r)} | {_fmt(r['step_time_ratio'], 2)} | {_fmt(r['saved_activations_ratio'], 2)} | "
                         f"{_fmt(r['paper'], 2)} | {_fmt(r['paper_delta'], 2, sign=True)} |")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
               f"torch {torch.__version__}")
    return "\n".join([
        f"# {TASK_NAME[task]} grid summary", "",
        f"Tables and plots written by `{command}` from the run folders beside this file ({machine}); "
        "each run's own command is in its done.json.",
        "Mean ± sample std over seeds where a variant has several. Paired Δ = variant − residual per seed (same "
        "data order and non-HC init) of the final validation loss" + (" (and of top-1, beside it)" if task == "vit"
        else "") + ", its mean, 95% t-interval and the seeds where the variant is better; "
        "choice seeds chose the settings, confirmation seeds never did" + ("; added seeds never did either, but were "
        "added after the confirmation had been read, so they are a set of their own" if added else "") +
        ("; second added seeds were added after the added seeds had been read, their number fixed before any ran"
         if added > 1 else "") + ". " +
        "Step time and saved activations are ratios to the residual baseline measured in the same grid; "
        "'speed-up' = the baseline's " + unit + " to reach its own final validation loss / this variant's "
        "(interpolated between evaluations; — if never reached), from the seeds' mean curves; 'speed-up per seed' the "
        "same ratio seed by seed against that seed's baseline run, its geometric mean, a 95% t-interval on the log "
        "ratio, and how many of the paired seeds reach the baseline's loss at all. The paper's column is its number at full scale "
        "(the HC paper's OLMo-1B and ViT-Base results), for comparison, not a target at this scale.", "", *lines, ""])


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def val_curves_figure(task: str, runs: dict[str, list[dict]]) -> Figure:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for variant, rs in runs.items():
        curve = _mean_curve(rs)
        units, loss = zip(*curve)
        line, = ax.plot(units, loss, label=f"{variant} ({len(rs)} seed{'s' if len(rs) > 1 else ''})",
                        lw=2.2 if variant in ("residual", "dhc4") else 1.2)
        if len(rs) > 1:
            per_seed = [[p[2] for p in r["val_curve"][: len(curve)]] for r in rs]
            ax.fill_between(units, [min(c) for c in zip(*per_seed)], [max(c) for c in zip(*per_seed)],
                            color=line.get_color(), alpha=0.15)
    ax.set_xlabel(f"training {UNIT[task]}")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{TASK_NAME[task]}: validation loss (shaded: min-max over seeds)")
    finals = [r["final"]["val_loss"] for rs in runs.values() for r in rs]
    ax.set_ylim(min(finals) - 0.05, max(finals) + 0.6)
    ax.legend(fontsize=8)
    return fig


def gains_figure(runs: dict[str, list[dict] | dict]) -> Figure:
    """One line per variant (its first run; a dict value is that run)."""
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    for variant, rs in runs.items():
        first = rs if isinstance(rs, dict) else rs[0]
        if variant != "residual" and first.get("residual_gains"):
            gains = torch.tensor(first["residual_gains"])
            ax.plot(range(1, len(gains) + 1), gains[:, 0].tolist(), marker="o", ms=3, label=f"{variant} (row sums)")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("sub-layers composed (attention and MLP)")
    ax.set_ylabel("Amax gain of the residual product")
    ax.set_yscale("log")
    ax.set_title("Gain of the product of residual matrices over depth")
    ax.legend(fontsize=8)
    return fig


def product_gains_markdown(runs: dict[str, list[dict]]) -> str:
    """The Amax gain of each variant's residual product over the whole stack (the mHC paper's Fig. 3 measure: the
    largest absolute row sum, forward, and column sum, backward, of the product of every sub-layer's residual
    matrix), median and range over seeds: HC's grows with depth, mHC's doubly stochastic product stays at 1."""
    lines = ["## Residual products over the whole stack", "",
             "Amax gain of the product of the trained model's residual matrices (mHC paper, Fig. 3), each averaged "
             "over the tokens of 8 validation windows: median [min, max] over seeds.", "",
             "| variant | seeds | sub-layers | forward gain (row sums) | backward gain (column sums) |",
             "|---|---|---|---|---|"]
    for variant, rs in runs.items():
        finals = [r["residual_gains"][-1] for r in rs if r.get("residual_gains")]
        if variant == "residual" or not finals:
            continue
        depth = len(rs[0]["residual_gains"])
        cells = [f"{statistics.median(g):,.4g} [{min(g):,.4g}, {max(g):,.4g}]" for g in zip(*finals)]
        lines.append(f"| {variant} | {len(finals)} | {depth} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n" if len(lines) > 6 else ""


def _write_table(out: Path, rows: list[dict], md: str) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "summary.csv", buffer.getvalue())
    write_atomic(out / "summary.md", md)


def provenance_lines(runs: dict[str, list[dict]]) -> list[str]:
    """Which commits made the runs of a table, and whether any had uncommitted changes."""
    done = [r for rs in runs.values() for r in rs]
    commits = sorted({(r.get("commit", "unknown")[:10], r.get("code", "unknown")) for r in done})
    dirty = sum(bool(r.get("dirty", True)) for r in done)
    from experiments.reproduce import SAME_NUMBERS

    text = "; ".join(f"commit {c} (code {h})" for c, h in commits)
    same = [f"Code {h} makes the numbers of code {SAME_NUMBERS[h][0]} bit for bit: {SAME_NUMBERS[h][1]}."
            for h in sorted({h for _, h in commits}) if h in SAME_NUMBERS]
    return [f"Runs made by {text}" + (f"; {dirty} of {len(done)} with uncommitted changes." if dirty else
                                      "; no run had uncommitted changes."), *same]


def _pair_cell(rows: list[dict] | None, refs: list[dict] | None, seeds: tuple[int, ...], metric: str = "val_loss") -> str:
    """paired_cell of `rows` against `refs` over `seeds` (the loss to 3 digits, top-1 % to 1)."""
    columns = paired_columns(rows, refs, seeds, metric)
    return paired_cell({f"p_{k}": v for k, v in columns.items()}, "p", 3 if metric == "val_loss" else 1)


def comparisons_markdown(study: Study, runs: dict[str, list[dict]]) -> str:
    """The study's named comparisons (a control against what it controls), paired by seed over the seeds both
    rows have; a comparison whose rows have not finished yet says so instead of disappearing."""
    if not study.comparisons:
        return ""
    metrics = ["val_loss"] + (["top1"] if study.task == "vit" else [])
    heads = {"val_loss": "row − reference (val loss), paired [95% CI], wins", "top1": "same, top-1 %"}
    # A study with held-out seeds also gives the loss's difference per seed set (a control that ran on the choice
    # seeds only says — for the others).
    sets = seed_sets(study) if study.confirm_seeds else ()
    lines = ["## Controls and variant against variant, paired", "",
             f"| question | {heads['val_loss']}{': all seeds' if sets else ''} | "
             f"{''.join(f'{SEED_SET_NAMES[p]} | ' for p, _ in sets)}"
             f"{''.join(f'{heads[m]} | ' for m in metrics[1:])}row | reference |",
             "|---|" + "---|" * (len(metrics) + len(sets)) + "---|---|"]
    for row, ref, question in study.comparisons:
        a, b = runs.get(row), runs.get(ref)
        common = tuple(sorted(set(_finals(a or [])) & set(_finals(b or []))))
        cells = ["not run yet" if (c := _pair_cell(a, b, common, m)) == "—" else c for m in metrics]
        cells[1:1] = [_pair_cell(a, b, tuple(s for s in seeds if s in common)) for _, seeds in sets]
        lines.append(f"| {question} | {' | '.join(cells)} | {row} | {ref} |")
    return "\n".join(lines) + "\n"


def summarize_grid(results: Path, study: Study, runs: dict[str, list[dict]], command: str) -> list[dict]:
    task, out = study.task, results / study.task / study.name
    rows = summary_rows(task, runs, study)
    md = markdown(task, rows, command, bool(study.added_seeds) + bool(study.added2_seeds))
    md = md.replace(f"# {TASK_NAME[task]} grid summary", f"# {TASK_NAME[task]} {study.name}: {study.about}")
    extra = comparisons_markdown(study, runs)
    if gains := product_gains_markdown(runs):
        extra = (extra + "\n" if extra else "") + gains
    _write_table(out, rows, md + "\n" + (extra + "\n" if extra else "") + "\n".join(provenance_lines(runs)) + "\n")
    write_atomic(out / "val_curves.png", _png(val_curves_figure(task, runs)))
    write_atomic(out / "gains.png", _png(gains_figure(runs)))
    for variant in ("dhc4", "mhc4", "shc4", "shc2"):
        if variant in runs and runs[variant][0].get("connection_matrices"):
            weights = unrolled_connections(torch.tensor(runs[variant][0]["connection_matrices"]))
            fig = unrolled_connections_figure(weights, f"{TASK_NAME[task]} {variant}, seed {runs[variant][0]['seed']}: "
                                              "unrolled connections (Fig. 7 view)")
            write_atomic(out / f"connections_{variant}.png", _png(fig))
    return rows


def depth_rows(study: Study, runs: dict[str, list[dict]]) -> list[dict]:
    """One row per depth: both arms' final val loss over seeds and their paired difference."""
    by_depth: dict[int, dict[str, list[dict]]] = {}
    for done in (d for rs in runs.values() for d in rs):
        depth = dict(done["run"]["knobs"])["L"]
        by_depth.setdefault(depth, {}).setdefault(done["run"]["variant"], []).append(done)
    rows = []
    for depth, arms in sorted(by_depth.items()):
        base, hc = arms.get("residual", []), arms.get("dhc4", [])
        row: dict = {"depth": depth}
        for name, rs in (("residual", base), ("dhc4", hc)):
            if rs:
                m, sd = mean_std([r["final"]["val_loss"] for r in rs])
                row |= {f"{name}_seeds": len(rs), f"{name}_loss": m, f"{name}_std": sd, f"{name}_params": rs[0].get("params")}
                times = [r["step_time_s"] for r in rs if r.get("step_time_s")]
                row[f"{name}_step_s"] = statistics.fmean(times) if times else None
        if study.task == "vit":
            for name, rs in (("residual", base), ("dhc4", hc)):
                if rs:
                    row[f"{name}_top1"], row[f"{name}_top1_std"] = mean_std(list(_finals(rs, "top1").values()))
            row |= {f"top1_{k}": v for k, v in paired_columns(hc, base, study.seeds, "top1").items()}
        row |= paired_columns(hc, base, study.seeds)
        if study.confirm_seeds:  # the same difference on each seed set apart (choice, then held-out)
            row |= seed_set_columns(hc, base, study)
        d = paired(_finals(hc), _finals(base))
        row["diffs"] = json.dumps([round(x, 6) for x in d.diffs] if d else [])
        row["diff_seeds"] = json.dumps(list(d.seeds) if d else [])
        if row.get("residual_step_s") and row.get("dhc4_step_s"):
            row["step_time_ratio"] = row["dhc4_step_s"] / row["residual_step_s"]
        rows.append(row)
    return rows


def _signed_pm(mean: float, std: float | None, digits: int = 3) -> str:
    return f"{mean:+.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _ci(row: dict, digits: int = 3) -> str:
    return f"[{row['ci_lo']:+.{digits}f}, {row['ci_hi']:+.{digits}f}]" if row.get("ci_lo") is not None else "—"


def _wins(row: dict) -> str:
    return f"{row['wins']}/{row['n']}" if "n" in row else "—"


def depth_markdown(study: Study, rows: list[dict], command: str, provenance: list[str]) -> str:
    vit = study.task == "vit"
    sets = seed_sets(study) if study.confirm_seeds else ()  # then the paired difference of each seed set apart
    columns = ["depth L", "params residual", "Δ params DHC x4", "residual val loss", "DHC x4 val loss",
               "paired Δ ± std", "95% CI", "DHC x4 better",
               *(f"{SEED_SET_NAMES[p]} {list(seeds)} [95% CI], wins" for p, seeds in sets),
               *(("residual top-1 %", "DHC x4 top-1 %", "paired Δ top-1 [95% CI], wins") if vit else ()),
               "step time ×"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        dp = (r["dhc4_params"] - r["residual_params"]) if r.get("dhc4_params") and r.get("residual_params") else None
        top1 = ""
        if vit:
            top1 = " | ".join([*(_pm(r[f"{n}_top1"], r[f"{n}_top1_std"], 1) if f"{n}_top1" in r else "—"
                                 for n in ("residual", "dhc4")), paired_cell(r, "top1", 1)]) + " | "
        lines.append(
            f"| {r['depth']} | {_fmt(r.get('residual_params'))} | {_fmt(dp, sign=True)} | "
            f"{_pm(r['residual_loss'], r['residual_std']) if 'residual_loss' in r else '—'} | "
            f"{_pm(r['dhc4_loss'], r['dhc4_std']) if 'dhc4_loss' in r else '—'} | "
            f"{_signed_pm(r['delta'], r['delta_std']) if 'delta' in r else '—'} | "
            f"{_ci(r)} | {_wins(r)} | {''.join(paired_cell(r, p) + ' | ' for p, _ in sets)}{top1}"
            f"{_fmt(r.get('step_time_ratio'), 2)} |")
    b, k = study.budget, study.base_knobs
    steps = k.get("steps", b.steps)  # a study's base knobs can lengthen its budget (the warmup stays the budget's)
    warmup = f"warmup {max(1, b.steps // 10)} steps then cosine to {0.05 if vit else 0.1:g}x"
    images = "shape pairs (two shapes per image, the class is the unordered pair; " if k.get("obj") == 2 else "shapes ("
    regime = (f"ViT on the generated {images}10 classes, 32 px, {10 * k.get('train', 500):,} training and 3,000 "
              f"validation images), patch 4, width {k.get('d')}, 4 heads, MLP ratio 2, {steps:,} steps x "
              f"{b.batch_size} images = {steps * b.batch_size:,} images per run, AdamW lr {k.get('lr'):g}, {warmup}"
              if vit else
              f"Byte-level GPT on the Python standard library, width {k.get('d')}, 4 heads, context 128, "
              f"{steps:,} steps x {b.batch_size} windows = {steps * b.batch_size * 128:,} tokens per run, AdamW lr "
              f"{k.get('lr'):g}, {warmup}")
    return "\n".join([
        f"# {TASK_NAME[study.task]} depth study: {study.about}", "",
        f"Written by `{command}` from the runs in results/{study.task}/runs/ (each run's command is in its "
        f"done.json). {regime}; seeds {list(study.seeds)}"
        + (f": at L = {LM_MAIN_DEPTH} the runs are the main grid's, whose LR was chosen on seeds 0-1 there; no "
           f"other depth chose anything. Seeds {list(study.choice_seeds)} ran first, {list(study.confirm_seeds)} "
           "after them, each set also apart." if study.name == "depth-grid-lr" else
           f": the main grid's depth was chosen on {list(study.choice_seeds)}, and {list(study.confirm_seeds)} "
           "(run after every choice was fixed) confirm the trend, each set also apart." if sets else
           " (the seeds the main grid's depth was chosen on)."),
        "Paired Δ = DHC x4 − residual per seed (same data order and non-HC init); mean ± sample std, 95% "
        "t-interval, and the seeds where DHC x4 has the lower loss" + (" (top-1: the higher)" if vit else "") +
        ". Step time × = DHC x4 / residual, medians of the logged step times on this 2-core CPU.", "", *lines, "",
        *provenance, ""])


def depth_figure(rows: list[dict], task: str = "lm", confirm_seeds: tuple[int, ...] = ()) -> Figure:
    """Left: the paired difference per seed and its mean with the 95% t-interval against depth (held-out seeds,
    `confirm_seeds`, drawn hollow); right: both arms' mean final loss."""
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    done = [r for r in rows if "delta" in r]  # depths with both arms; a study part-way has fewer than `rows`
    depths = [r["depth"] for r in rows]
    means = [r["delta"] for r in done]
    lo = [r["delta"] - r["ci_lo"] if r.get("ci_lo") is not None else 0 for r in done]
    hi = [r["ci_hi"] - r["delta"] if r.get("ci_hi") is not None else 0 for r in done]
    ax.errorbar([r["depth"] for r in done], means, yerr=[lo, hi], marker="o", capsize=4, color="C1",
                label="mean, 95% t-interval")
    for r in done:
        diffs = dict(zip(json.loads(r["diff_seeds"]), json.loads(r["diffs"])))
        for held_out in (False, True):
            ys = [y for s, y in diffs.items() if (s in confirm_seeds) == held_out]
            style = {"facecolors": "none", "edgecolors": "black"} if held_out else {"color": "gray"}
            ax.scatter([r["depth"]] * len(ys), ys, s=12, zorder=3, **style,
                       label=("confirmation seeds" if held_out else "choice seeds") if r is done[0] and ys else None)
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    unit = "nats/byte" if task == "lm" else "nats"
    _depth_axis(ax, depths, f"val loss: DHC x4 − residual ({unit})", "Paired difference per seed and mean")
    for name, color in (("residual", "C0"), ("dhc4", "C1")):
        pts = [(r["depth"], r[f"{name}_loss"], r[f"{name}_std"] or 0) for r in rows if f"{name}_loss" in r]
        if pts:
            d, m, sd = zip(*pts)
            ax2.errorbar(d, m, yerr=sd, marker="o", capsize=3, color=color, label="DHC x4" if name == "dhc4" else name)
    _depth_axis(ax2, depths, "final val loss (mean ± std)", f"Both arms, equal {'tokens' if task == 'lm' else 'images'}")
    return fig


def _depth_axis(ax, depths: list[int], ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(depths) / 1.25, max(depths) * 1.25)  # also when an axis has no points yet (a study part-way)
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("depth L (blocks)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def summarize_depth(results: Path, study: Study, command: str, allow_mixed: bool = False) -> list[dict]:
    runs = load_study(results, study, allow_mixed)  # checks that one code version made them
    rows = depth_rows(study, runs)
    if not rows:
        return []
    out = results / study.task / study.name
    _write_table(out, rows, depth_markdown(study, rows, command, provenance_lines(runs)))
    write_atomic(out / "depth.png", _png(depth_figure(rows, study.task, study.confirm_seeds)))
    # The learned connections of DHC x4's lowest seed at every depth (the paper's Fig. 7 view), and the gain of
    # the residual products over depth (the mHC paper's diagnostic), one line per depth.
    deep = {lab: rs[0] for lab, rs in runs.items() if lab.startswith("dhc4") and rs[0].get("connection_matrices")}
    for lab, r in deep.items():
        weights = unrolled_connections(torch.tensor(r["connection_matrices"]))
        fig = unrolled_connections_figure(weights, f"{TASK_NAME[study.task]} DHC x4, {lab.split('-')[1]}, seed {r['seed']}: unrolled connections")
        write_atomic(out / f"connections_{lab}.png", _png(fig))
    if deep:
        write_atomic(out / "gains.png", _png(gains_figure(deep)))
    return rows


def lr_sweep_markdown(runs: dict[str, list[dict]], base_lr: float) -> str:
    """Both arms at every learning rate of the sweep, paired with each other at that LR (not with the baseline at
    the grid's LR): is the comparison run where each arm is at its best?"""
    lrs = sorted({dict(r["run"]["knobs"]).get("lr") for rs in runs.values() for r in rs} - {None})
    lines = ["| LR | residual val loss | DHC x4 val loss | DHC x4 − residual, paired [95% CI], wins |", "|---|---|---|---|"]
    for lr in lrs:
        suffix = "" if lr == base_lr else f"-lr{lr:g}"
        base, hc = runs.get("residual" + suffix), runs.get("dhc4" + suffix)
        if not base and not hc:
            continue
        cells = [_pm(*mean_std(list(_finals(rs).values()))) + f" ({len(rs)} seed{'s' * (len(rs) > 1)})" if rs else "—"
                 for rs in (base, hc)]
        paired = "—"  # one arm alone at an LR (a bracket of its best that the other arm does not need)
        if base and hc:
            row = paired_columns(hc, base, tuple(sorted(_finals(hc))))
            paired = paired_cell({f"p_{k}": v for k, v in row.items()}, "p")
        lines.append(f"| {lr:g} ({lr / base_lr:g}x) | {cells[0]} | {cells[1]} | {paired} |")
    return "\n".join(["## Learning-rate sweep", "", *lines, ""])


def summarize_study(results: Path, study: Study, command: str, allow_mixed: bool = False) -> list[dict]:
    """Write a study's tables and plots into results/<task>/<study>/ (nothing if none of its runs finished)."""
    if study.name.startswith("depth"):
        return summarize_depth(results, study, command, allow_mixed)
    runs = load_study(results, study, allow_mixed)
    if not runs:
        return []
    rows = summarize_grid(results, study, runs, command)
    if study.name == "controls":
        md = results / study.task / study.name / "summary.md"
        write_atomic(md, md.read_text() + "\n" + lr_sweep_markdown(runs, study.base_knobs["lr"]))
    return rows


def drift_rows(results: Path, task: str) -> list[dict]:
    """Every run made by two code versions: the archived one (results/<task>/runs-code-<version>/<name>/, moved
    there by `reproduce --regenerate`) against the one in runs/ of the same name, by final validation loss."""
    rows = []
    for old_path in sorted((results / task).glob("runs-code-*/*/done.json")):
        new_path = results / task / "runs" / old_path.parent.name / "done.json"
        if not new_path.is_file():
            continue
        old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
        for path, record in ((old_path, old), (new_path, new)):
            if "val_loss" not in record.get("final", {}) or "variant" not in record.get("run", {}):
                raise ValueError(f"{path} has no final val_loss or run variant; is it a done.json of this runner?")
        a, b = old["final"]["val_loss"], new["final"]["val_loss"]
        rows.append({"run": old_path.parent.name, "variant": new["run"]["variant"], "old_code": _code(old)[0],
                     "new_code": _code(new)[0], "old": a, "new": b, "delta": b - a, "identical": a == b})
    return rows


def drift_markdown(task: str, rows: list[dict], command: str) -> str:
    """Per variant: how many of its runs the code change left bit-identical, and how far the others moved."""
    lines = [f"# {TASK_NAME[task]}: the same runs made by two code versions", "",
             f"Written by `{command}`: every run folder of results/{task}/runs/ that has an archived twin in "
             f"runs-code-<version>/ (same name = same settings and seed), compared by final validation loss. "
             "Where the code change keeps the maths and only reorders float sums (as speed work does), this is the "
             "float-order noise of one run: differences between variants below it are not resolved by one run "
             "per seed.", "",
             "| variant | runs | bit-identical | median \|new − old\| | largest \|new − old\| (run) |",
             "|---|---|---|---|---|"]
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    for variant, rs in by_variant.items():
        top = max(rs, key=lambda r: abs(r["delta"]))
        lines.append(f"| {variant} | {len(rs)} | {sum(r['identical'] for r in rs)} | "
                     f"{statistics.median(abs(r['delta']) for r in rs):.4f} | {abs(top['delta']):.4f} ({top['run']}) |")
    lines += ["", "| run | old code | new code | old | new | new − old |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['old_code']} | {r['new_code']} | {r['old']:.4f} | {r['new']:.4f} | "
              f"{r['delta']:+.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def summarize_drift(results: Path, task: str, command: str) -> list[dict]:
    """results/<task>/drift.md from drift_rows (nothing written when no run has an archived twin)."""
    rows = drift_rows(results, task)
    if rows:
        write_atomic(results / task / "drift.md", drift_markdown(task, rows, command))
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=[*STUDIES, "drift"],
                        help="drift: runs made again by newer code against their archived twins (results/<task>/drift.md)")
    parser.add_argument("--task", choices=["lm", "vit", "all"], default="all")
    parser.add_argument("--results", default="results")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scale", choices=["cpu", "mid", "paper"], default="cpu", help="with --results results/<scale>")
    parser.add_argument("--allow-mixed-code", action="store_true")
    a = parser.parse_args()
    command = "python -m experiments.summarize " + " ".join(sys.argv[1:])
    tasks = ["lm", "vit"] if a.task == "all" else [a.task]
    try:
        if a.study == "drift":
            for task in tasks:
                if not summarize_drift(Path(a.results), task, command):
                    print(f"summarize: no run in {a.results}/{task}/runs has an archived twin in runs-code-*/; "
                          "nothing to compare", file=sys.stderr)
        else:
            for study in studies(a.study, tasks, a.quick, scale=a.scale):
                summarize_study(Path(a.results), study, command, a.allow_mixed_code)
    except ValueError as e:
        sys.exit(f"summarize: error: {e}")
