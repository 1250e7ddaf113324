"""Helpers shared by the benchmark scripts: the machine's description and table printing."""

from __future__ import annotations

from collections.abc import Sequence

from phijax.decode_padding import cpu_name

__all__ = ["cpu_name", "llama_cpp_version", "print_table"]


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
