"""Probes of trained runs: what the trained networks compute, read from a run's checkpoints/last.ckpt.

Representation collapse (the HC paper's motivation, Zhu et al. 2025 §1, after Liu et al. 2020): in a deep Pre-Norm
network the features entering deeper layers become nearly the same, so added layers contribute less; hyper-
connections are argued to avoid that. The probe: for every pair of adjacent sub-layers, the cosine similarity of
what they receive, token by token, on a fixed batch of validation inputs. "What a sub-layer receives" is the input of
its pre-norm: the residual stream h for the baseline, the width connection's branch input x = A_m^T H for HC and
mHC (each model's own view of "the layer input"; the paper's figure of this measure, as we read it, is of OLMo-1B).

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
from lit_hc.io import write_atomic

RESULTS = Path(__file__).resolve().parents[1] / "results"
PROBE_INPUTS = 256  # validation inputs (images or windows) per probe, the first of the fixed validation order


@torch.no_grad()
def sublayer_input_similarity(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the inputs of adjacent sub-layers, per token: (sub-layers - 1, tokens of the batch).

    A sub-layer's input is what its pre-norm receives (norm1 before attention, norm2 before the MLP, in every Block
    of `net`), taken by forward pre-hooks, so every residual variant is measured at the same place.
    """
    from lit_hc.layers import Block

    captured: list[torch.Tensor] = []
    hook = lambda module, args: captured.append(args[0].detach().flatten(0, -2).double())  # noqa: E731
    blocks = [m for m in net.modules() if isinstance(m, Block)]
    handles = [norm.register_forward_pre_hook(hook) for b in blocks for norm in (b.norm1, b.norm2)]
    was_training = net.training
    try:
        net.eval()
        net(inputs)
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    if len(captured) != 2 * len(blocks):
        raise RuntimeError(f"expected {2 * len(blocks)} sub-layer inputs, got {len(captured)}")
    return torch.stack([nn.functional.cosine_similarity(a, b, dim=-1) for a, b in zip(captured, captured[1:])])


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
    sims = sublayer_input_similarity(module.net, torch.cat(batches)[:PROBE_INPUTS])
    q = torch.quantile(sims.float(), torch.tensor([0.05, 0.5, 0.95]), dim=1)
    return {"probe": "sublayer_input_similarity", "inputs": PROBE_INPUTS, "median": q[1].tolist(),
            "p05": q[0].tolist(), "p95": q[2].tolist(), "checkpoint": "last.ckpt"}


def _data_module(section: dict):
    """The run's data module from its config.yaml's data section (class_path and init_args)."""
    from lit_hc import ImageFolderDataModule, TextDataModule

    classes = {"lit_hc.ImageFolderDataModule": ImageFolderDataModule, "lit_hc.TextDataModule": TextDataModule}
    return classes[section["class_path"]](**section["init_args"])


def collapse(record: dict, deep_from: float = 0.5) -> float:
    """One number per run: the mean over the deeper half of the network's adjacent pairs of the median similarity."""
    medians = record["median"]
    return statistics.fmean(medians[int(len(medians) * deep_from):])


def similarity_table(task: str, results: Path = RESULTS) -> tuple[str, str, Figure] | None:
    """Markdown, CSV and a figure of the probe over the main grid's headline pair (the baseline at the grid's LR,
    DHC x4 at the LR of its comparison at each arm's best, ViT; at the grid's LR, LM), paired by seed."""
    study = main_study(task)
    lr = dict(study.base_knobs)["lr"]
    own = next((c[0] for c in study.comparisons if c[0].startswith("dhc4-lr") and c[1] == "residual"), "dhc4")
    arms = {"residual": "residual", own: own}
    records: dict[str, dict[int, dict]] = {a: {} for a in arms}
    for r in study.runs:
        name = r.variant if r.knob("lr") == lr else f"{r.variant}-lr{r.knob('lr'):g}"
        other = [k for k, v in r.knobs if k != "lr" and study.base_knobs.get(k) != v]  # a control's depth, steps
        path = r.folder(results) / "probe.json"
        if name in records and not other and path.is_file():
            records[name][r.seed] = json.loads(path.read_text())
    if not all(records.values()):
        return None
    base, hc = records["residual"], records[own]
    d = paired({s: collapse(v) for s, v in hc.items()}, {s: collapse(v) for s, v in base.items()})
    rows = [{"arm": a, "seed": s, "deep_half_median_similarity": collapse(v), "median_per_pair": v["median"]}
            for a, by_seed in records.items() for s, v in sorted(by_seed.items())]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    lines = [f"# {task.upper()} main grid: similarity of adjacent sub-layers' inputs (representation collapse)", "",
             "Written by `python -m experiments.probes similarity --task " + task + "` from each run's probe.json "
             "(made from its last checkpoint on the machine that trained it). Per run: the median over tokens of "
             "the cosine similarity between the inputs of adjacent sub-layers, on the first "
             f"{PROBE_INPUTS} validation inputs; 'deeper half' = the mean of those medians over the deeper half of "
             "the pairs. Paired by seed: the arms share the data order and non-HC init.", "",
             "| arm | seeds | deeper half, mean ± std | per seed |", "|---|---|---|---|"]
    for arm, by_seed in records.items():
        values = [collapse(v) for _, v in sorted(by_seed.items())]
        std = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        lines.append(f"| {arm} | {', '.join(map(str, sorted(by_seed)))} | {statistics.fmean(values):.4f}{std} | "
                     + ", ".join(f"{v:.4f}" for v in values) + " |")
    if d is not None:
        ci = f" [{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]" if d.ci else ""
        lines += ["", f"{own} − residual, paired: {d.mean:+.4f}{ci} (95% t-interval), lower on {d.wins} of {d.n} "
                  "seeds (lower = less alike = less collapse)."]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for arm, by_seed in records.items():
        curves = torch.tensor([v["median"] for v in by_seed.values()])
        line, = ax.plot(range(1, curves.shape[1] + 1), curves.mean(0).tolist(), label=f"{arm} ({len(by_seed)} seeds)")
        ax.fill_between(range(1, curves.shape[1] + 1), curves.min(0).values.tolist(), curves.max(0).values.tolist(),
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("pair of adjacent sub-layers (attention, MLP, attention, ...)")
    ax.set_ylabel("median cosine similarity of their inputs")
    ax.set_title(f"{task.upper()}: representation collapse (shaded: min-max over seeds)")
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(out / "similarity.png", buffer.getvalue())
    print(f"probes: {made} probes made; {out / 'similarity.md'}")


if __name__ == "__main__":
    main()
