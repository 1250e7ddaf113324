"""Experiments: YAML configs → batched, resumable runs → JSONL results → reports."""

from phijax.experiment.report import summary, write_report
from phijax.experiment.runner import read_results, run
from phijax.experiment.schema import ExperimentConfig, load_config, parse_config

__all__ = ["ExperimentConfig", "load_config", "parse_config", "read_results", "run", "summary", "write_report"]
