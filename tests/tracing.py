"""Counting jit traces: a trace is what precedes every compilation."""

from __future__ import annotations

import contextlib

import jax.monitoring

_traces: list[str] = []
_counting = False


def _on_event(name: str, _secs: float, **_kw) -> None:
    if _counting and name == "/jax/core/compile/jaxpr_trace_duration":
        _traces.append(name)


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def count_traces():
    """Collects one entry per jit trace (hence per compilation) inside the block."""
    global _counting
    _traces.clear()
    _counting = True
    try:
        yield _traces
    finally:
        _counting = False
