"""Cluster-bootstrap intervals: against a direct bootstrap, containment, reproducibility, pairing."""

from __future__ import annotations

import math
import random
from statistics import fmean

import numpy as np
import pytest

from phijax.experiment import metrics, stats
from phijax.experiment.report import differences, summary

SIZES = {"a": 3, "b": 5, "c": 4, "d": 2, "e": 6}  # samples per prompt: unequal on purpose


def _rows(strategy="s", shift=0.0, noise=1.0, seed=0):
    """Rows whose lengths and log-probs differ a lot between prompts and a little within."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, (prompt, n) in enumerate(SIZES.items()):
        for s in range(n):
            r = np.random.default_rng([p, s])  # shared by strategies: a paired structure
            length = int(5 + 6 * p + r.integers(0, 4) + (rng.integers(0, 3) if noise else 0))
            lp = (
                -0.5 * p - r.random(length) + shift + noise * 0.3 * rng.standard_normal(length)
            ).round(4)
            tokens = r.integers(0, 2 + p, length).tolist()  # small vocabularies repeat 4-grams
            rows.append({"strategy": strategy, "prompt_id": prompt, "seed": 0, "sample": s, "text": " ".join(map(str, tokens)),
                         "tokens": tokens, "logprobs": lp.tolist()})  # fmt: skip
    return rows


def _naive(rows, n_boot, seed):
    """A direct two-stage bootstrap: draw prompts, then samples of each drawn prompt, and
    compute each statistic from the drawn rows by hand."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    prompts = list(by_prompt)
    reps: dict[str, list[float]] = {
        "length": [],
        "mean_logprob": [],
        "perplexity": [],
        "repetition": [],
    }
    for _ in range(n_boot):
        drawn = []
        for _ in prompts:
            members = by_prompt[rng.choice(prompts)]
            drawn += [rng.choice(members) for _ in members]
        lps = [lp for r in drawn for lp in r["logprobs"]]
        reps["length"].append(fmean(len(r["tokens"]) for r in drawn))
        reps["mean_logprob"].append(fmean(lps))
        reps["perplexity"].append(math.exp(-fmean(lps)))
        reps["repetition"].append(fmean(metrics.repetition_rate(r["tokens"]) for r in drawn))
    out = {}
    for m, values in reps.items():
        values.sort()
        out[m] = (values[int(0.025 * n_boot)], values[int(0.975 * n_boot) - 1])
    return out


def test_intervals_match_a_direct_bootstrap():
    rows = _rows()
    [ours] = summary(rows, ["length", "mean_logprob", "perplexity", "repetition"], n_boot=4000)
    naive = _naive(rows, 4000, seed=1)
    for m, (lo, hi) in naive.items():
        width = hi - lo
        assert width > 0
        # two independent Monte Carlo runs of the same bootstrap: endpoints agree within 10% of the width
        assert ours[f"{m}_lo"] == pytest.approx(lo, abs=0.1 * width), m
        assert ours[f"{m}_hi"] == pytest.approx(hi, abs=0.1 * width), m


def test_the_direct_bootstrap_check_can_fail():
    """Resampling rows as independent (ignoring prompts) gives clearly narrower intervals here,
    which the comparison above would reject: the test distinguishes the two bootstraps."""
    rows = _rows()
    values, weights, f = metrics.row_metrics(rows, ["length"])["length"]
    iid = (
        np.random.default_rng(0)
        .multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size=4000)
        .astype(float)
    )
    lo, hi = stats.interval(
        float(f(stats.ratio(values, weights, np.ones((1, len(rows)))))[0]),
        f(stats.ratio(values, weights, iid)),
    )
    naive_lo, naive_hi = _naive(rows, 4000, seed=1)["length"]
    assert (hi - lo) < 0.7 * (naive_hi - naive_lo)


def test_every_metric_has_an_interval_around_it_and_it_is_reproducible():
    rows = _rows() + _rows("t", shift=-0.2, seed=1)
    table = summary(rows)
    names = [m for m in metrics_names(table)]
    assert {
        "length",
        "distinct_1",
        "distinct_2",
        "self_bleu",
        "repetition",
        "mean_logprob",
        "perplexity",
    } <= set(names)
    for row in table:
        for m in names:
            assert row[f"{m}_lo"] <= row[m] <= row[f"{m}_hi"], (row["strategy"], m)
    shuffled = list(rows)
    random.Random(5).shuffle(shuffled)
    assert sorted(summary(shuffled), key=lambda r: r["strategy"]) == sorted(
        table, key=lambda r: r["strategy"]
    )
    assert summary(rows, seed=1) != table  # the seed is what fixes the draw


def metrics_names(table):
    return [k for k in table[0] if f"{k}_lo" in table[0]]


def test_cross_sample_metrics_are_shares_that_add_up():
    rows = _rows()
    d2 = metrics.summarize(rows, ["distinct_2"])["distinct_2"]
    by_prompt: dict[str, list[list[int]]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r["tokens"])
    grams = [
        [tuple(t[i : i + 2]) for t in ts for i in range(len(t) - 1)] for ts in by_prompt.values()
    ]
    assert d2 == pytest.approx(sum(len(set(g)) for g in grams) / sum(len(g) for g in grams))
    bleu = metrics.summarize(rows, ["self_bleu"])["self_bleu"]
    texts = [[r["text"] for r in rows if r["prompt_id"] == p] for p in SIZES]
    assert bleu == pytest.approx(fmean(s for t in texts for s in metrics._bleu_each(t)))


def test_pairing_on_shared_keys_narrows_the_interval():
    a = _rows("a", noise=0.0)
    b = _rows(
        "b", shift=-0.3, noise=0.0
    )  # the same samples but for a shift: a perfectly paired design
    diffs = {d["metric"]: d for d in differences(a + b, "a")}
    d = diffs["mean_logprob"]
    assert d["strategy"] == "b" and d["pairs"] == len(a)
    assert d["diff"] == pytest.approx(-0.3, abs=1e-9)
    assert d["diff_lo"] == pytest.approx(-0.3, abs=1e-9) and d["diff_hi"] == pytest.approx(
        -0.3, abs=1e-9
    )
    assert d["unpaired_hi"] - d["unpaired_lo"] > 0.5
    sa, sb = summary(a), summary(b)
    assert d["diff"] == pytest.approx(sb[0]["mean_logprob"] - sa[0]["mean_logprob"])
