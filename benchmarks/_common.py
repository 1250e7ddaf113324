"""Helpers shared by the benchmark scripts: the machine's description and table printing."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from phijax import options
from phijax.paths import cpu_name

__all__ = [
    "add_load_flags",
    "cpu_name",
    "llama_cpp_version",
    "load_argv",
    "load_kwargs",
    "print_table",
]


def add_load_flags(parser: argparse.ArgumentParser) -> None:
    """``phijax.load``'s options as flags (``--no-quantized``, ``--dtype``, ...; unset: the
    device's default, as ``phijax.load`` chooses it)."""
    options.add_flags(parser.add_argument_group("phijax.load options (unset: the default)"))


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The load options set on the command line, as ``phijax.load`` keywords."""
    fields = options.LoadOptions.model_fields
    return {k: v for k, v in options.from_flags(args).items() if v != fields[k].default}


def load_argv(args: argparse.Namespace) -> list[str]:
    """The load options set on the command line, as flags again (for a child process)."""
    out = []
    for key, value in load_kwargs(args).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return out


def llama_cpp_version() -> str:
    try:
        import llama_cpp
    except ImportError:
        return "llama-cpp-python not installed"
    return f"llama-cpp-python {llama_cpp.__version__}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> None:
    """A markdown table, or right-aligned plain columns."""
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
