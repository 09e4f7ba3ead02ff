"""Power: 95% intervals over records and samples, paired comparisons of two rows, the minimum detectable difference.

    from model.eval import intervals as iv
    mean, lo, hi = iv.bootstrap_interval(scores)            # scores (records, samples): e.g. R-precision hits, 0/1
    c = iv.paired_comparison(best, other)                   # two rows scored on the same texts and sample seeds
    c.diff, c.lo, c.hi, c.p_value, c.tied                   # is `best` above `other`? one-sided, tied at alpha 0.05
    iv.minimum_detectable_difference(sd, n_records=90)      # 2.80 * sd / sqrt(90): 80% power, alpha 0.05 two-sided

Which noise an interval covers: the evaluation's, i.e. which test records happened to be drawn (the records
are a sample of the Pokémon that could have been) and which starting noise each sample got. It does not cover
the training seed: `--seeds` repeats a trial for that.

Everything here is a pure function of numpy arrays, seeded, with no torch: the same call gives the same numbers.

- `bootstrap_interval`: the two-stage percentile bootstrap. Records are resampled with replacement, then each
  drawn record's samples with replacement. Resampling both stages slightly overstates the variance (the sample
  noise is counted once in the record means and again in the second stage: Davison & Hinkley 1997, sec. 3.8),
  so the interval errs wide, never narrow; with one sample per record it is the ordinary percentile bootstrap.
- `paired_comparison`: rows a and b scored on the same (record, sample seed) cells differ cell for cell by
  d = a - b. The p-value is a sign-flip permutation test on the per-record mean differences (exact under the
  null that a and b are exchangeable on each record: the same model twice), one-sided for a > b, and "tied"
  means p >= alpha. The interval is `bootstrap_interval` of d. Pairing removes what the texts share (an easy
  text is easy for both rows), which is most of the variance of text-to-image scores; `unpaired_comparison`
  is the same test for rows on different records (it shuffles records between the rows).
- `minimum_detectable_difference`: (z_{1-alpha/2} + z_{power}) * sd / sqrt(n), the normal-approximation
  formula for a two-sided test of a mean difference (1.960 + 0.842 = 2.80 at alpha 0.05, power 0.8). For two
  rows on the same texts, sd is the SD of their per-record differences; for two independent rows of one
  metric, sqrt(2) times the SD of its per-record scores (`mdd_of_scores`).
- KID, a U-statistic and no mean of per-record scores, gets its interval in model/eval/fidelity.py (half-samples:
  a delete-one jackknife's error swung 10x between splits near KID = 0, too narrow on some).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

N_BOOT = 2000
N_PERM = 4000
LEVEL = 0.95
ALPHA = 0.05


class Interval(NamedTuple):
    mean: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean of a - b
    lo: float  # its 95% interval
    hi: float
    p_value: float  # one-sided, for a > b
    tied: bool  # p_value >= alpha: a is not shown to be above b


def as_scores(scores, name: str = "scores") -> np.ndarray:
    """(records, samples) float64 from (records,) or (records, samples); a clear error for NaN or an empty array."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be (records,) or (records, samples) and non-empty; got shape {x.shape}")
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, s = bad[0]
        raise ValueError(f"{name} holds {len(bad)} non-finite value(s), e.g. record {r} sample {s}: {x[r, s]}")
    return x


def bootstrap_means(scores, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot,) means of two-stage resamples: records with replacement, then each drawn record's samples."""
    x = as_scores(scores)
    n_records, n_samples = x.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // (n_records * n_samples))  # bounded memory for large score arrays
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rec = rng.integers(0, n_records, (b, n_records))
        smp = rng.integers(0, n_samples, (b, n_records, n_samples))
        out[start:start + b] = x[rec[..., None], smp].mean((1, 2))
    return out


def bootstrap_interval(scores, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    """(mean, lo, hi): the scores' mean and its two-stage percentile bootstrap interval (module docstring)."""
    x = as_scores(scores)
    lo, hi = np.quantile(bootstrap_means(x, n_boot, seed), [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(x.mean()), float(lo), float(hi))


def paired_comparison(a, b, n_boot: int = N_BOOT, n_perm: int = N_PERM, seed: int = 0,
                      alpha: float = ALPHA) -> Comparison:
    """Is row a above row b? Both (records, samples) on the same texts and sample seeds, cell for cell. For a
    lower-is-better metric pass (b, a). See the module docstring."""
    a, b = as_scores(a, "a"), as_scores(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison needs scores on the same records and samples: {a.shape} vs {b.shape}")
    d = a - b
    per_record = d.mean(1)  # (R,)
    rng = np.random.default_rng(seed + 1)  # not the bootstrap's stream
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(per_record)))
    null = (signs * per_record).mean(1)
    observed = per_record.mean()
    p = (1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + n_perm)
    _, lo, hi = bootstrap_interval(d, n_boot, seed)
    return Comparison(float(observed), lo, hi, float(p), bool(p >= alpha))


def unpaired_comparison(a, b, n_boot: int = N_BOOT, n_perm: int = N_PERM, seed: int = 0,
                        alpha: float = ALPHA) -> Comparison:
    """Is row a above row b, when their records differ (or their pairing is unknown)? A permutation test that
    shuffles per-record means between the rows; the interval is the difference of independent bootstraps."""
    a, b = as_scores(a, "a"), as_scores(b, "b")
    ra, rb = a.mean(1), b.mean(1)
    pooled = np.concatenate([ra, rb])
    rng = np.random.default_rng(seed + 1)
    null = np.empty(n_perm)
    for i in range(n_perm):
        p = rng.permutation(pooled)
        null[i] = p[:len(ra)].mean() - p[len(ra):].mean()
    observed = ra.mean() - rb.mean()
    p_value = (1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + n_perm)
    diffs = bootstrap_means(a, n_boot, seed) - bootstrap_means(b, n_boot, seed + 2)
    lo, hi = np.quantile(diffs, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Comparison(float(a.mean() - b.mean()), float(lo), float(hi), float(p_value), bool(p_value >= alpha))


def minimum_detectable_difference(sd: float, n_records: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided test at `alpha` finds with probability `power`, for a
    per-record difference of standard deviation `sd` over n_records: (z_{1-alpha/2} + z_power) * sd / sqrt(n)."""
    z = NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) * sd / np.sqrt(n_records)


def mdd_of_scores(scores, n_records: int | None = None, paired_with=None, alpha: float = ALPHA,
                  power: float = 0.8) -> float:
    """The minimum detectable difference at n_records (default: as many as `scores` has) between two rows of
    this metric: paired with `paired_with`'s scores (same texts and seeds), else two independent rows with this
    row's spread (sd of a difference = sqrt(2) x the per-record SD)."""
    x = as_scores(scores)
    n = n_records or len(x)
    if paired_with is not None:
        sd = (x - as_scores(paired_with, "paired_with")).mean(1).std(ddof=1)
    else:
        sd = np.sqrt(2) * x.mean(1).std(ddof=1)
    return float(minimum_detectable_difference(sd, n, alpha, power))
