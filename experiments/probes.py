"""Probes of trained runs: what the trained networks compute, read from a run's checkpoints/last.ckpt.

Representation collapse (the HC paper's motivation, Zhu et al. 2025 §1, after Liu et al. 2020): in a deep Pre-Norm
network the features entering deeper layers become nearly the same, so added layers contribute less; hyper-
connections are argued to avoid that. The probe: for every pair of adjacent sub-layers, the cosine similarity of
their inputs, token by token, on a fixed batch of validation inputs, in two readings of "a sub-layer's input" that
coincide for the baseline (its residual stream h) and differ for HC and mHC: the branch input, what the sub-layer
itself receives (x = A_m^T H, its pre-norm's input), and the hidden state, the sum of the n streams (what the
output head reads after the last layer). The paper's figure of this measure, as we read it, is of OLMo-1B.

    python -m experiments.probes similarity --task vit   # every run of the ViT main grid with a checkpoint here

Checkpoints are not committed (results/ holds no weights), so the probe runs where the runs were trained and writes
its numbers into each run's folder (probe.json, committed); the table (results/<task>/main/similarity.{md,csv},
similarity.png) is then rewritten from those files by the same command, on any machine.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from pathlib import Path

import torch
import yaml
from matplotlib.figure import Figure
from torch import nn

from experiments.grids import main_study
from experiments.stats import paired
from experiments.summarize import _png, label
from lit_hc.io import write_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"
PROBE_INPUTS = 256  # validation inputs (images or windows) per probe, the first of the fixed validation order


READINGS = ("branch_input", "stream_sum")  # the two readings of a sub-layer's input (module docstring)


@torch.no_grad()
def sublayer_input_similarity(net: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cosine similarity of the inputs of adjacent sub-layers, per token: {reading: (sub-layers - 1, tokens)}.

    'branch_input': what each sub-layer's pre-norm receives (norm1 before attention, norm2 before the MLP, in every
    Block of `net`); 'stream_sum': the sum over the n streams of the state H entering each sub-layer's connection.
    Both taken by forward pre-hooks, so every residual variant is measured at the same places.
    """
    from lit_hc.analysis import stream_connections
    from lit_hc.layers import Block

    captured: dict[str, list[torch.Tensor]] = {r: [] for r in READINGS}
    keep = lambda reading, x: captured[reading].append(x.detach().flatten(0, -2).double())  # noqa: E731
    blocks = [m for m in net.modules() if isinstance(m, Block)]
    handles = [norm.register_forward_pre_hook(lambda m, args: keep("branch_input", args[0]))
               for b in blocks for norm in (b.norm1, b.norm2)]
    handles += [c.register_forward_pre_hook(lambda m, args: keep("stream_sum", args[0].sum(-2)))
                for c in stream_connections(net)]
    was_training = net.training
    try:
        net.eval()
        net(inputs)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    for reading, found in captured.items():
        if len(found) != 2 * len(blocks):
            raise RuntimeError(f"expected {2 * len(blocks)} sub-layer inputs ({reading}), got {len(found)}")
    return {reading: torch.stack([nn.functional.cosine_similarity(a, b, dim=-1) for a, b in zip(found, found[1:])])
            for reading, found in captured.items()}


def probe_run(run_dir: Path) -> dict:
    """The similarity probe of one finished run from its last checkpoint, on its task's first PROBE_INPUTS
    validation inputs: per pair of adjacent sub-layers the median over tokens, and the 5th / 95th percentiles."""
    from lit_hc import ImageClassifier, LanguageModel

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    task = {"lit_hc.ImageClassifier": ImageClassifier, "lit_hc.LanguageModel": LanguageModel}[config["model"]["class_path"]]
    module = task.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    data = _data_module(config["data"])
    data.setup("validate")
    batches, count = [], 0
    for batch in data.val_dataloader():
        batches.append(batch[0])
        count += len(batch[0])
        if count >= PROBE_INPUTS:
            break
    record = {"probe": "sublayer_input_similarity", "inputs": PROBE_INPUTS, "checkpoint": "last.ckpt"}
    for reading, sims in sublayer_input_similarity(module.net, torch.cat(batches)[:PROBE_INPUTS]).items():
        q = torch.quantile(sims.float(), torch.tensor([0.05, 0.5, 0.95]), dim=1)
        record[reading] = {"median": q[1].tolist(), "p05": q[0].tolist(), "p95": q[2].tolist()}
    return record


def _data_module(section: dict):
    """The run's data module from its config.yaml's data section (class_path and init_args)."""
    from lit_hc import ImageFolderDataModule, TextDataModule

    classes = {"lit_hc.ImageFolderDataModule": ImageFolderDataModule, "lit_hc.TextDataModule": TextDataModule}
    return classes[section["class_path"]](**section["init_args"])


def collapse(medians: list[float], deep_from: float = 0.5) -> float:
    """One number per run and reading: the mean over the deeper half of the adjacent pairs of their median similarity
    (with an odd number of pairs the middle one counts)."""
    return statistics.fmean(medians[int(len(medians) * deep_from):])


