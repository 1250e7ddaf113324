"""Experiment results as the tests compare them: rows keyed as the runner keys them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_MODEL = Path(__file__).parent / "fixtures" / "model" / "sliding_window.gguf"


def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """Rows by (strategy, prompt id, seed, sample), the runner's row key."""
    return {(r["strategy"], r["prompt_id"], r["seed"], r["sample"]): r for r in rows}
