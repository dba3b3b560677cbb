"""Two builds of the fused CPU kernel (lit_hc/csrc/hc_fused.cpp) in one process: the file at an earlier commit
against the checkout's, interleaved, so a change to the kernel is measured without the machine's day-to-day drift.

    python -m experiments.kernel_ab fca8041~1 --out results/bench-fused   # -> kernel_ab.md

Per shape (the width sweep's tokens x n = 4 x d): DHC's width connection forward + backward (`width_forward`,
`width_backward`), the stream mix forward + backward, the depth connection's backward, mHC's width connection
forward + backward (where both builds have it); 1 thread, 15 repeats with the
order alternating, medians. Also the largest difference of the two builds' outputs (float32 sums in another order).
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from lit_hc.cpu_kernels import SOURCES
from lit_hc.io import write_atomic

SHAPES = ((2048, 4, 64), (2048, 4, 256), (512, 4, 1024))
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fopenmp"]  # lit_hc.cpu_kernels.hc_fused's


def build(source: Path, tag: str):
    digest = hashlib.sha1(source.read_bytes()).hexdigest()[:10]
    return load(name=f"hc_fused_{tag}_{digest}", sources=[str(source)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="the commit whose hc_fused.cpp is the reference")
    parser.add_argument("--out", default="results/bench-fused")
    parser.add_argument("--repeats", type=int, default=15)
    a = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        old_text = subprocess.run(["git", "show", f"{a.old}:lit_hc/csrc/hc_fused.cpp"], capture_output=True,
                                  text=True, check=True).stdout
    except subprocess.CalledProcessError:
        sys.exit(f"kernel_ab: error: no lit_hc/csrc/hc_fused.cpp at {a.old}; give a commit that has the kernel")
    with tempfile.TemporaryDirectory() as tmp:
        old_path = Path(tmp) / "hc_fused_old.cpp"
        old_path.write_text(old_text)
        kernels = {"old": build(old_path, "old"), "new": build(SOURCES / "hc_fused.cpp", "new")}
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = []
    for T, n, d in SHAPES:
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        H, Wg, bW, A, B = r(T, n, d), 0.1 * r(n + 2, d), 0.1 * r(n + 2), r(n, n + 1), r(n)
        sc, gx, gR, gb, y, alpha = torch.tensor([0.5, 0.7]), r(T, d), r(T, n, d), r(T, n), r(T, d), r(T, n, n + 1)
        phi, msc, bp, bq, br = 0.1 * r(n * d, 2 * n + n * n), torch.tensor([0.5, 0.7, 0.9]), r(n), r(n), r(n, n)
        jobs = {
            "DHC width, fwd + bwd": lambda k: (*k.width_forward(H, Wg, bW, A, B, sc, True, 1e-5),
                                               *k.width_backward(H, Wg, bW, A, B, sc, True, 1e-5, gx, gR, gb)),
            "mix, fwd + bwd": lambda k: (*k.mix_forward(H, alpha), *k.mix_backward(H, alpha, gx, gR)),
            "depth, bwd": lambda k: tuple(k.depth_backward(gR, y, gb)),
            "mHC width, fwd + bwd": lambda k: (*k.mhc_width_forward(H, phi, msc, bp, bq, br, 20),
                                               *k.mhc_width_backward(H, phi, msc, bp, bq, br, 20, gx, gR, gb)),
        }
        if not all(hasattr(k, "mhc_width_forward") for k in kernels.values()):  # before mHC's was in the kernel
            del jobs["mHC width, fwd + bwd"]
        for name, job in jobs.items():
            times = {"old": [], "new": []}
            for i in range(a.repeats):
                for key in (("old", "new") if i % 2 else ("new", "old")):
                    t0 = time.perf_counter()
                    job(kernels[key])
                    times[key].append(time.perf_counter() - t0)
            diff = max((x - z).abs().max().item() for x, z in zip(job(kernels["old"]), job(kernels["new"])))
            old_ms, new_ms = (statistics.median(times[k]) * 1e3 for k in ("old", "new"))
            rows.append((f"{T:,} x {n} x {d}", name, old_ms, new_ms, diff))
            print(f"{rows[-1][0]:>16} {name:22s} old {old_ms:8.3f} ms  new {new_ms:8.3f} ms  {new_ms / old_ms:.2f}x")
    lines = [f"# The fused kernel at `{a.old}` against commit `{head}`\n",
             f"Command: `python -m experiments.kernel_ab {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
             "Both builds in one process, 1 thread, the order alternating over "
             f"{a.repeats} repeats, medians (ms). Tokens x streams x channels.\n",
             "| shape | kernel | old (ms) | new (ms) | new / old | largest output difference |", "|---|---|---|---|---|---|"]
    lines += [f"| {s} | {k} | {o:.3f} | {w:.3f} | {w / o:.2f}x | {dd:.1e} |" for s, k, o, w, dd in rows]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(a.out) / "kernel_ab.md", "\n".join(lines) + "\n")
    print(f"kernel_ab: wrote {a.out}/kernel_ab.md")


if __name__ == "__main__":
    main()
