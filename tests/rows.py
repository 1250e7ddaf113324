"""Experiment results as the tests compare them: rows keyed as the runner keys them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_MODEL = Path(__file__).parent / "fixtures" / "model" / "sliding_window.gguf"


def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int, int], dict[str, Any]]:
    """Rows by (strategy, prompt id, seed, sample), the runner's row key."""
    return {(r["strategy"], r["prompt_id"], r["seed"], r["sample"]): r for r in rows}


def experiment_config(tmp_path: Path, name: str = "exp", **changes: Any) -> Path:
    """A small experiment on the tiny model (4 prompts x 4 strategies x 2 seeds x 2 samples,
    64 rows) written as ``tmp_path/<name>.yaml``; ``changes`` override its keys."""
    raw = {
        "name": name,
        "model": {"source": str(TINY_MODEL)},
        "chat": False,
        "prompts": ["hello there", "a b c", "the end", "once upon"],
        "strategies": {"greedy": {"temperature": 0}, "hot": {"temperature": 1.5}, "nucleus": {"top_p": 0.8},
                       "candle": {"order": "candle", "repetition_penalty": 1.2}},
        "samples": 2,
        "seeds": [0, 1],
        "max_new_tokens": 12,
        "batch_size": 4,
        "output": str(tmp_path / "results"),
        **changes,
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
