"""Speed and memory of every residual variant against the Pre-Norm baseline, measured in one process.

    python -m experiments.bench                      # make bench: both models, eager and compiled -> results/bench.*
    python -m experiments.bench --repeats 1 --quick  # the smoke run of the tests
    python -m experiments.bench --fit                # the real training loop: `lit-hc fit` runs of the LM main grid

For each model (a 6-layer GPT and ViT at d = 256) and mode (eager, torch.compile), every variant is built with the
same seed; repeats are interleaved (variant order rotates each repeat) so drifts of the machine hit all variants
alike. Reported per variant: the median training-step time (forward, backward, AdamW) and its ratio to the
baseline of the same run, training memory and its ratio, and inference throughput (forward only).

Memory: on CUDA the peak allocated bytes of a training step (torch.cuda.max_memory_allocated). On CPU there is
no allocator statistic, so the column is what a training step must hold: parameters, gradients, AdamW state and
the activations autograd saves for backward (counted by saved-tensor hooks, each storage once).
The peer implementation (the `hyper-connections` package, `uv sync --extra bench`) is measured at n = 4 around
the same attention and MLP sub-layers when it is installed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_hc import GPT, GPTConfig, HCConfig, ViT, ViTConfig
from lit_hc.analysis import saved_activation_bytes, training_flops
from lit_hc.io import write_atomic

VARIANTS = {name: HCConfig.from_name(name) for name in ("residual", "shc4", "dhc2", "dhc4", "dhc8", "dhc4-notanh", "mhc4")}
# HCConfig.recompute: the same numbers, only H kept for each width connection's backward (less memory, more time)
VARIANTS |= {f"{name}-recompute": dataclasses.replace(VARIANTS[name], recompute=True) for name in ("dhc4", "mhc4")}
# HCConfig.fused: the C++ one-pass connections on the CPU (the same function to float rounding)
VARIANTS |= {f"{name}-fused": dataclasses.replace(VARIANTS[name], fused=True) for name in ("shc4", "dhc4", "mhc4")}
VARIANTS |= {f"{name}-fused-recompute": dataclasses.replace(VARIANTS[name], fused=True, recompute=True)
             for name in ("dhc4", "mhc4")}
TARGETS = {"shc4": 1.10, "dhc4": 1.15, "mhc4": 1.25, "dhc8": 1.35}  # training-step ratio targets this project set itself
MODELS = {
    "lm": dict(arch=GPTConfig(vocab_size=256, block_size=256, n_layer=6, n_head=4, n_embd=256), batch=8),
    "vit": dict(arch=ViTConfig(image_size=64, patch_size=8, dim=256, depth=6, heads=4, num_classes=100), batch=32),
}
# The width sweep (--sweep): the bench GPT from the deep, narrow regime of the experiments (16 layers x d = 64,
# batch 16 x 128 tokens) to d = 1024 (6 layers, 256 tokens), the batch shrinking with width so that a step stays
# within ~0.5-5 s on a 2-core CPU. The overhead of HC shrinks with width; this curve, not one point, is what a
# user planning a run at another width needs.
WIDTHS = {
    "d64-L16": dict(arch=GPTConfig(vocab_size=256, block_size=128, n_layer=16, n_head=4, n_embd=64), batch=16),
    "d256": dict(arch=GPTConfig(vocab_size=256, block_size=256, n_layer=6, n_head=4, n_embd=256), batch=8),
    "d512": dict(arch=GPTConfig(vocab_size=256, block_size=256, n_layer=6, n_head=8, n_embd=512), batch=4),
    "d1024": dict(arch=GPTConfig(vocab_size=256, block_size=256, n_layer=6, n_head=16, n_embd=1024), batch=2),
}
QUICK_WIDTHS = {
    "d16-L2": dict(arch=GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=16), batch=2),
    "d32": dict(arch=GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=32), batch=2),
}
SWEEP_VARIANTS = ("residual", "shc4", "dhc4", "mhc4")
QUICK = {  # the smoke test: the same code on tiny models
    "lm": dict(arch=GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=32), batch=2),
    "vit": dict(arch=ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, heads=2, num_classes=10), batch=2),
}


def make_batch(task: str, arch, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if task == "lm":
        idx = torch.randint(0, arch.vocab_size, (batch, arch.block_size + 1), generator=g)
        return idx[:, :-1].to(device), idx[:, 1:].to(device)
    images = torch.randn(batch, 3, arch.image_size, arch.image_size, generator=g)
    return images.to(device), torch.randint(0, arch.num_classes, (batch,), generator=g).to(device)


def build(task: str, arch, variant: str, device) -> nn.Module:
    torch.manual_seed(0)
    if variant == "peer-hc4":
        return peer_model(task, arch).to(device)
    cls = GPT if task == "lm" else ViT
    return cls(dataclasses.replace(arch, hc=VARIANTS[variant])).to(device)


class _PeerConnection(nn.Module):
    """The package's HyperConnections behind our StreamConnection call: forward(H, branch)."""

    def __init__(self, init_hc, dim: int, layer_idx: int):
        super().__init__()
        self.hc = init_hc(dim=dim, layer_index=layer_idx)

    def forward(self, H: torch.Tensor, branch) -> torch.Tensor:
        x, add_residual = self.hc(H)
        return add_residual(branch(x))


