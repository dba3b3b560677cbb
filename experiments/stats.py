"""Paired statistics over seeds: the difference variant − baseline per seed, its mean, sample std, a 95%
Student-t interval, and how many seeds agree on the sign.

Pairing: the variant's seed s and the baseline's seed s share the data order and the non-HC initialisation, so
the per-seed difference removes what the seeds have in common and the interval is on the difference itself
(a paired t-interval: mean ± t_{0.975, k-1} · std / sqrt(k) over k seeds).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (any statistics table, e.g. NIST/SEMATECH
# e-Handbook of Statistical Methods, 1.3.6.7.2). scipy is not a dependency, and these are all a study needs.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964


def t_975(df: int) -> float:
    """t_{0.975, df}: the table above, and for df > 30 the Cornish-Fisher expansion around the normal quantile
    (Abramowitz & Stegun 26.7.5; error below 1e-4 there)."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 1 degree of freedom (2 seeds), got df={df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Paired:
    """variant − baseline over the seeds both have."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    std: float | None  # sample std of the differences (None for one seed)
    ci: tuple[float, float] | None  # 95% t-interval of the mean difference (None for one seed)
    wins: int  # seeds where the variant is better (lower when lower_is_better)

    @property
    def n(self) -> int:
        return len(self.diffs)


def paired(variant: dict[int, float], baseline: dict[int, float], lower_is_better: bool = True) -> Paired | None:
    """Paired difference of two {seed: value} maps over their common seeds; None if they share none."""
    seeds = tuple(sorted(set(variant) & set(baseline)))
    if not seeds:
        return None
    diffs = tuple(variant[s] - baseline[s] for s in seeds)
    mean = statistics.fmean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else None
    ci = None
    if std is not None:
        half = t_975(len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = (mean - half, mean + half)
    wins = sum((d < 0) if lower_is_better else (d > 0) for d in diffs)
    return Paired(seeds, diffs, mean, std, ci, wins)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)