def similarity_table(task: str, results: Path = RESULTS) -> tuple[str, str, Figure] | None:
    """Markdown, CSV and a figure of the probe over the main grid's headline pair (the baseline at the grid's LR,
    DHC x4 at the LR of its comparison at each arm's best, ViT; at the grid's LR, LM), paired by seed."""
    study = main_study(task)
    own = next((c[0] for c in study.comparisons if c[0].startswith("dhc4-lr") and c[1] == "residual"), "dhc4")
    arms = {"residual": "residual", own: own}
    records: dict[str, dict[int, dict]] = {a: {} for a in arms}
    for r in study.runs:
        name = label({"run": {"variant": r.variant, "knobs": r.knobs}}, study)  # the summaries' row names
        path = r.folder(results) / "probe.json"
        if name in records and path.is_file():
            records[name][r.seed] = json.loads(path.read_text())
    if not all(records.values()):
        return None
    rows = [{"arm": a, "seed": s, "reading": reading, "deeper_half": collapse(v[reading]["median"]),
             "median_per_pair": v[reading]["median"]}
            for a, by_seed in records.items() for s, v in sorted(by_seed.items()) for reading in READINGS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    lines = [f"# {task.upper()} main grid: similarity of adjacent sub-layers' inputs (representation collapse)", "",
             "Written by `python -m experiments.probes similarity --task " + task + "` from each run's probe.json "
             "(made from its last checkpoint on the machine that trained it). Per run: the median over tokens of "
             "the cosine similarity between the inputs of adjacent sub-layers, on the first "
             f"{PROBE_INPUTS} validation inputs; 'deeper half' = the mean of those medians over the deeper half of "
             "the pairs (the statistic fixed before any HC run was probed; 'all pairs', the mean over every pair, "
             "was added after the curves were seen: the arms differ in the early pairs). Two readings of a sub-layer's input, the same for the baseline: 'branch input' = what the "
             "sub-layer receives (HC: A_m^T H), 'stream sum' = the sum of the n streams entering it. Paired by "
             "seed: the arms share the data order and non-HC init. Lower = less alike = less collapse.", "",
             "| reading | arm | seeds | deeper half, mean ± std | per seed | − residual, paired [95% CI], lower on | "
             "all pairs, mean ± std |", "|---|---|---|---|---|---|---|"]
    for reading in READINGS:
        per_arm = {a: {s: collapse(v[reading]["median"]) for s, v in by_seed.items()} for a, by_seed in records.items()}
        for arm, values in per_arm.items():
            ordered = [values[s] for s in sorted(values)]
            std = f" ± {statistics.stdev(ordered):.4f}" if len(ordered) > 1 else ""
            d = paired(values, per_arm["residual"]) if arm != "residual" else None
            diff = "—" if d is None else (f"{d.mean:+.4f}" + (f" [{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]" if d.ci else "")
                                          + f", {d.wins}/{d.n}")
            whole = [collapse(v[reading]["median"], deep_from=0) for v in records[arm].values()]
            whole_std = f" ± {statistics.stdev(whole):.4f}" if len(whole) > 1 else ""
            lines.append(f"| {reading.replace('_', ' ')} | {arm} | {', '.join(map(str, sorted(values)))} | "
                         f"{statistics.fmean(ordered):.4f}{std} | " + ", ".join(f"{v:.4f}" for v in ordered) +
                         f" | {diff} | {statistics.fmean(whole):.4f}{whole_std} |")
    fig = Figure(figsize=(11, 4), layout="constrained")
    for i, reading in enumerate(READINGS):
        ax = fig.add_subplot(1, 2, i + 1)
        for arm, by_seed in records.items():
            curves = torch.tensor([v[reading]["median"] for v in by_seed.values()])
            x = range(1, curves.shape[1] + 1)
            line, = ax.plot(x, curves.mean(0).tolist(), label=f"{arm} ({len(by_seed)} seeds)")
            ax.fill_between(x, curves.min(0).values.tolist(), curves.max(0).values.tolist(), color=line.get_color(),
                            alpha=0.15)
        ax.set_xlabel("pair of adjacent sub-layers (attention, MLP, ...)")
        ax.set_ylabel("median cosine similarity of their inputs")
        ax.set_title(f"{task.upper()}, {reading.replace('_', ' ')} (shaded: min-max over seeds)", fontsize=10)
        ax.legend(fontsize=8)
    return "\n".join(lines) + "\n", buffer.getvalue(), fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["similarity"])
    parser.add_argument("--task", choices=["lm", "vit"], default="vit")
    parser.add_argument("--results", type=Path, default=RESULTS)
    a = parser.parse_args(argv)
    made = 0
    for r in main_study(a.task).runs:
        folder = r.folder(a.results)
        if (folder / "done.json").is_file() and (folder / "checkpoints" / "last.ckpt").is_file() \
                and not (folder / "probe.json").is_file():
            write_atomic(folder / "probe.json", json.dumps(probe_run(folder), indent=1) + "\n")
            made += 1
            print(f"probes: {r.name}", flush=True)
    table = similarity_table(a.task, a.results)
    if table is None:
        raise SystemExit(f"probes: {made} probes made; no paired probes of the {a.task} main grid's headline pair yet "
                         "(their runs' checkpoints are on the machine that trained them)")
    md, rows, fig = table
    out = a.results / a.task / "main"
    write_atomic(out / "similarity.md", md)
    write_atomic(out / "similarity.csv", rows)
    write_atomic(out / "similarity.png", _png(fig))
    print(f"probes: {made} probes made; {out / 'similarity.md'}")


if __name__ == "__main__":
    main()