class _PeerLayout(nn.Module):
    """Runs a block in the package's layout, streams folded into the batch: (b*n, t, d). The first block converts
    from ours, (b, t, n, d), the last converts back (one copy each per forward, like the package's expand)."""

    def __init__(self, block: nn.Module, n: int, first: bool, last: bool):
        super().__init__()
        self.block, self.n, self.first, self.last = block, n, first, last

    def forward(self, H: torch.Tensor, *args) -> torch.Tensor:
        if self.first:
            H = H.movedim(-2, 1).flatten(0, 1)  # (b, t, n, d) -> (b*n, t, d)
        H = self.block(H, *args)
        return H.unflatten(0, (-1, self.n)).movedim(1, -2) if self.last else H


def peer_model(task: str, arch) -> nn.Module:
    """Our GPT/ViT with the `hyper-connections` package's HC x4 (dynamic, tanh) around the same sub-layers."""
    from hyper_connections import get_init_and_expand_reduce_stream_functions

    n = 4
    init_hc = get_init_and_expand_reduce_stream_functions(n)[0]
    model = (GPT if task == "lm" else ViT)(dataclasses.replace(arch, hc=HCConfig(kind="hc", expansion_rate=n)))
    dim, depth = (arch.n_embd, arch.n_layer) if task == "lm" else (arch.dim, arch.depth)
    for i, block in enumerate(model.blocks):
        block.hc_attn, block.hc_mlp = _PeerConnection(init_hc, dim, 2 * i), _PeerConnection(init_hc, dim, 2 * i + 1)
    model.blocks = nn.ModuleList(_PeerLayout(b, n, i == 0, i == depth - 1) for i, b in enumerate(model.blocks))
    return model


