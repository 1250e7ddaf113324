"""Seeded cluster bootstrap: intervals for every metric and for paired differences.

A study's rows are clustered: several samples (seeds x samples) per prompt, and
samples of one prompt resemble each other far more than samples of different
prompts. Resampling rows as if independent would understate the spread, so each
bootstrap replicate draws the prompts with replacement, then, for every drawn
prompt, its samples with replacement (a two-stage cluster bootstrap).

Drawing a prompt ``k`` times and then ``n`` samples each time is the same, in
distribution, as drawing ``k * n`` samples of it at once, so a replicate is a
vector of counts per row: ``counts[b, row]``. Every metric is a ratio of
weighted sums of per-row values (``metrics.row_values``), so a replicate's value
is two matrix products. Written by hand with numpy: ``scipy.stats.bootstrap``
resamples independent observations and has no cluster (two-stage) resampling.

Intervals are percentile intervals of ``B`` replicates (2000 by default), drawn
from a generator seeded by ``seed`` (0): the same rows, in any order, give the
same interval. The estimate itself is always inside: where rounding or a very
skewed bootstrap puts it outside the percentiles, the interval is widened to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_BOOT = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95


def row_key(row: dict[str, Any]) -> tuple[str, int, int]:
    """The pairing key of a row within a strategy: (prompt, seed, sample)."""
    return str(row["prompt_id"]), int(row["seed"]), int(row["sample"])


def cluster_counts(clusters: Sequence[int], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, rows]`` float counts of a two-stage bootstrap: clusters with replacement,
    then rows within each drawn cluster with replacement. ``clusters[i]``: row i's cluster."""
    clusters = np.asarray(clusters)
    ids, inverse = np.unique(clusters, return_inverse=True)
    counts = np.zeros((n_boot, len(clusters)))
    drawn = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)  # [B, clusters]
    for c in range(len(ids)):
        members = np.flatnonzero(inverse == c)
        n = len(members)
        counts[:, members] = rng.multinomial(drawn[:, c] * n, np.full(n, 1 / n))
    return counts


def ratio(values: np.ndarray, weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Weighted means ``sum(c*w*v) / sum(c*w)`` for each row of ``counts`` (nan where no weight)."""
    good = weights > 0
    v = np.where(good, values, 0.0)
    w = np.where(good, weights, 0.0)
    num = counts @ (w * v)
    den = counts @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def interval(
    estimate: float, replicates: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile interval of the replicates, widened to contain the estimate."""
    reps = replicates[np.isfinite(replicates)]
    if not np.isfinite(estimate) or reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return float(min(lo, estimate)), float(max(hi, estimate))


Metric = tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]
"""Per-row values, per-row weights, and a transform of the weighted mean (e.g. exp for perplexity)."""


def estimate_with_interval(
    metric: Metric, counts: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of one metric over the rows ``counts`` resamples."""
    values, weights, transform = metric
    point = float(transform(ratio(values, weights, np.ones((1, len(values)))))[0])
    return (point, *interval(point, transform(ratio(values, weights, counts)), confidence))


def difference_with_interval(
    a: Metric, b: Metric, counts_a: np.ndarray, counts_b: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(a - b, lo, hi). Pass the same counts for a paired difference (rows aligned by key),
    independent counts for an unpaired one."""
    ones_a, ones_b = np.ones((1, len(a[0]))), np.ones((1, len(b[0])))
    point = float(a[2](ratio(a[0], a[1], ones_a))[0] - b[2](ratio(b[0], b[1], ones_b))[0])
    reps = a[2](ratio(a[0], a[1], counts_a)) - b[2](ratio(b[0], b[1], counts_b))
    return (point, *interval(point, reps, confidence))
