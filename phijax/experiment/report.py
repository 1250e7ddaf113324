"""Reports from a results file: per-strategy tables with 95% intervals (markdown, CSV),
paired differences from a baseline strategy, PNG plots with error bars, and beside them
the generation speed per strategy (``speed``: over batches, not samples)."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phijax.errors import ConfigError, suggest
from phijax.experiment import metrics, speed, stats
from phijax.experiment.runner import PROVENANCE, read_folder, read_results, results_files
from phijax.experiment.schema import METRICS

_SWEEP_LABEL = re.compile(r"^(?P<base>[^\[]+)\[(?P<point>.*)\]$")
_SPEED_NOTE = (
    "Tokens per second of the `generate()` calls (batches) each strategy's samples came from. "
    "A batch is one measurement shared by all its rows, and by every strategy batched with it, "
    "so speed is summarized over batches, without intervals or paired differences. "
    "Decode tok/s: all its batches' decode tokens over their decode seconds."
)


def _resolve(path: str | Path) -> tuple[Path, list[dict[str, Any]]]:
    """The results folder and its rows: a folder's files merged (every shard of a
    multi-process run), or the one file given."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    files = results_files(folder) if path.is_dir() else [path] if path.exists() else []
    if not files:
        raise ConfigError(
            f"{path}: no results here. Give a results folder or one of its samples*.jsonl files "
            "(phijax run writes them)."
        )
    return folder, read_folder(folder) if path.is_dir() else read_results(path)


def _groups(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows per strategy (first-seen order), each sorted by (prompt, seed, sample)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["strategy"], []).append(r)
    return {name: sorted(group, key=stats.row_key) for name, group in groups.items()}


def summary(
    rows: Sequence[dict[str, Any]], metric_names: Sequence[str] = METRICS, *,
    n_boot: int = stats.DEFAULT_BOOT, seed: int = stats.DEFAULT_SEED,
) -> list[dict[str, Any]]:  # fmt: skip
    """One dict per strategy: ``strategy``, ``samples``, and for each metric ``M`` its estimate
    with a 95% cluster-bootstrap interval, ``M``, ``M_lo``, ``M_hi`` (seeded: reproducible)."""
    table = []
    for name, group in _groups(rows).items():
        per_row = metrics.row_metrics(group, metric_names)
        counts = stats.cluster_counts(
            [r["prompt_id"] for r in group], n_boot, np.random.default_rng(seed)
        )
        entry: dict[str, Any] = {"strategy": name, "samples": len(group)}
        for m in METRICS:
            if m in per_row:
                entry[m], entry[f"{m}_lo"], entry[f"{m}_hi"] = stats.estimate_with_interval(
                    per_row[m], counts
                )
        table.append(entry)
    return table


def differences(
    rows: Sequence[dict[str, Any]], baseline: str, metric_names: Sequence[str] = METRICS, *,
    n_boot: int = stats.DEFAULT_BOOT, seed: int = stats.DEFAULT_SEED,
) -> list[dict[str, Any]]:  # fmt: skip
    """Each strategy minus ``baseline``, per metric, over the (prompt, seed, sample) keys both
    have: the difference, its paired interval (one bootstrap draw applied to both strategies,
    so the shared prompts and shared random numbers cancel) and, for comparison, the
    unpaired interval (each strategy resampled independently)."""
    groups = _groups(rows)
    if baseline not in groups:
        raise ConfigError(
            f"baseline {baseline!r}: no such strategy in the results{suggest(baseline, groups)}; "
            f"give one of {', '.join(groups)}."
        )
    base = {stats.row_key(r): r for r in groups[baseline]}
    out = []
    for name, group in groups.items():
        if name == baseline:
            continue
        mine = {stats.row_key(r): r for r in group}
        keys = sorted(mine.keys() & base.keys())
        if not keys:
            continue
        a, b = [mine[k] for k in keys], [base[k] for k in keys]
        ma, mb = metrics.row_metrics(a, metric_names), metrics.row_metrics(b, metric_names)
        prompts = [k[0] for k in keys]
        paired = stats.cluster_counts(prompts, n_boot, np.random.default_rng(seed))
        ind_a = stats.cluster_counts(prompts, n_boot, np.random.default_rng([seed, 1]))
        ind_b = stats.cluster_counts(prompts, n_boot, np.random.default_rng([seed, 2]))
        for m in METRICS:
            if m in ma and m in mb:
                diff, lo, hi = stats.difference_with_interval(ma[m], mb[m], paired, paired)
                _, ulo, uhi = stats.difference_with_interval(ma[m], mb[m], ind_a, ind_b)
                out.append({"strategy": name, "baseline": baseline, "metric": m, "pairs": len(keys),
                            "diff": diff, "diff_lo": lo, "diff_hi": hi, "unpaired_lo": ulo, "unpaired_hi": uhi})  # fmt: skip
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else f"{value:.0f}"
            if value.is_integer() and abs(value) >= 1
            else f"{value:.3f}"
        )
    return str(value)


