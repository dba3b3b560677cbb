"""C++ kernels for the CPU, built on first use by torch.utils.cpp_extension (a C++ compiler and ninja; nothing is
downloaded). Where one cannot be built, its caller runs the PyTorch form instead (one warning line), which is only
slower. `LIT_HC_CPU_KERNELS=0` skips the builds.

Why by hand: at HC's sizes (n = 4 streams of d = 64-1024 channels per token) the per-token algebra is a few tiny
matrix products and reductions, which eager PyTorch runs as whole-tensor ops and batched BLAS calls, each a pass over
memory and BLAS slow at a (5 x 4) by (4 x d) product; a C++ loop keeps a token's block in cache through every step.

- `sinkhorn()` (lit_hc/csrc/sinkhorn.cpp): mHC's Sinkhorn iterations, forward and exact reverse, on (n, n, tokens).
  Hundreds of tiny ops per sub-layer otherwise, which torch.compile on CPU did not make faster (measured on the
  loop: 0.74 ms compiled against 0.55 ms eager, forward, 2,048 tokens, one thread). It does the loop's arithmetic in
  its order, so it gives the loop's results bit for bit (n <= 4, tested) and is always on. Under torch.compile the
  same kernel runs as a custom op inside the graph (`lit_hc::sinkhorn_iterate`, backward `lit_hc::sinkhorn_reverse`,
  in lit_hc/hyper_connections.py).
- `hc_fused()` (lit_hc/csrc/hc_fused.cpp): DHC's and mHC's whole width connections, SHC's stream mix and the depth
  connection's backward, one pass per token each (mHC's sigmoids and Sinkhorn iterations for a block of 8 tokens
  at once). Its sums run in another order than BLAS's, so it agrees with the
  PyTorch form to float rounding only and is opt-in (HCConfig.fused). Under torch.compile the two width connections
  run as custom ops inside the graph (`lit_hc::dhc_width`, `lit_hc::mhc_width`, each with its backward op).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from types import ModuleType

ENV = "LIT_HC_CPU_KERNELS"
SOURCES = Path(__file__).parent / "csrc"


def _build(name: str, source: str, flags: list[str], what: str) -> ModuleType | None:
    if os.environ.get(ENV, "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        # -fopenmp: at::parallel_for is OpenMP in torch's CPU builds and a no-op in code compiled without it (the
        # kernel would run on one thread); it links the libgomp torch has already loaded.
        return load(name=name, sources=[str(SOURCES / source)], extra_cflags=[*flags, "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler, no ninja, a read-only cache: the PyTorch form still works
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]
        warnings.warn(f"lit-hc: the CPU kernel {source} did not build ({reason}); {what}. Set {ENV}=0 to skip the "
                      "build.", stacklevel=3)
        return None


@functools.cache
def sinkhorn() -> ModuleType | None:
    """The Sinkhorn kernel (lit_hc/csrc/sinkhorn.cpp: forward, backward on (n, n, tokens)), or None."""
    # -ffp-contract=off: an FMA would round a product and a sum once, not twice, and break equality with the
    # PyTorch loop.
    return _build("lit_hc_sinkhorn", "sinkhorn.cpp", ["-O3", "-ffp-contract=off"],
                  "mHC runs its PyTorch loop instead (same results, slower)")


@functools.cache
def hc_fused() -> ModuleType | None:
    """DHC's width connection, the stream mix and the depth connection's backward in one pass per token
    (lit_hc/csrc/hc_fused.cpp; HCConfig.fused), or None. Vectorised for this machine's CPU (-march=native: the build
    is per machine, in torch's extension cache)."""
    return _build("lit_hc_hc_fused", "hc_fused.cpp", ["-O3", "-march=native", "-fopenmp-simd"],
                  "HCConfig(fused=True) runs the PyTorch form instead")
