"""Metrics over a strategy's samples: diversity, repetition, quality under the model, speed.

- ``distinct_1`` / ``distinct_2``: distinct n-grams / all n-grams over the
  group's tokens (Li et al., 2016), on token ids.
- ``self_bleu``: mean BLEU of each sample against the others of its group as
  references (Zhu et al., 2018), by ``sacrebleu``; lower is more diverse.
- ``repetition``: fraction of each sample's 4-grams that repeat an earlier
  4-gram of the same sample (degenerate loops), averaged.
- ``length``: new tokens per sample; ``mean_logprob``: mean per-token
  log-probability under the model; ``perplexity``: exp(-mean_logprob).
- ``tok_s``: decode tokens per second of the batches the samples came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import fmean
from typing import Any


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
    from sacrebleu.metrics import BLEU

    if len(texts) < 2:
        return math.nan
    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(t, [o for j, o in enumerate(texts) if j != i]).score for i, t in enumerate(texts)]
    return fmean(scores)


def summarize(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
    """The metrics of one group of result rows (one strategy, or one strategy and prompt)."""
    tokens = [r["tokens"] for r in rows]
    out: dict[str, float] = {"samples": float(len(rows))}
    logprobs = [lp for r in rows for lp in r["logprobs"]]
    mean_lp = fmean(logprobs) if logprobs else math.nan
    for m in metrics:
        if m == "length":
            out[m] = fmean(len(t) for t in tokens)
        elif m == "distinct_1":
            out[m] = distinct_n(tokens, 1)
        elif m == "distinct_2":
            out[m] = distinct_n(tokens, 2)
        elif m == "repetition":
            out[m] = fmean(repetition_rate(t) for t in tokens)
        elif m == "self_bleu":
            by_prompt: dict[str, list[str]] = {}
            for r in rows:
                by_prompt.setdefault(r["prompt_id"], []).append(r["text"])
            scores = [self_bleu(texts) for texts in by_prompt.values() if len(texts) > 1]
            out[m] = fmean(scores) if scores else math.nan
        elif m == "mean_logprob":
            out[m] = mean_lp
        elif m == "perplexity":
            out[m] = math.exp(-mean_lp) if logprobs else math.nan
        elif m == "tok_s":
            out[m] = fmean(r["timings"]["decode_tok_s"] for r in rows)
    return out
