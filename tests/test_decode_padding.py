"""The measured decode padding plan: identity for f32, measured and cached otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

import phijax
from phijax import Sampler, backend, decode_padding

TINY = Path(__file__).parent / "fixtures" / "model" / "gqa.gguf"


CPU_BF16 = backend.choose(platform_name="cpu", dtype="bfloat16")


def test_f32_and_accelerators_are_never_padded():
    assert (
        decode_padding.decode_rows(backend.choose(platform_name="cpu", dtype="float32"), (192, 64))
        == {}
    )
    assert decode_padding.decode_rows(backend.choose(platform_name="gpu"), (192, 64)) == {}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the plan is measured for XLA:CPU")
def test_bf16_plan_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PHIJAX_CACHE", str(tmp_path))
    got = decode_padding.decode_rows(CPU_BF16, (192, 64))
    assert set(got) == set(decode_padding.SMALL_BATCHES)
    assert all(b <= rows <= decode_padding.MAX_ROWS for b, rows in got.items())
    saved = json.loads((tmp_path / "plans.json").read_text())
    assert list(saved.values()) == [{str(b): r for b, r in got.items()}]
    monkeypatch.setattr(decode_padding, "measure", lambda *a: pytest.fail("measured twice"))
    assert decode_padding.decode_rows(CPU_BF16, (192, 64)) == got


def test_padded_decode_rows_do_not_change_a_samples_tokens(monkeypatch):
    """Padding rows are masked out of everything a real row computes (the key rule)."""
    m = phijax.load(TINY, progress=False)
    sampler, kw = Sampler(temperature=0.8), {"max_new_tokens": 12, "seed": 7}
    plain = m.generate([5, 6, 7], sampler=sampler, **kw)
    m._decode_plan = {1: 8}  # what a bf16 CPU plan may choose
    assert m.decode_batch(1) == 8
    assert m.generate([5, 6, 7], sampler=sampler, **kw).tokens == plain.tokens
