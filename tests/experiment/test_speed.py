"""Speed is reported per strategy over batches, beside the statistics, never inside them."""

from __future__ import annotations

import csv
import json

import pytest

from phijax.errors import ConfigError
from phijax.experiment import parse_config, summary, write_report
from phijax.experiment.speed import ALL, speed


def _timings(decode_tokens: int, decode_s: float, prompt_tokens: int, prefill_s: float):
    return {
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "prefill_tok_s": round(prompt_tokens / prefill_s, 4),
        "decode_tok_s": round(decode_tokens / decode_s, 4),
    }


# Batch 1 holds "a" and "b" (one stage order), batch 2 "b" alone, batch 3 "c" alone.
BATCHES = [_timings(30, 1.5, 12, 0.25), _timings(90, 2.25, 20, 0.5), _timings(7, 0.125, 4, 0.5)]
MEMBERS = [("a", 0), ("a", 0), ("b", 0), ("b", 1), ("b", 1), ("c", 2)]


def _rows():
    """Strategy s's k-th row has prompt pk: b and c pair with a on a's prompts."""
    return [
        {"strategy": s, "prompt_id": f"p{[m for m, _ in MEMBERS[:i]].count(s)}", "seed": 0,
         "sample": 0, "text": "x y", "tokens": [1, 2, 3], "logprobs": [-0.5, -1.0, -1.5],
         "timings": BATCHES[b]}
        for i, (s, b) in enumerate(MEMBERS)
    ]  # fmt: skip


def test_speed_is_summarized_over_batches():
    table = {r["strategy"]: r for r in speed(_rows())}
    assert list(table) == ["a", "b", "c", ALL]
    assert [table[k]["batches"] for k in table] == [1, 2, 1, 3]
    b = table["b"]  # batches 1 and 2: its rows' three copies of batch 2 count once
    assert (b["decode_tokens"], b["decode_s"]) == (120, 3.75)
    assert b["decode_tok_s"] == pytest.approx(120 / 3.75)
    assert b["decode_tok_s_median"] == pytest.approx((20 + 40) / 2)
    assert b["prefill_tok_s_median"] == pytest.approx((48 + 40) / 2)
    every = table[ALL]
    assert (every["decode_tokens"], every["decode_s"]) == (127, 3.875)
    assert every["decode_tok_s_median"] == pytest.approx(40)  # batches at 20, 40 and 56 tok/s


def test_speed_is_no_metric(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    rows = _rows()
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not any("tok_s" in k for k in summary(rows)[0])
    md, written = write_report(folder, plots=False, baseline="a")
    assert {p.name for p in written} == {"report.md", "summary.csv", "speed.csv", "differences.csv"}
    with open(folder / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    # summary.csv's contract: strategy, samples, then M, M_lo, M_hi for every metric M
    names = [c for c in header[2:] if not c.endswith(("_lo", "_hi"))]
    assert header[:2] == ["strategy", "samples"] and "length" in names
    assert header[2:] == [c for m in names for c in (m, f"{m}_lo", f"{m}_hi")]
    assert not any("tok_s" in c for c in header)
    with open(folder / "differences.csv", newline="") as f:
        compared = {d["metric"] for d in csv.DictReader(f)}
    assert "length" in compared and not any("tok_s" in m for m in compared)
    with open(folder / "speed.csv", newline="") as f:
        saved = list(csv.DictReader(f))
    assert [r["strategy"] for r in saved] == ["a", "b", "c", ALL] and saved[1]["batches"] == "2"
    report = (folder / "report.md").read_text()
    speed_at, diffs_at = report.index("## Speed"), report.index("## Differences from a")
    assert speed_at < diffs_at and "| b | 2 | 32.0 | 30.0 | 44.0 |" in report[speed_at:diffs_at]
    assert "Speed (over batches, not samples)" in md and "| b | 2 | 32.0 |" in md


def test_tok_s_in_a_config_points_to_the_speed_table():
    raw = {"name": "x", "prompts": ["hi"], "metrics": ["length", "tok_s"]}
    with pytest.raises(ConfigError, match=r"'tok_s' is not a metric.*speed\.csv"):
        parse_config(raw)
