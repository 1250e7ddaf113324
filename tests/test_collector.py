"""The garbage collector is paused for loads and research calls, and comes back as it was."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

import phijax
from phijax import collector, loading, steps
from phijax.errors import ConfigError

PLAIN = Path(__file__).parent / "fixtures" / "model" / "plain.gguf"


@pytest.fixture
def collector_on():
    gc.enable()
    yield
    gc.enable()


def test_paused_restores_the_setting_also_on_errors(collector_on):
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), collector.paused():
        raise ValueError
    assert gc.isenabled()
    gc.disable()
    with collector.paused():
        pass
    assert not gc.isenabled()  # the user's own choice stays


def test_a_load_and_a_research_call_run_with_the_collector_paused(collector_on, monkeypatch):
    seen = []
    tokenizer, activations = loading._tokenizer, steps.activations
    monkeypatch.setattr(
        loading, "_tokenizer", lambda *a: seen.append(gc.isenabled()) or tokenizer(*a)
    )
    m = phijax.load(PLAIN, progress=False)
    monkeypatch.setattr(
        steps, "activations", lambda *a, **k: seen.append(gc.isenabled()) or activations(*a, **k)
    )
    m.logits([[5, 6, 7], [8, 9]])
    assert seen == [False, False] and gc.isenabled()
    with pytest.raises(ConfigError):  # refused inside the paused load
        phijax.load(PLAIN, progress=False, sliding_window="on")
    assert gc.isenabled()
