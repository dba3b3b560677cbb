"""AdamW's three CPU implementations on one of the bench sweep's GPTs: the per-tensor loop (torch's default for CPU
tensors), the multi-tensor update (`foreach=True`, what `lit-hc fit` builds) and the fused kernel (`fused=True`),
timed on the same parameter groups and random gradients, and whether each leaves the parameters the per-tensor
loop leaves, to the last bit.

    python -m experiments.optimizer_ab --out results/bench-optimizer   # -> optimizer_ab.md

HC adds eight parameter tensors per sub-layer (DHC), so an update that costs per tensor costs HC more.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from experiments.bench import VARIANTS, WIDTHS, build, header
from lit_hc.io import write_atomic
from lit_hc.optim import param_groups

KINDS = {"per-tensor loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def run(variant: str, width: str, kind: str, steps: int) -> tuple[list[torch.Tensor], float, int]:
    torch.manual_seed(0)
    model = build("lm", WIDTHS[width]["arch"], variant, torch.device("cpu"))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.95), **KINDS[kind])
    params = [p for p in model.parameters() if p.requires_grad]
    g, times = torch.Generator().manual_seed(1), []
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return [p.detach() for p in params], statistics.median(times[steps // 5:]) * 1e3, len(params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["residual", "dhc4", "mhc4"], choices=list(VARIANTS))
    parser.add_argument("--width", default="d64-L16", choices=list(WIDTHS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="results/bench-optimizer")
    a = parser.parse_args(argv)
    if a.steps < 2:
        parser.error(f"--steps {a.steps}: at least 2 (the first fifth of them is warm-up, the rest timed)")
    command = f"python -m experiments.optimizer_ab {' '.join(argv if argv is not None else sys.argv[1:])}"
    lines = header(f"AdamW's CPU implementations on the bench GPT {a.width}", command.strip(), torch.device("cpu")) + [
             f"One optimizer step (median of the last {a.steps - a.steps // 5} of {a.steps}, random gradients), and "
             "whether the parameters after all steps equal the per-tensor loop's to the last bit.\n",
             "| variant | parameter tensors | implementation | ms per step | same bits as the loop | largest difference |",
             "|---|---|---|---|---|---|"]
    for variant in a.variants:
        reference = None
        for kind in KINDS:  # the per-tensor loop first: the reference
            params, ms, count = run(variant, a.width, kind, a.steps)
            reference = params if reference is None else reference
            diff = max((x - y).abs().max().item() for x, y in zip(reference, params))
            same = all(torch.equal(x, y) for x, y in zip(reference, params))
            lines.append(f"| {variant} | {count} | {kind} | {ms:.2f} | {'yes' if same else 'no'} | {diff:.1e} |")
            print(lines[-1], flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(a.out) / "optimizer_ab.md", "\n".join(lines) + "\n")
    print(f"optimizer_ab: wrote {a.out}/optimizer_ab.md")


if __name__ == "__main__":
    main()
