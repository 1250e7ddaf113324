"""Counting jit traces (a trace is what precedes every compilation), and recompiling the
steps a call ran, to inspect what XLA made of them."""

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


@contextlib.contextmanager
def step_calls(*names: str):
    """Records the first call of each named :mod:`phijax.steps` function inside the block;
    yields ``compiled(name)``, that call compiled again (``memory_analysis()``, ``as_text()``)."""
    from phijax import steps

    originals = {name: getattr(steps, name) for name in names}
    calls: dict[str, tuple] = {}

    def spy(name):
        def call(*args, **kwargs):
            calls.setdefault(name, (args, kwargs))
            return originals[name](*args, **kwargs)

        return call

    def compiled(name: str):
        args, kwargs = calls[name]
        return originals[name].lower(*args, **kwargs).compile()

    for name in names:
        setattr(steps, name, spy(name))
    try:
        yield compiled
    finally:
        for name, fn in originals.items():
            setattr(steps, name, fn)
