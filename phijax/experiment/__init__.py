"""Experiments: YAML configs → batched, resumable runs (and a judge) → JSONL results →
reports with intervals and paired differences; ``verify`` regenerates stored rows."""

from phijax.experiment.report import differences, summary, write_report
from phijax.experiment.runner import judge, read_folder, read_results, run
from phijax.experiment.schema import ExperimentConfig, load_config, parse_config

__all__ = [
    "ExperimentConfig",
    "differences",
    "judge",
    "load_config",
    "parse_config",
    "read_folder",
    "read_results",
    "run",
    "summary",
    "write_report",
]
