"""Metrics of a strategy's samples: diversity, repetition, quality.

Every metric is a weighted mean of per-row values (then perhaps transformed), so
the cluster bootstrap (``stats``) can resample rows and pair them across strategies.

- ``distinct_1`` / ``distinct_2`` (Li et al., 2016): per prompt, distinct n-grams
  over all n-grams of that prompt's samples (token ids), pooled over prompts
  (sum of distinct / sum of all). Diversity *between* the samples of a prompt.
- ``self_bleu`` (Zhu et al., 2018): BLEU (``sacrebleu``) of each sample against the
  other samples of its prompt, averaged; lower is more diverse.
- ``repetition``: fraction of a sample's 4-grams that repeat an earlier 4-gram of the
  same sample (degenerate loops), averaged.
- ``accuracy``: the mean of rows' ``correct`` (0/1: the extracted answer equals the task
  item's target; rows of configs with a ``task``, see ``tasks``).
- ``length``: new tokens per sample; ``mean_logprob``: mean per-token log-probability
  under the generating model (token-weighted); ``perplexity``: exp(-mean_logprob).
- ``judge_logprob``: the same under a judge model (rows scored by ``judge``);
  ``judge_perplexity``: exp(-judge_logprob).

Speed is not among them: it is a batch's, not a sample's (``speed``).

Only self-BLEU has a well-kept library implementation (sacrebleu); distinct-n,
repetition and the log-probability means are a few lines of counting or averaging,
written here so that each splits into per-row shares for the bootstrap.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from statistics import fmean
from typing import Any

import numpy as np

from phijax.experiment.stats import Metric, ratio


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
    grams = [g for s in samples for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(tokens: Sequence[int], n: int = 4) -> float:
    grams = _ngrams(tokens, n)
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0-100) of each text against all the others; nan for fewer than 2."""
    return fmean(_bleu_each(texts)) if len(texts) > 1 else math.nan


def row_metrics(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Metric]:
    """Each metric as per-row values, per-row weights and a transform of their weighted mean
    (see the module docstring). Cross-sample metrics (distinct-n, self-BLEU) give each row its
    share against the other samples of its prompt, so a bootstrap can resample rows without
    comparing a drawn duplicate with itself. Metrics the rows cannot give are left out."""
    n = len(rows)
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_prompt.setdefault(str(r["prompt_id"]), []).append(i)
    ones = np.ones(n)
    out: dict[str, Metric] = {}
    for m in names:
        if m == "accuracy":
            if not any(r.get("correct") is not None for r in rows):
                continue
            values = np.array(
                [np.nan if r.get("correct") is None else float(r["correct"]) for r in rows]
            )
            out[m] = (values, np.where(np.isnan(values), 0.0, 1.0), _identity)
        elif m == "length":
            out[m] = (np.array([len(r["tokens"]) for r in rows], float), ones, _identity)
        elif m in ("distinct_1", "distinct_2"):
            out[m] = _distinct_shares(rows, by_prompt, int(m[-1]))
        elif m == "self_bleu":
            values = np.full(n, np.nan)
            for members in by_prompt.values():
                if len(members) > 1:
                    texts = [rows[i]["text"] for i in members]
                    values[members] = _bleu_each(texts)
            out[m] = (values, np.where(np.isnan(values), 0.0, 1.0), _identity)
        elif m == "repetition":
            out[m] = (
                np.array([repetition_rate(r["tokens"]) for r in rows], float),
                ones,
                _identity,
            )
        elif m in ("mean_logprob", "perplexity"):
            lps = [r["logprobs"] for r in rows]
            values = np.array([fmean(lp) if lp else np.nan for lp in lps])
            out[m] = (
                values,
                np.array([len(lp) for lp in lps], float),
                _identity if m == "mean_logprob" else _perplexity,
            )
        elif m in ("judge_logprob", "judge_perplexity"):
            if not any(r.get("judge_logprob") is not None for r in rows):
                continue
            values = np.array(
                [np.nan if r.get("judge_logprob") is None else r["judge_logprob"] for r in rows]
            )
            weights = np.array([r.get("judge_tokens") or 0 for r in rows], float)
            out[m] = (
                values,
                np.where(np.isnan(values), 0.0, weights),
                _identity if m == "judge_logprob" else _perplexity,
            )
    return out


def summarize(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
    """The metrics' point estimates over one group of result rows (one strategy)."""
    out: dict[str, float] = {"samples": float(len(rows))}
    for name, (values, weights, transform) in row_metrics(rows, metrics).items():
        out[name] = float(transform(ratio(values, weights, np.ones((1, len(rows)))))[0])
    return out


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _perplexity(mean_logprob: np.ndarray) -> np.ndarray:
    return np.exp(-mean_logprob)


def _distinct_shares(
    rows: Sequence[dict[str, Any]], by_prompt: dict[str, list[int]], n: int
) -> Metric:
    """Row i's share of its prompt's distinct n-grams: sum over its n-grams of 1/(occurrences
    among the prompt's samples); over a prompt's rows the shares add up to its distinct count."""
    values = np.full(len(rows), np.nan)
    weights = np.zeros(len(rows))
    for members in by_prompt.values():
        grams = {i: _ngrams(rows[i]["tokens"], n) for i in members}
        counts = Counter(g for gs in grams.values() for g in gs)
        for i, gs in grams.items():
            if gs:
                values[i] = sum(1 / counts[g] for g in gs) / len(gs)
                weights[i] = len(gs)
    return values, weights, _identity


def _bleu_each(texts: Sequence[str]) -> list[float]:
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    return [
        bleu.sentence_score(t, [o for j, o in enumerate(texts) if j != i]).score
        for i, t in enumerate(texts)
    ]
