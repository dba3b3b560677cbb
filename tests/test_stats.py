"""The paired statistics of the studies, against values computed by hand."""
import pytest

from experiments.stats import paired, t_975


def test_paired_difference_and_t_interval_by_hand():
    # The depth-16 lead: residual 2.3256, 2.3084, 2.3266; DHC x4 2.2873, 2.2587, 2.2518 (seeds 0-2).
    # diffs -0.0383, -0.0497, -0.0748: mean -0.054267; deviations 0.015967, 0.004567, -0.020533;
    # std sqrt((0.00025494 + 0.00002086 + 0.00042161) / 2) = 0.018673; half width 4.303 * 0.018673 / sqrt(3) = 0.046390
    base = {0: 2.3256, 1: 2.3084, 2: 2.3266}
    hc = {0: 2.2873, 1: 2.2587, 2: 2.2518, 5: 2.0}  # seed 5 has no partner: left out
    d = paired(hc, base)
    assert d.seeds == (0, 1, 2) and d.n == 3 and d.wins == 3
    assert d.mean == pytest.approx(-0.054267, abs=1e-6)
    assert d.std == pytest.approx(0.018673, abs=1e-6)
    assert d.ci == pytest.approx((-0.054267 - 0.046390, -0.054267 + 0.046390), abs=2e-6)


def test_wins_follow_the_metric_direction():
    acc = paired({0: 50.0, 1: 48.0}, {0: 49.0, 1: 49.0}, lower_is_better=False)
    assert acc.wins == 1 and acc.mean == 0.0 and acc.ci == pytest.approx((-12.706 * 1.0, 12.706 * 1.0))
    one = paired({0: 1.0}, {0: 2.0})
    assert one.std is None and one.ci is None and one.wins == 1
    assert paired({0: 1.0}, {1: 1.0}) is None


def test_t_quantiles():
    assert t_975(1) == 12.706 and t_975(2) == 4.303 and t_975(30) == 2.042
    for df, table in ((40, 2.021), (60, 2.000), (120, 1.980)):  # the tables' values beyond 30
        assert t_975(df) == pytest.approx(table, abs=1e-3)
    with pytest.raises(ValueError, match="2 seeds"):
        t_975(0)
