"""Diversity and repetition metrics on hand-checked examples."""

from __future__ import annotations

import math

import pytest

from phijax.experiment import metrics


def test_distinct_n():
    assert metrics.distinct_n([[1, 2, 3], [1, 2, 4]], 1) == pytest.approx(4 / 6)
    assert metrics.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)
    assert metrics.distinct_n([[1]], 2) == 0.0


def test_repetition_rate():
    assert metrics.repetition_rate([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(1 / 5)
    assert metrics.repetition_rate([1, 2, 3, 4, 5], 4) == 0.0


def test_self_bleu():
    assert metrics.self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(100.0)
    different = metrics.self_bleu(
        ["the cat sat on the mat", "a dog ran in the park", "stars shine at night"]
    )
    assert different < 20
    assert math.isnan(metrics.self_bleu(["alone"]))


def test_summarize():
    rows = [
        {
            "prompt_id": "p",
            "text": "a b",
            "tokens": [1, 2],
            "logprobs": [-1.0, -3.0],
        },
        {
            "prompt_id": "p",
            "text": "a c",
            "tokens": [1, 3],
            "logprobs": [-2.0, -2.0],
        },
    ]
    out = metrics.summarize(rows, ["length", "mean_logprob", "perplexity", "distinct_1"])
    assert out == pytest.approx(
        {
            "samples": 2,
            "length": 2,
            "mean_logprob": -2.0,
            "perplexity": math.exp(2),
            "distinct_1": 0.75,
        }
    )
