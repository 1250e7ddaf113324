"""Generation speed per strategy, over the batches its samples came from.

Speed belongs to a ``generate()`` call, not to a sample: every row of a batch records
the batch's timings, and strategies with the same stage order share batches. A batch is
one measurement, so speed is summarized over batches (their count, the total rate, the
median batch), beside the metrics table, with no bootstrap interval or paired
difference: resampling a batch's identical rows would fake a precision it lacks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import median
from typing import Any

ALL = "(all)"
"""The last row's name: every batch of the results, each once."""


def _batch(row: dict[str, Any]) -> tuple[float, ...]:
    """The batch a row came from: rows of one ``generate()`` call carry its timings, equal to
    the 0.1 ms; rows of different calls do not."""
    t = row["timings"]
    return t["prefill_s"], t["decode_s"], t["prefill_tok_s"], t["decode_tok_s"]


def _summarize(name: str, batches: Sequence[dict[str, float]]) -> dict[str, Any]:
    tokens = sum(round(b["decode_tok_s"] * b["decode_s"]) for b in batches)
    seconds = sum(b["decode_s"] for b in batches)
    return {
        "strategy": name,
        "batches": len(batches),
        "decode_tokens": tokens,
        "decode_s": round(seconds, 4),
        "decode_tok_s": tokens / seconds if seconds > 0 else math.nan,
        "decode_tok_s_median": median(b["decode_tok_s"] for b in batches),
        "prefill_tok_s_median": median(b["prefill_tok_s"] for b in batches),
    }


def speed(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per strategy (first-seen order), then :data:`ALL`: ``batches``, their decode
    tokens (after each row's first, which prefill samples) and seconds, ``decode_tok_s``
    (tokens / seconds), and the median batch's ``decode_tok_s_median`` and
    ``prefill_tok_s_median``. A batch shared by several strategies counts for each."""
    per: dict[str, dict[tuple[float, ...], dict[str, float]]] = {}
    every: dict[tuple[float, ...], dict[str, float]] = {}
    for r in rows:
        key = _batch(r)
        per.setdefault(r["strategy"], {})[key] = every[key] = r["timings"]
    table = [_summarize(name, list(batches.values())) for name, batches in per.items()]
    return [*table, _summarize(ALL, list(every.values()))] if table else []


def markdown_table(table: Sequence[dict[str, Any]]) -> str:
    """Strategies x (batches, decode tok/s over all batches, median batch decode and prefill)."""
    if not table:
        return "(no results)\n"
    lines = [
        "| strategy | batches | decode tok/s | median batch decode tok/s | median batch prefill tok/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['strategy']} | {r['batches']} | {r['decode_tok_s']:.1f} | "
        f"{r['decode_tok_s_median']:.1f} | {r['prefill_tok_s_median']:.1f} |"
        for r in table
    ]
    return "\n".join(lines) + "\n"
