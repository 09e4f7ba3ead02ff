"""Power (model/eval/intervals.py): intervals that cover the truth as often as they claim, a paired test that ties
identical rows and separates a shifted one, and pairing that finds what an unpaired test cannot."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from model.eval import intervals as iv


def clustered(rng, n_records=30, n_samples=4, mean=1.0, record_sd=1.0, sample_sd=0.5):
    """Scores with a per-record effect (texts differ in difficulty) and per-sample noise: true mean `mean`."""
    return mean + rng.normal(0, record_sd, (n_records, 1)) + rng.normal(0, sample_sd, (n_records, n_samples))


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    """200 seeded repeats of clustered scores: a record-blind bootstrap (every cell independent) would cover about
    70% here, a plain ±1 SE interval 68%, a too-wide one 100%; the two-stage bootstrap must sit near 95%."""
    covered = 0
    for rep in range(200):
        x = clustered(np.random.default_rng(1000 + rep))
        mean, lo, hi = iv.bootstrap_interval(x, n_boot=1000, seed=rep)
        assert lo <= mean <= hi and mean == pytest.approx(x.mean())
        covered += lo <= 1.0 <= hi
    assert 0.92 <= covered / 200 <= 0.985


def test_bootstrap_interval_of_hits_matches_the_binomial_interval():
    """One 0/1 score per record (S = 1): the ordinary percentile bootstrap, whose width must match the normal
    approximation of a binomial proportion, 2 * 1.96 * sqrt(p (1 - p) / n), within 10%."""
    rng = np.random.default_rng(0)
    hits = (rng.random(400) < 0.3).astype(float)
    mean, lo, hi = iv.bootstrap_interval(hits, n_boot=4000)
    expected = 2 * NormalDist().inv_cdf(0.975) * np.sqrt(mean * (1 - mean) / len(hits))
    assert hi - lo == pytest.approx(expected, rel=0.10)


def test_bootstrap_is_seeded_and_refuses_bad_scores():
    x = clustered(np.random.default_rng(1))
    assert iv.bootstrap_interval(x, seed=3) == iv.bootstrap_interval(x, seed=3)
    assert iv.bootstrap_interval(x, seed=3) != iv.bootstrap_interval(x, seed=4)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match="record 4 sample 2"):
        iv.bootstrap_interval(x)


def test_paired_comparison_ties_identical_rows_and_separates_a_shifted_one():
    rng = np.random.default_rng(2)
    a = clustered(rng)
    same = iv.paired_comparison(a, a.copy())
    assert same.tied and same.diff == 0 and same.p_value == 1.0
    better = a + 0.3 + rng.normal(0, 0.3, a.shape)
    shifted = iv.paired_comparison(better, a)
    assert not shifted.tied and shifted.p_value < 0.01
    assert shifted.lo < 0.3 < shifted.hi and shifted.lo > 0
    assert iv.paired_comparison(a, better).tied  # one-sided: the worse row is never "above"


def test_paired_comparison_rejects_at_about_alpha_under_the_null():
    """Two exchangeable rows on the same texts: the test must call them different in about 5% of 200 repeats."""
    rejected = 0
    for rep in range(200):
        rng = np.random.default_rng(5000 + rep)
        shared = rng.normal(0, 1, (30, 1))
        a, b = shared + rng.normal(0, 0.3, (30, 4)), shared + rng.normal(0, 0.3, (30, 4))
        rejected += not iv.paired_comparison(a, b, n_boot=10, n_perm=500, seed=rep).tied
    assert 0.01 <= rejected / 200 <= 0.10


def test_pairing_has_more_power_than_an_unpaired_test_on_correlated_rows():
    """Rows that share each text's difficulty (SD 1) and differ by 0.25: the paired test finds it nearly always,
    the unpaired one, which cannot subtract the shared part, rarely."""
    paired = unpaired = 0
    for rep in range(40):
        rng = np.random.default_rng(rep)
        shared = rng.normal(0, 1, (30, 1))
        a, b = shared + 0.25 + rng.normal(0, 0.3, (30, 4)), shared + rng.normal(0, 0.3, (30, 4))
        paired += not iv.paired_comparison(a, b, n_boot=10, n_perm=500, seed=rep).tied
        unpaired += not iv.unpaired_comparison(a, b, n_boot=10, n_perm=500, seed=rep).tied
    assert paired / 40 >= 0.9 and unpaired / 40 <= 0.3


def test_minimum_detectable_difference_has_the_stated_power():
    """The formula (z_.975 + z_.8) sd / sqrt(n) = 2.80 sd / sqrt(n); a true difference of that size is found by a
    two-sided z-test in about 80% of 400 simulated experiments."""
    assert iv.minimum_detectable_difference(1.0, 100) == pytest.approx(0.2802, abs=1e-3)
    n, sd = 50, 2.0
    mdd = iv.minimum_detectable_difference(sd, n)
    rng = np.random.default_rng(7)
    d = rng.normal(mdd, sd, (400, n))
    z = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(n))
    assert 0.72 <= np.mean(np.abs(z) > 1.96) <= 0.88


def test_mdd_of_scores_paired_is_smaller_on_correlated_rows():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 1, (90, 1))
    a, b = shared + rng.normal(0, 0.2, (90, 4)), shared + rng.normal(0, 0.2, (90, 4))
    unpaired, paired = iv.mdd_of_scores(a), iv.mdd_of_scores(a, paired_with=b)
    assert unpaired == pytest.approx(2.80 * np.sqrt(2) * a.mean(1).std(ddof=1) / np.sqrt(90), rel=1e-3)
    assert paired < unpaired / 3