def _cell(row: dict[str, Any], m: str) -> str:
    return f"{_fmt(row[m])} [{_fmt(row[m + '_lo'])}, {_fmt(row[m + '_hi'])}]"


def _metric_names(table: Sequence[dict[str, Any]]) -> list[str]:
    return [m for m in METRICS if table and m in table[0]]


def markdown_table(table: Sequence[dict[str, Any]]) -> str:
    """Strategies x metrics, each cell ``estimate [lo, hi]``."""
    if not table:
        return "(no results)\n"
    names = _metric_names(table)
    lines = ["| strategy | samples | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    lines += [
        f"| {row['strategy']} | {row['samples']} | "
        + " | ".join(_cell(row, m) for m in names)
        + " |"
        for row in table
    ]
    return "\n".join(lines) + "\n"


def differences_table(diffs: Sequence[dict[str, Any]]) -> str:
    """Strategies x metrics, each cell ``difference [paired lo, hi]``, then how often pairing
    gave the narrower interval."""
    if not diffs:
        return "(no strategy shares (prompt, seed, sample) keys with the baseline)\n"
    names = list(dict.fromkeys(d["metric"] for d in diffs))
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for d in diffs:
        by.setdefault(d["strategy"], {})[d["metric"]] = d
    lines = [
        "| strategy | " + " | ".join(f"Δ {m}" for m in names) + " |",
        "|" + "---|" * (len(names) + 1),
    ]
    for name, row in by.items():
        cells = [
            f"{_fmt(row[m]['diff'])} [{_fmt(row[m]['diff_lo'])}, {_fmt(row[m]['diff_hi'])}]"
            if m in row
            else ""
            for m in names
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    narrower = sum(_width(d, "diff") < _width(d, "unpaired") for d in diffs)
    compared = sum(_width(d, "unpaired") > 0 for d in diffs)
    lines.append(f"\nBaseline {diffs[0]['baseline']}, paired on (prompt, seed, sample); intervals 95%. "
                 f"Paired intervals narrower than unpaired in {narrower} of {compared} comparisons.")  # fmt: skip
    return "\n".join(lines) + "\n"


def widths_table(diffs: Sequence[dict[str, Any]]) -> str:
    """Paired vs unpaired interval widths, one line per (strategy, metric)."""
    lines = [
        "| strategy | metric | difference | paired 95% | unpaired 95% | width paired / unpaired |",
        "|---|---|---|---|---|---|",
    ]
    for d in diffs:
        wp, wu = _width(d, "diff"), _width(d, "unpaired")
        ratio = _fmt(wp / wu) if wu > 0 else "-"
        lines.append(f"| {d['strategy']} | {d['metric']} | {_fmt(d['diff'])} | [{_fmt(d['diff_lo'])}, {_fmt(d['diff_hi'])}] | "
                     f"[{_fmt(d['unpaired_lo'])}, {_fmt(d['unpaired_hi'])}] | {ratio} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _width(d: dict[str, Any], prefix: str) -> float:
    w = d[f"{prefix}_hi"] - d[f"{prefix}_lo"]
    return w if math.isfinite(w) else 0.0


def _sweep_points(
    table: Sequence[dict[str, Any]],
) -> dict[str, list[tuple[dict[str, str], dict[str, Any]]]]:
    """Swept strategies ``name[key=value,...]`` grouped by name, with their parsed sweep point."""
    out: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = {}
    for row in table:
        m = _SWEEP_LABEL.match(row["strategy"])
        if m:
            point = dict(kv.split("=", 1) for kv in m["point"].split(","))
            out.setdefault(m["base"], []).append((point, row))
    return out


def _quality(table: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The quality axis: the judge's log-probability when the rows were judged."""
    if table and "judge_logprob" in table[0]:
        return "judge_logprob", "mean log-probability per token under the judge (quality →)"
    return "mean_logprob", "mean log-probability per token under the generator (quality →)"


def _err(rows: Sequence[dict[str, Any]], m: str) -> np.ndarray:
    """matplotlib's ``[2, n]`` error bar lengths from ``M_lo`` / ``M_hi``."""
    return np.array(
        [
            [max(r[m] - r[m + "_lo"], 0.0) for r in rows],
            [max(r[m + "_hi"] - r[m], 0.0) for r in rows],
        ]
    )


def plot(table: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """PNG plots, every point with its 95% interval as error bars:
    ``quality_diversity.png`` (one point per strategy); for a sweep, ``frontier.png``
    (quality against diversity, one line per strategy family through the swept values)
    and ``sweep_<metric>.png`` (each metric against the first swept value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    quality, quality_label = _quality(table)
    diversity, diversity_label = "distinct_2", "distinct-2 within a prompt's samples (diversity →)"

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        written.append(out_dir / name)

    if table and {quality, diversity} <= set(table[0]):
        fig, ax = plt.subplots(figsize=(7, 5))
        for row in table:
            ax.errorbar(row[quality], row[diversity], xerr=_err([row], quality), yerr=_err([row], diversity),
                        fmt="o", capsize=3)  # fmt: skip
            ax.annotate(row["strategy"], (row[quality], row[diversity]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xlabel(quality_label)
        ax.set_ylabel(diversity_label)
        ax.set_title("Quality vs diversity per strategy (95% intervals)")
        ax.grid(alpha=0.3)
        save(fig, "quality_diversity.png")
    sweeps = _sweep_points(table)
    if not sweeps:
        return written
    lines = _sweep_lines(sweeps)
    if {quality, diversity} <= set(table[0]):
        fig, ax = plt.subplots(figsize=(7.5, 5.5))
        for label, _, points in lines:
            rows = [row for _, row in points]
            ax.errorbar([r[diversity] for r in rows], [r[quality] for r in rows], xerr=_err(rows, diversity),
                        yerr=_err(rows, quality), marker="o", capsize=3, label=label)  # fmt: skip
            for x, row in points:
                ax.annotate(
                    f"{x:g}",
                    (row[diversity], row[quality]),
                    fontsize=7,
                    xytext=(4, -9),
                    textcoords="offset points",
                )
        ax.set_xlabel(diversity_label)
        ax.set_ylabel(quality_label)
        ax.set_title(
            f"Quality-diversity frontier: one line per family, points labelled by {lines[0][1]} (95% intervals)"
        )
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "frontier.png")
    for metric in (
        m for m in ("distinct_2", "self_bleu", "repetition", quality, "length") if m in table[0]
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, axis_key, points in lines:
            rows = [row for _, row in points]
            ax.errorbar(
                [x for x, _ in points],
                [r[metric] for r in rows],
                yerr=_err(rows, metric),
                marker="o",
                capsize=3,
                label=label,
            )
            ax.set_xlabel(axis_key)
        ax.set_ylabel(f"{metric} (95% intervals)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, f"sweep_{metric}.png")
    return written


def _sweep_lines(
    sweeps: dict[str, list[tuple[dict[str, str], dict[str, Any]]]],
) -> list[tuple[str, str, list[tuple[float, dict[str, Any]]]]]:
    """One line per family (base strategy and the other swept values) along the first swept key."""
    lines = []
    for base, points in sweeps.items():
        axis_key = next(iter(points[0][0]))
        by_rest: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for point, row in points:
            rest = ",".join(f"{k}={v}" for k, v in point.items() if k != axis_key)
            by_rest.setdefault(rest, []).append((float(point[axis_key]), row))
        for rest, xy in by_rest.items():
            lines.append((f"{base} {rest}".strip(), axis_key, sorted(xy, key=lambda p: p[0])))
    return lines


def _config_of(folder: Path) -> dict[str, Any]:
    prov = folder / PROVENANCE
    return json.loads(prov.read_text()).get("config", {}) if prov.exists() else {}


def write_report(
    results: str | Path, out_dir: str | Path | None = None, *, plots: bool = True, baseline: str | None = None,
    n_boot: int = stats.DEFAULT_BOOT, seed: int = stats.DEFAULT_SEED,
) -> tuple[str, list[Path]]:  # fmt: skip
    """Write ``report.md``, ``summary.csv``, ``speed.csv`` (and with a baseline
    ``differences.csv``) and plots beside the results (or into ``out_dir``); returns the
    markdown tables and the files written.
    ``baseline``: a strategy to difference against (default: the config's ``baseline``)."""
    folder, rows = _resolve(results)
    if not rows:
        raise ConfigError(f"{results} has no complete rows yet.")
    config = _config_of(folder)
    names = config.get("metrics") or METRICS
    baseline = baseline or config.get("baseline")
    table = summary(rows, names, n_boot=n_boot, seed=seed)
    out = Path(out_dir) if out_dir else folder
    out.mkdir(parents=True, exist_ok=True)
    md = markdown_table(table)
    fast = speed.speed(rows)
    written = [out / "report.md", out / "summary.csv", out / "speed.csv"]
    for path, records in ((written[1], table), (written[2], fast)):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    title = rows[0].get("experiment", folder.name)
    smd = speed.markdown_table(fast)
    doc = (f"# {title}\n\n{len(rows)} samples from `{results}`. Each cell: estimate [95% interval], a cluster "
           f"bootstrap over prompts, then samples within a prompt ({n_boot} draws, seed {seed}).\n\n{md}"
           f"\n## Speed\n\n{_SPEED_NOTE}\n\n{smd}")  # fmt: skip
    md += f"\nSpeed (over batches, not samples):\n\n{smd}"
    if baseline:
        diffs = differences(rows, baseline, names, n_boot=n_boot, seed=seed)
        dmd = differences_table(diffs)
        md += f"\nDifferences from {baseline} (paired):\n\n{dmd}"
        doc += f"\n## Differences from {baseline}\n\n{dmd}\n### Paired and unpaired intervals\n\n{widths_table(diffs)}"
        written.append(out / "differences.csv")
        with open(written[-1], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(
                f, fieldnames=list(diffs[0]) if diffs else ["strategy", "metric"]
            )
            writer.writeheader()
            writer.writerows(diffs)
    written[0].write_text(doc, encoding="utf-8")
    if plots:
        written += plot(table, out)
    return md, written