def loss_fn(task: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return F.cross_entropy(out.flatten(0, -2) if task == "lm" else out, y.flatten() if task == "lm" else y)


def train_step(task, model, optimizer, x, y) -> None:
    loss = loss_fn(task, model, x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def memory_bytes(task, model, optimizer, x, y, device) -> int:
    """Training memory of one step (see the module docstring for what is counted on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        train_step(task, model, optimizer, x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    adam = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)
    return 2 * params + adam + saved_activation_bytes(model, x)  # params + grads + Adam + saved activations


def bench(task: str, spec: dict, variants: list[str], compile: bool, repeats: int, steps: int, warmup: int,
          device) -> list[dict]:
    arch, batch = spec["arch"], spec["batch"]
    x, y = make_batch(task, arch, batch, device)
    models, optimizers, steppers, infer = {}, {}, {}, {}
    for v in variants:
        model = build(task, arch, v, device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if compile:
            model.compile()  # in place, like lit-hc's `compile: true`
        models[v], optimizers[v] = model, optimizer
        for _ in range(warmup):
            train_step(task, model, optimizer, x, y)
    times = {v: [] for v in variants}
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                train_step(task, models[v], optimizers[v], x, y)
            sync(device)
            times[v].append((time.perf_counter() - start) / steps)
    for v in variants:
        model = models[v].eval()
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            samples = []
            for _ in range(max(3, repeats)):
                sync(device)
                start = time.perf_counter()
                model(x)
                sync(device)
                samples.append(time.perf_counter() - start)
        units = x.numel() if task == "lm" else x.shape[0]
        infer[v] = units / statistics.median(samples)
        model.train()
    rows = []
    base_time = statistics.median(times["residual"])
    mems = {v: memory_bytes(task, models[v], optimizers[v], x, y, device) for v in variants}
    for v in variants:
        step = statistics.median(times[v])
        # the ratio within each round (the variant and the baseline timed minutes apart at most): its spread says
        # how far one run's ratio can be trusted, which the medians alone do not
        paired = _round_ratios(times[v], times["residual"])
        rows.append({"model": task, "mode": "compiled" if compile else "eager", "variant": v,
                     "step_ms": 1e3 * step, "step_ratio": step / base_time,
                     "round_ratio_min": min(paired), "round_ratio_max": max(paired),
                     "round_ms": [1e3 * t for t in times[v]],
                     "memory_mb": mems[v] / 2**20, "memory_ratio": mems[v] / mems["residual"],
                     "infer_per_s": infer[v], "infer_ratio": infer[v] / infer["residual"],
                     "target": TARGETS.get(v, "")})
    return rows


def stream_bandwidth(numel: int, device, repeats: int) -> float:
    """Bytes per second of copying a float32 tensor of `numel` elements (the size of H): read once, written once.
    The fastest any pass over the streams can go on this machine, measured in the same run as the steps."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    samples = []
    for i in range(3 + 5 * repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 3:
            samples.append(time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / statistics.median(samples)


def sublayer_bytes(tokens: int, d: int, n: int) -> int:
    """The bytes the residual stream(s) of one sub-layer must move at least in a training step, float32.

    Per token: with n > 1 streams the forward reads H and writes H' (2 n d) and the backward reads the gradient
    of H' and H (the coefficients' gradients need it) and writes the gradient of H (3 n d): 5 n d. The baseline's
    single stream: its residual add reads h and writes h' forward, reads and writes the gradient backward: 4 d.
    Everything else (the sub-layers, their norms) is the same in both.
    """
    return tokens * (5 * n * d if n > 1 else 4 * d) * 4


def floor_bytes(arch: GPTConfig, batch: int, n: int) -> int:
    """sublayer_bytes over a training step of the GPT: 2 sub-layers per block."""
    return 2 * arch.n_layer * sublayer_bytes(batch * arch.block_size, arch.n_embd, n)


def compute_floor(arch: GPTConfig, variant: str) -> float:
    """The step-time ratio a variant's extra arithmetic alone would cost if it ran at the FLOP rate the baseline's
    step reaches: its training FLOPs over the baseline's (lit_hc.analysis.training_flops; the same tokens, so the
    ratio needs no timing). Not a hard bound like the bytes', but a fair one: the baseline's FLOPs are large GEMMs
    and attention, the fastest arithmetic on the machine, and HC's are small per-token products. It matters at
    small width: mHC's coefficient projection, vec(H) (n d) onto n^2 + 2n coefficients per sub-layer (mHC,
    arXiv 2512.24880, its parameterisation of H_pre, H_post, H_res), is 19% of a d = 64 block's forward arithmetic
    at context 128 and 1.5% of a d = 1024 one's at 256. The peer package's HC x4 does DHC x4's arithmetic."""
    hc = VARIANTS["dhc4" if variant == "peer-hc4" else variant]
    return training_flops(dataclasses.replace(arch, hc=hc), 1) / training_flops(dataclasses.replace(arch, hc=HCConfig()), 1)


def sweep(widths: dict, variants: list[str], modes: list[bool], repeats: int, steps: int, warmup: int,
          device) -> list[dict]:
    """Every variant at every width, eager and compiled, with the floor: the step-time ratio the extra stream
    bytes alone would cost at the measured bandwidth (1 + extra bytes / bandwidth / the baseline's step time),
    and how many times that floor's overhead the measured overhead is."""
    rows = []
    for width, spec in widths.items():
        arch, batch = spec["arch"], spec["batch"]
        bandwidth = stream_bandwidth(batch * arch.block_size * 4 * arch.n_embd, device, repeats)
        for compile in modes:
            print(f"bench: sweep {width} {'compiled' if compile else 'eager'}: {', '.join(variants)}", flush=True)
            timed = {r["variant"]: r for r in bench("lm", spec, variants, compile, repeats, steps, warmup, device)}
            base_s = timed["residual"]["step_ms"] / 1e3
            for v, r in timed.items():
                n = 1 if v == "residual" else 4  # every sweep variant but the baseline has 4 streams
                floor = 1 + (floor_bytes(arch, batch, n) - floor_bytes(arch, batch, 1)) / bandwidth / base_s
                flops = compute_floor(arch, v)
                rows.append({"width": width, "d": arch.n_embd, "layers": arch.n_layer, "batch": batch,
                             "tokens": arch.block_size, "mode": r["mode"], "variant": v, "step_ms": r["step_ms"],
                             "step_ratio": r["step_ratio"], "round_ratio_min": r["round_ratio_min"],
                             "round_ratio_max": r["round_ratio_max"], "round_ms": r["round_ms"],
                             "floor_ratio": floor, "floor_overhead": floor - 1,
                             "overhead_over_floor": (r["step_ratio"] - 1) / (floor - 1) if n > 1 else None,
                             "compute_floor_ratio": flops,
                             "overhead_over_compute_floor": (r["step_ratio"] - 1) / (flops - 1) if n > 1 else None,
                             "memory_ratio": r["memory_ratio"], "bandwidth_gb_s": bandwidth / 1e9})
                print(f"  {width:8s} {v:12s} {r['step_ms']:8.1f} ms  {r['step_ratio']:.2f}x  floor {floor:.3f}x "
                      f"(bytes), {flops:.3f}x (FLOPs)", flush=True)
    return rows


def _timed(fn, device, repeats: int, inner: int) -> tuple[float, float]:
    """Seconds per call of fn: medians over repeats of `inner` calls, wall clock and this process's CPU time."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(inner):
            fn()
        sync(device)
        walls.append((time.perf_counter() - wall) / inner)
        cpus.append((time.process_time() - cpu) / inner)
    return statistics.median(walls), statistics.median(cpus)


def connection_costs(widths: dict, variants: list[str], repeats: int, device) -> list[dict]:
    """One sub-layer's connection alone, forward + backward, at each sweep width's activation shape: where HC's
    extra step time goes, and how far it is from its floor (the stream bytes at the bandwidth measured here).

    The branch is a per-channel scale (the same few microseconds for every variant), so what differs is the
    connection: the whole of it (width connection, branch, depth connection) and the width connection alone
    (HC: norm statistics, coefficients, mix; x, R and beta out), the depth connection being the difference.
    The layer index is 1: layer 0 receives the expanded embedding, a stride-0 view, which no other layer does.
    One thread, so that the numbers are work, not parallelism; CPU time (which another job on the machine
    inflates less than the wall clock) beside the wall clock."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for width, spec in widths.items():
            arch, batch = spec["arch"], spec["batch"]
            tokens, d = batch * arch.block_size, arch.n_embd
            inner = min(20, max(1, round(2**21 / (tokens * d))))  # ~10-50 ms per repeat from d = 64 up
            bandwidth = stream_bandwidth(tokens * 4 * d, device, repeats)
            timed = {}
            for v in variants:
                torch.manual_seed(0)
                n = VARIANTS[v].expansion_rate
                connection = VARIANTS[v].build(d, layer_idx=1).to(device)
                H = torch.randn(batch, arch.block_size, n, d, device=device, requires_grad=True)
                scale = torch.randn(d, device=device, requires_grad=True)
                grad = torch.randn_like(H)

                def whole():
                    connection(H, lambda x: x * scale).backward(grad)

                with torch.no_grad():  # gradients made once, as `grad` is: allocating them per call is not the connection's cost
                    width_grads = [torch.randn_like(t) for t in connection.width(H)] if n > 1 else []

                def width_only():
                    torch.autograd.backward(connection.width(H), width_grads)

                timed[v] = n, _timed(whole, device, repeats, inner), (
                    _timed(width_only, device, repeats, inner) if n > 1 else (0.0, 0.0))
            (base_wall, base_cpu) = timed["residual"][1]
            for v, (n, (wall, cpu), (width_wall, width_cpu)) in timed.items():
                floor_ms = 1e3 * (sublayer_bytes(tokens, d, n) - sublayer_bytes(tokens, d, 1)) / bandwidth
                rows.append({"width": width, "d": d, "tokens": tokens, "variant": v, "n": n,
                             "connection_ms": 1e3 * wall, "connection_cpu_ms": 1e3 * cpu,
                             "width_ms": 1e3 * width_wall, "width_cpu_ms": 1e3 * width_cpu,
                             "depth_ms": 1e3 * (wall - width_wall) if n > 1 else None,
                             "overhead_ms": 1e3 * (wall - base_wall), "overhead_cpu_ms": 1e3 * (cpu - base_cpu),
                             "floor_overhead_ms": floor_ms,
                             "overhead_over_floor": (wall - base_wall) * 1e3 / floor_ms if n > 1 else None,
                             "bandwidth_gb_s": bandwidth / 1e9})
                print(f"  {width:8s} {v:12s} {1e3 * wall:7.3f} ms (cpu {1e3 * cpu:7.3f})  width {1e3 * width_wall:7.3f}"
                      f"  floor overhead {floor_ms:.3f} ms", flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def header(title: str, command: str, device, seconds: float | None = None, end: str = "\n") -> list[str]:
    """The first lines of every table this bench writes: what, the command (and how long it took), the code
    that made it, the machine."""
    took = "" if seconds is None else f" ({seconds / 60:.1f} min)"
    return [f"# {title}\n", f"Command: `{command}`{took}  ", f"Code: {code()}  ", f"Machine: {machine(device)}{end}"]


def write_connections(rows: list[dict], out: Path, command: str, device, seconds: float) -> None:
    write_csv(out / "bench_connections.csv", rows)
    lines = header("One sub-layer's connection: its cost, its parts and its floor", command, device, seconds) + [
             "Forward + backward of one connection alone (`connection_costs`): H (batch, tokens, n, d) of the sweep's "
             "shapes, the branch a per-channel scale, 1 thread, medians over repeats. 'width' = the width connection "
             "alone (HC: norm statistics, coefficients, mix), 'depth' = the rest (the depth connection and the "
             "branch's few microseconds). 'over the residual' = this connection's time minus the baseline's (its "
             "add). 'floor' = the extra stream bytes of one sub-layer, tokens x (5 n d - 4 d) x 4 (see "
             "bench_widths.md), at the bandwidth measured in the same run. Times in ms, wall clock; CPU time in "
             "brackets.\n"]
    for width in dict.fromkeys(r["width"] for r in rows):
        sel = [r for r in rows if r["width"] == width]
        lines += [f"## {width}: {sel[0]['tokens']:,} tokens x d = {sel[0]['d']}, {sel[0]['bandwidth_gb_s']:.1f} GB/s\n",
                  "| variant | connection | width | depth | over the residual | floor | over the residual / floor |",
                  "|---|---|---|---|---|---|---|"]
        for r in sel:
            hc = r["n"] > 1
            lines.append(f"| {r['variant']} | {r['connection_ms']:.3f} ({r['connection_cpu_ms']:.3f}) | "
                         + (f"{r['width_ms']:.3f} ({r['width_cpu_ms']:.3f}) | {r['depth_ms']:.3f} | "
                            f"{r['overhead_ms']:.3f} ({r['overhead_cpu_ms']:.3f}) | {r['floor_overhead_ms']:.3f} | "
                            f"{r['overhead_over_floor']:.0f}x |" if hc else "— | — | — | — | — |"))
        lines.append("")
    write_atomic(out / "bench_connections.md", "\n".join(lines) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows as CSV, floats to 4 significant digits (a list of them joined by ';'), written atomically."""
    def cell(v):
        if isinstance(v, list):
            return ";".join(f"{x:.4g}" for x in v)
        return f"{v:.4g}" if isinstance(v, float) else v

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: cell(v) for k, v in r.items()} for r in rows)
    write_atomic(path, buffer.getvalue())


FIT_VARIANTS = ("residual", "dhc4", "dhc4-fused")


def fit_runs(variants: list[str], rounds: int, steps: int, quick: bool, work: Path) -> list[dict]:
    """The training loop itself, not a bench model: `lit-hc fit` of the LM main grid's seed-0 run of each variant
    (its data, model, optimizer and logging, cut to `steps` steps), one process per run, rounds interleaved with the
    order rotating. The step time is the median of the per-step rates the run logs, as the grid's summaries read it."""
    from experiments.grids import main_study
    from experiments.reproduce import cli_args
    from experiments.summarize import read_run_metrics

    study = main_study("lm", quick=quick)
    rows = []
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            base = v.removesuffix("-fused")
            run = next(x for x in study.runs if x.variant == base and x.seed == 0 and dict(x.knobs) == study.base_knobs)
            args = cli_args(run, study, "cpu", quick, work, None)
            args = [a.replace(run.name, f"{v}-round{r}") for a in args]
            args += ["--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
                     "--trainer.limit_val_batches", "1", "--model.init_args.hc.fused", str(v.endswith("-fused")).lower()]
            started = time.time()
            if subprocess.run([sys.executable, "-m", "lit_hc", *args], stdout=subprocess.DEVNULL).returncode:
                sys.exit(f"bench: error: `lit-hc fit` of {v} failed (its message is above); nothing was written")
            m = read_run_metrics(work / "lm" / "runs" / f"{v}-round{r}", "lm")
            rows.append({"round": r, "variant": v, "step_ms": m["step_time_s"] * 1e3, "wall_s": time.time() - started,
                         "steps": steps, "train_tokens_per_step": m["units_per_step"]})
            print(f"  round {r} {v:12s} {rows[-1]['step_ms']:7.1f} ms/step", flush=True)
    for row in rows:
        ref = next(x for x in rows if x["round"] == row["round"] and x["variant"] == "residual")
        row["step_ratio"] = row["step_ms"] / ref["step_ms"]
    return rows


def write_fit(rows: list[dict], out: Path, command: str, device, seconds: float, arch: str) -> None:
    write_csv(out / "bench_fit.csv", rows)
    rounds = sorted({r["round"] for r in rows})
    lines = header("HC's cost in the training loop itself", command, device, seconds) + [
        f"`lit-hc fit` of the LM main grid's seed-0 run of each variant ({arch}), cut to {rows[0]['steps']} steps, one "
        "process per run, rounds interleaved (the order rotates each round). Step time: the median of the per-step "
        "rates the run logs (the wall time between batches: data, forward, backward, optimizer), as the grid's "
        "summaries read it; ratio: to the residual run of the same round. `-fused`: `--model.init_args.hc.fused "
        "true` (the C++ one-pass connections).\n",
        "| variant | " + " | ".join(f"round {r}: ms / step (ratio)" for r in rounds) + " | median ratio |",
        "|---|" + "---|" * (len(rounds) + 1)]
    for v in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == v]
        lines.append(f"| {v} | " + " | ".join(f"{r['step_ms']:.0f} ({r['step_ratio']:.2f}x)" for r in sel) +
                     f" | {statistics.median(r['step_ratio'] for r in sel):.2f}x |")
    write_atomic(out / "bench_fit.md", "\n".join(lines) + "\n")


def write_sweep(rows: list[dict], out: Path, command: str, device, seconds: float) -> None:
    write_csv(out / "bench_widths.csv", rows)
    widths = list(dict.fromkeys(r["width"] for r in rows))
    lines = header("HC's step-time overhead against width, and its floor", command, device, seconds) + [
             "Each cell: training-step time / the baseline's in the same run and mode (medians over interleaved "
             "repeats), in square brackets the lowest and highest of the same ratio within one round (the variant "
             "and the baseline timed back to back: how much one run's ratio moves), then in brackets the floor: the "
             "ratio the extra bytes of the residual streams alone would cost at the memory bandwidth measured in the same run (a copy of a tensor the size of H), i.e. "
             "1 + (bytes(n) - bytes(1)) / bandwidth / the baseline's step time, with bytes(n) = 2 layers x tokens "
             "x 5 n d x 4 (forward: read H, write H'; backward: read dH' and H, write dH) and bytes(1) = ... x 4 d "
             "(`floor_bytes`). Last: measured overhead / floor overhead (1 = at the floor). Then the compute "
             "floor: the ratio HC's extra arithmetic alone would cost at the FLOP rate the baseline's step reaches "
             "(training FLOPs of the variant / the baseline's, `compute_floor`), and the measured overhead over "
             "it. At d = 64 the compute floor is the larger of the two: HC's per-token products are a sizeable "
             "share of a narrow model's arithmetic, mHC's coefficient projection above all.\n"]
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        spec = {r["width"]: r for r in sel}
        lines += [f"## {mode}\n", "| variant | " + " | ".join(
            f"{w} ({spec[w]['layers']} layers, {spec[w]['batch']}x{spec[w]['tokens']} tokens)" for w in widths) + " |",
            "|---|" + "---|" * len(widths)]
        for v in dict.fromkeys(r["variant"] for r in sel):
            cells = []
            for w in widths:
                r = next((r for r in sel if r["width"] == w and r["variant"] == v), None)
                spread = ("" if r is None or r["variant"] == "residual" or len(r["round_ms"]) < 2 else
                          f" [{r['round_ratio_min']:.2f}-{r['round_ratio_max']:.2f}]")
                cells.append("—" if r is None else f"{r['step_ratio']:.2f}x{spread} ({r['floor_ratio']:.3f}x)" + (
                    f", {r['overhead_over_floor']:.0f}x the floor's overhead; compute floor "
                    f"{r['compute_floor_ratio']:.3f}x, {r['overhead_over_compute_floor']:.1f}x its overhead"
                    if r["overhead_over_floor"] else ""))
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("\nBandwidth (copy of H): " + ", ".join(
            f"{w} {spec[w]['bandwidth_gb_s']:.1f} GB/s" for w in widths) + "; baseline step: " + ", ".join(
            f"{w} {next(r['step_ms'] for r in sel if r['width'] == w and r['variant'] == 'residual'):.0f} ms"
            for w in widths) + ".\n")
        lines += mhc_over_dhc(sel, widths)
    write_atomic(out / "bench_widths.md", "\n".join(lines) + "\n")


def mhc_over_dhc(rows: list[dict], widths: list[str]) -> list[str]:
    """mHC x4's step time over DHC x4's at each width of one mode, plain and fused where both ran, beside the same
    ratio of their compute floors: how close to DHC x4 mHC x4 can come at all."""
    out = []
    for tail in ("", "-fused"):
        pick = {(r["width"], r["variant"]): r for r in rows}
        cells = [(w, pick[(w, "mhc4" + tail)], pick[(w, "dhc4" + tail)]) for w in widths
                 if (w, "mhc4" + tail) in pick and (w, "dhc4" + tail) in pick]
        if cells:
            out.append(f"mhc4{tail} / dhc4{tail}: " + ", ".join(
                f"{w} {m['step_ms'] / d['step_ms']:.2f}x{_round_spread(m, d)} (compute floors "
                f"{m['compute_floor_ratio'] / d['compute_floor_ratio']:.3f}x)" for w, m, d in cells) + ".\n")
    return out


def _round_ratios(a: list[float], b: list[float]) -> list[float]:
    """a's step time over b's in each interleaved round of one bench run."""
    return [x / y for x, y in zip(a, b)]


def _round_spread(a: dict, b: dict) -> str:
    """' [lo-hi]': a's step over b's within each round of one bench run, lowest and highest ('' for one round)."""
    ratios = _round_ratios(a["round_ms"], b["round_ms"])
    return f" [{min(ratios):.2f}-{max(ratios):.2f}]" if len(ratios) > 1 else ""


def profile(task: str, spec: dict, variants: list[str], device, out: Path, command: str, title: str = "") -> None:
    """Where the time of an eager training step goes: the top operators of each variant, and for each HC variant
    the operators whose time grew most over the baseline's (results/bench_profile.md)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    arch, batch = spec["arch"], spec["batch"]
    x, y = make_batch(task, arch, batch, device)
    lines = header(f"Where the time goes: one eager training step of the {title or task + ' bench model'}", command,
                   device) + [
             "Self time per operator over 2 steps (torch.profiler, CPU); the profiler adds overhead, so compare "
             "variants with each other, not with bench.md.\n"]
    per_op = {}
    for v in variants:
        model = build(task, arch, v, device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for _ in range(2):
            train_step(task, model, optimizer, x, y)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(2):
                train_step(task, model, optimizer, x, y)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        per_op[v] = {e.key: (e.self_cpu_time_total / 2e3, e.count // 2) for e in events}
        lines += [f"## {v}: {total / 2e3:.0f} ms per step under the profiler\n", "| operator | ms per step | share | calls per step |",
                  "|---|---|---|---|"]
        for e in events[:12]:
            lines.append(f"| `{e.key}` | {e.self_cpu_time_total / 2e3:.1f} | {e.self_cpu_time_total / total:.0%} | "
                         f"{e.count // 2} |")
        lines.append("")
    base = per_op.get("residual", {})
    for v in (v for v in variants if v != "residual" and base):
        grown = sorted(per_op[v], key=lambda k: base.get(k, (0, 0))[0] - per_op[v][k][0])[:12]
        extra = sum(ms for ms, _ in per_op[v].values()) - sum(ms for ms, _ in base.values())
        lines += [f"## {v} against residual: the operators that grew most ({extra:+.0f} ms per step in all)\n",
                  "| operator | ms per step (residual) | ms per step | difference | calls per step (residual / this) |",
                  "|---|---|---|---|---|"]
        for k in grown:
            (b_ms, b_n), (v_ms, v_n) = base.get(k, (0.0, 0)), per_op[v][k]
            lines.append(f"| `{k}` | {b_ms:.1f} | {v_ms:.1f} | {v_ms - b_ms:+.1f} | {b_n} / {v_n} |")
        lines.append("")
    write_atomic(out / "bench_profile.md", "\n".join(lines) + "\n")


def peer_available() -> bool:
    try:
        import hyper_connections  # noqa: F401
    except ImportError:
        return False
    return True


def code() -> str:
    """The commit the bench's code comes from, as each training run records it (experiments.reproduce)."""
    from experiments.reproduce import provenance  # imports the studies; only needed when a table is written

    origin = provenance()
    dirty = ", with uncommitted changes" if origin["dirty"] else ""
    return f"commit `{origin['commit'][:10]}` (code version `{origin['code']}`{dirty})"


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def write_results(rows: list[dict], specs: dict, out: Path, command: str, device, seconds: float) -> None:
    write_csv(out / "bench.csv", rows)
    unit = {"lm": "tokens/s", "vit": "images/s"}
    mem_note = ("peak allocated (CUDA)" if device.type == "cuda"
                else "params + grads + AdamW state + saved activations (CPU has no allocator statistic)")
    lines = header("Benchmark: HC variants vs the Pre-Norm residual baseline", command, device, seconds, end="  ") + [
             f"Memory: {mem_note}. Ratios are to `residual` in the same run and mode; medians over interleaved "
             "repeats after warm-up. `target` is the bound this project set on the training-step ratio.\n"]
    for (task, mode) in dict.fromkeys((r["model"], r["mode"]) for r in rows):
        spec = specs[task]
        lines += [f"## {task} ({mode})\n", f"`{spec['arch'].__class__.__name__}` "
                  f"{_describe(spec['arch'])}, batch {spec['batch']}\n",
                  f"| variant | train step (ms) | ratio | target | met | memory (MB) | ratio | inference ({unit[task]}) | ratio |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["model"] == task and r["mode"] == mode):
            met = "" if r["target"] == "" else ("yes" if r["step_ratio"] <= r["target"] else "no")
            target = "" if r["target"] == "" else f"<= {r['target']:.2f}x"
            lines.append(f"| {r['variant']} | {r['step_ms']:.1f} | {r['step_ratio']:.2f}x | "
                         f"{target} | {met} | "
                         f"{r['memory_mb']:.0f} | {r['memory_ratio']:.2f}x | {r['infer_per_s']:,.0f} | {r['infer_ratio']:.2f}x |")
        step = {r["variant"]: r["step_ms"] for r in rows if r["model"] == task and r["mode"] == mode}
        if "peer-hc4" in step and "dhc4" in step:
            lines.append(f"\nDHC x4 training step vs the peer package's HC x4: {step['peer-hc4'] / step['dhc4']:.2f}x "
                         "faster (the target: >= 1.4x).")
        lines.append("")
    write_atomic(out / "bench.md", "\n".join(lines) + "\n")


def _describe(arch) -> str:
    keys = ("n_layer", "n_embd", "n_head", "block_size", "vocab_size") if isinstance(arch, GPTConfig) else (
        "depth", "dim", "heads", "image_size", "patch_size")
    return ", ".join(f"{k}={getattr(arch, k)}" for k in keys)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["lm", "vit", "all"], default="all")
    parser.add_argument("--mode", choices=["eager", "compiled", "all"], default="all")
    parser.add_argument("--variants", nargs="+", default=None, help=f"subset of {list(VARIANTS)} (+ peer-hc4)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2, help="training steps timed per repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny models (the smoke test)")
    parser.add_argument("--out", default="results", help="folder for bench.md and bench.csv")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: the GPT at d = 64 (16 layers) to 1024, residual/SHC/DHC/mHC x4 (+ peer), "
                             "eager and compiled, with the floor -> bench_widths.md and .csv")
    parser.add_argument("--widths", nargs="+", default=None, metavar="WIDTH",
                        help="with --sweep: only these widths (e.g. d64-L16, the experiments' regime, ~1/4 of the time); "
                             "with --profile: the one sweep GPT to profile")
    parser.add_argument("--connections", action="store_true",
                        help="instead: one sub-layer's connection alone at the sweep's widths, its parts and its floor "
                             "-> bench_connections.md and .csv")
    parser.add_argument("--fit", action="store_true",
                        help=f"instead: `lit-hc fit` runs of the LM main grid (default variants {list(FIT_VARIANTS)}), "
                             "--repeats rounds of --fit-steps steps -> bench_fit.md and .csv")
    parser.add_argument("--fit-steps", type=int, default=100, help="with --fit: training steps per run")
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: the top operators of one eager step per variant -> bench_profile.md")
    a = parser.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {a.device}: no CUDA device on this machine; use --device cpu")
    device = torch.device(a.device)
    # Every variant compiles the same forward code objects (and again for inference): allow that many entries.
    torch._dynamo.config.cache_size_limit = torch._dynamo.config.recompile_limit = 64
    variants = a.variants or list(VARIANTS) + (["peer-hc4"] if peer_available() else [])
    unknown = set(variants) - set(VARIANTS) - {"peer-hc4"}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)} and peer-hc4")
    if "residual" not in variants:
        variants = ["residual", *variants]
    specs = QUICK if a.quick else MODELS
    command = "python -m experiments.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.sweep or a.connections:
        chosen = a.variants or list(SWEEP_VARIANTS) + (["peer-hc4"] if peer_available() else [])
        chosen = ["residual", *[v for v in chosen if v != "residual"]]
        modes = [False, True] if a.mode == "all" else [a.mode == "compiled"]
        started = time.time()
        widths = QUICK_WIDTHS if a.quick else WIDTHS
        if a.widths and set(a.widths) - set(widths):
            parser.error(f"--widths {' '.join(sorted(set(a.widths) - set(widths)))}: not in the sweep; it has "
                         f"{' '.join(widths)}")
        widths = {w: spec for w, spec in widths.items() if not a.widths or w in a.widths}
        if a.connections:
            rows = connection_costs(widths, [v for v in chosen if v != "peer-hc4"], a.repeats, device)
            write_connections(rows, Path(a.out), command.strip(), device, time.time() - started)
            print(f"bench: wrote {a.out}/bench_connections.md and .csv in {(time.time() - started) / 60:.1f} min")
            return
        rows = sweep(widths, chosen, modes, a.repeats, a.steps, a.warmup, device)
        write_sweep(rows, Path(a.out), command.strip(), device, time.time() - started)
        print(f"bench: wrote {a.out}/bench_widths.md and bench_widths.csv in {(time.time() - started) / 60:.1f} min")
        return
    if a.fit:
        chosen = list(dict.fromkeys(["residual", *(a.variants or FIT_VARIANTS)]))
        bad = [v for v in chosen if v.removesuffix("-fused") not in VARIANTS or "-recompute" in v]
        if bad:
            parser.error(f"--fit --variants {' '.join(bad)}: the main grid's variants run here, with -fused or not")
        started = time.time()
        with tempfile.TemporaryDirectory() as work:
            rows = fit_runs(chosen, a.repeats, a.fit_steps, a.quick, Path(work))
        from experiments.grids import LM_MAIN_DEPTH, LM_WIDTH
        arch = "test-sized" if a.quick else f"{LM_MAIN_DEPTH} layers x d = {LM_WIDTH}"
        write_fit(rows, Path(a.out), command.strip(), device, time.time() - started, arch)
        print(f"bench: wrote {a.out}/bench_fit.md and .csv in {(time.time() - started) / 60:.1f} min")
        return
    if a.profile:
        task = "lm" if a.model == "all" else a.model
        if a.widths:  # one of the sweep's GPTs (e.g. d64-L16, the experiments' regime) instead of the bench model
            widths = QUICK_WIDTHS if a.quick else WIDTHS
            if len(a.widths) != 1 or a.widths[0] not in widths or task != "lm":
                parser.error(f"--profile --widths takes one of {' '.join(widths)} (a GPT: --model lm)")
            spec = widths[a.widths[0]]
            profile("lm", spec, variants, device, Path(a.out), command.strip(),
                    f"GPT {a.widths[0]} ({_describe(spec['arch'])}, batch {spec['batch']})")
        else:
            profile(task, specs[task], variants, device, Path(a.out), command.strip())
        print(f"bench: wrote {a.out}/bench_profile.md")
        return
    started, rows = time.time(), []
    for task in (["lm", "vit"] if a.model == "all" else [a.model]):
        for compile in ((False, True) if a.mode == "all" else (a.mode == "compiled",)):
            print(f"bench: {task} {'compiled' if compile else 'eager'}: {', '.join(variants)}", flush=True)
            rows += bench(task, specs[task], variants, compile, a.repeats, a.steps, a.warmup, device)
            for r in rows[-len(variants):]:
                print(f"  {r['variant']:12s} {r['step_ms']:8.1f} ms  {r['step_ratio']:.2f}x  "
                      f"mem {r['memory_ratio']:.2f}x  infer {r['infer_ratio']:.2f}x", flush=True)
    write_results(rows, specs, Path(a.out), command.strip(), device, time.time() - started)
    print(f"bench: wrote {a.out}/bench.md and bench.csv in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
