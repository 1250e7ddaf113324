"""Reports from a results file: a per-strategy table (markdown and CSV) and PNG plots."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phijax.errors import ConfigError
from phijax.experiment import metrics
from phijax.experiment.runner import read_results
from phijax.experiment.schema import METRICS

_SWEEP_LABEL = re.compile(r"^(?P<base>[^\[]+)\[(?P<point>.*)\]$")


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "samples.jsonl"
    if not path.exists():
        raise ConfigError(f"{path}: no results here. Give a results folder or its samples.jsonl (phijax run writes them).")
    return path


def summary(rows: Sequence[dict[str, Any]], metric_names: Sequence[str] = METRICS) -> list[dict[str, Any]]:
    """One dict per strategy (in first-seen order): ``strategy``, ``samples`` and each metric."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["strategy"], []).append(r)
    return [{"strategy": name, **metrics.summarize(group, metric_names)} for name, group in groups.items()]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def markdown_table(table: Sequence[dict[str, Any]]) -> str:
    if not table:
        return "(no results)\n"
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in columns) + " |" for row in table]
    return "\n".join(lines) + "\n"


def _sweep_points(table: Sequence[dict[str, Any]]) -> dict[str, list[tuple[dict[str, str], dict[str, Any]]]]:
    """Swept strategies ``name[key=value,...]`` grouped by name, with their parsed sweep point."""
    out: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = {}
    for row in table:
        m = _SWEEP_LABEL.match(row["strategy"])
        if m:
            point = dict(kv.split("=", 1) for kv in m["point"].split(","))
            out.setdefault(m["base"], []).append((point, row))
    return out


def plot(table: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """``quality_diversity.png`` (mean logprob vs distinct-2, one point per strategy) and, for a
    sweep, ``sweep_<metric>.png`` (each metric against the first swept value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if table and {"mean_logprob", "distinct_2"} <= set(table[0]):
        fig, ax = plt.subplots(figsize=(7, 5))
        for row in table:
            ax.scatter(row["mean_logprob"], row["distinct_2"])
            ax.annotate(row["strategy"], (row["mean_logprob"], row["distinct_2"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("mean log-probability per token under the model (quality →)")
        ax.set_ylabel("distinct-2 (diversity →)")
        ax.set_title("Quality vs diversity per strategy")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "quality_diversity.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    sweeps = _sweep_points(table)
    if sweeps:
        metric_names = [m for m in ("distinct_2", "self_bleu", "repetition", "mean_logprob", "length") if m in table[0]]
        for metric in metric_names:
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for base, points in sweeps.items():
                axis_key = next(iter(points[0][0]))
                by_rest: dict[str, list[tuple[float, float]]] = {}
                for point, row in points:
                    rest = ",".join(f"{k}={v}" for k, v in point.items() if k != axis_key)
                    by_rest.setdefault(rest, []).append((float(point[axis_key]), row[metric]))
                for rest, xy in by_rest.items():
                    xy.sort()
                    ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=f"{base} {rest}".strip())
                ax.set_xlabel(axis_key)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out_dir / f"sweep_{metric}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written


def write_report(results: str | Path, out_dir: str | Path | None = None, *, plots: bool = True) -> tuple[str, list[Path]]:
    """Write ``report.md``, ``summary.csv`` and plots beside the results (or into ``out_dir``);
    returns the markdown table and the files written."""
    path = _resolve(results)
    rows = read_results(path)
    if not rows:
        raise ConfigError(f"{path} has no complete rows yet.")
    table = summary(rows)
    out = Path(out_dir) if out_dir else path.parent
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_table(table)
    written = [out / "report.md", out / "summary.csv"]
    title = rows[0].get("experiment", path.parent.name)
    written[0].write_text(f"# {title}\n\n{len(rows)} samples from `{path}`.\n\n{md}", encoding="utf-8")
    with open(written[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    if plots:
        written += plot(table, out)
    return md, written
