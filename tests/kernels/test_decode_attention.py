"""Decode attention on the kernel (``decode_attention.h``): the pure path's attention over one
layer of the cache, read in place, on every build.

Error model: both sides round in f32, in another order. A score sums ``head_dim`` products and
an output ``slots`` weighted values, so each differs from the exact value by at most about
``(head_dim + slots) * eps`` of the largest value a probability weighs; both are held to that
bound against a float64 reference.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import phijax
from phijax.kernels import attention as cache_attention
from phijax.kernels import check
from phijax.model.attention import attention

from numerics import F32_EPS, f32_atol

MODELS = Path(__file__).parent.parent / "fixtures" / "model"
LAYERS, ROWS, LAYER = 3, 4, 1
CASES = {  # kv heads, query heads per kv head, head size, cache positions, attended slots
    "Phi-3 (no grouping)": (4, 1, 96, 40, 32),
    "grouped queries": (2, 3, 64, 24, 24),
    "head size 128": (1, 2, 128, 16, 9),
    "head size 16": (2, 2, 16, 8, 8),
}


def _inputs(case: str, seed: int = 0):
    kv_heads, groups, d, seq, n = CASES[case]
    rng = np.random.default_rng(seed)
    k, v = rng.standard_normal((2, LAYERS, ROWS, kv_heads, seq, d)).astype(np.float32)
    q = rng.standard_normal((ROWS, kv_heads * groups, d)).astype(np.float32)
    t = np.arange(n)
    # a prompt's prefix, a sliding window, every slot, and a row that sees none (padding)
    mask = np.stack([t <= n // 2, (t >= 2) & (t < n - 1), t < n, t < 0])
    return q, k, v, mask


def _bound(q, v, mask) -> float:
    return (q.shape[-1] + mask.shape[1]) * F32_EPS * float(np.abs(v).max())


@pytest.mark.parametrize("case", list(CASES))
def test_equals_the_pure_attention_within_f32_rounding(build, case):
    q, k, v, mask = _inputs(case)
    n = mask.shape[1]
    got = np.asarray(
        jax.jit(cache_attention.decode_attention, static_argnums=0)(build, q, k, v, LAYER, mask)
    )
    pure, _ = attention(q[:, None], k[LAYER][:, :, :n], v[LAYER][:, :, :n], mask[:, None])
    exact = cache_attention.reference(q, k, v, LAYER, mask)
    bound = _bound(q, v, mask)
    assert np.abs(np.asarray(pure)[:, 0] - exact).max() <= bound  # the bound holds the pure path
    assert np.abs(got - exact).max() <= bound
    # the row that sees no slot weighs every attended slot equally, as the pure path does
    groups = q.shape[1] // k.shape[2]
    mean = np.repeat(v[LAYER, 3, :, :n].mean(axis=1), groups, axis=0)
    np.testing.assert_allclose(got[3], mean, rtol=0, atol=bound)


def test_hidden_and_unattended_slots_are_not_read(build):
    """The keys and values of slots the mask hides, and of slots past the attended ones,
    never reach the output: NaN there changes nothing (the pure path multiplies a hidden
    slot's value by a zero probability, so NaN would reach it)."""
    q, k, v, mask = _inputs("grouped queries")
    n = mask.shape[1]
    hidden = np.zeros(k.shape[-2], bool)
    hidden[:n] = ~mask[0]
    hidden[n:] = True
    poisoned_k, poisoned_v = k.copy(), v.copy()
    poisoned_k[LAYER, 0, :, hidden] = np.nan
    poisoned_v[LAYER, 0, :, hidden] = np.nan
    call = jax.jit(cache_attention.decode_attention, static_argnums=0)
    clean = np.asarray(call(build, q, k, v, LAYER, mask))[0]
    poisoned = np.asarray(call(build, q, poisoned_k, poisoned_v, LAYER, mask))[0]
    np.testing.assert_array_equal(poisoned, clean)


def test_a_wider_mask_of_hidden_slots_changes_nothing(build):
    """A mask as wide as the cache, its slots past the attended ones hidden, gives the narrow
    mask's outputs bit for bit for every row that sees a slot: the loops stop after the last
    seen slot, so a CPU decode can attend over the whole cache in one compiled program."""
    q, k, v, mask = _inputs("Phi-3 (no grouping)")
    wide = np.zeros((mask.shape[0], k.shape[-2]), bool)
    wide[:, : mask.shape[1]] = mask
    call = jax.jit(cache_attention.decode_attention, static_argnums=0)
    narrow = np.asarray(call(build, q, k, v, LAYER, mask))
    widened = np.asarray(call(build, q, k, v, LAYER, wide))
    np.testing.assert_array_equal(widened[:3], narrow[:3])  # row 3 sees none: all slots weigh


def test_a_row_is_computed_alone(build):
    """Each row's output is the same whatever the other rows are: a batch of one gives the
    batch's first row bit for bit (the batch invariance of sampling relies on it)."""
    q, k, v, mask = _inputs("Phi-3 (no grouping)")
    call = jax.jit(cache_attention.decode_attention, static_argnums=0)
    whole = np.asarray(call(build, q, k, v, LAYER, mask))
    alone = np.asarray(call(build, q[:1], k[:, :1], v[:, :1], LAYER, mask[:1]))
    np.testing.assert_array_equal(alone[0], whole[0])


def test_the_self_check_fails_a_wrong_attention(build, monkeypatch):
    """The check each build passes before use covers the attention target: a wrong one is
    refused (here: every output 0.1% off)."""
    rng = np.random.default_rng(0)
    assert check.attention_check(build, rng) == ""
    right = cache_attention.decode_attention
    monkeypatch.setattr(cache_attention, "decode_attention", lambda *a: right(*a) * 1.001)
    assert check.attention_check(build, rng) == "wrong decode attention"


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["gqa", "sliding_window"])
def test_a_decode_gives_the_pure_paths_tokens(build, fixture, monkeypatch):
    """Generation with decode attention on ``build`` (over the cache in place) against XLA's
    (``PHIJAX_CPU_KERNEL=off``), on real fixture models: three prompts of different lengths
    (rows whose masks differ), grouped queries or a sliding window. The same greedy tokens,
    and log-probabilities within f32 rounding of the network (``numerics.f32_atol`` over
    the span of the log-probabilities returned)."""
    path = MODELS / f"{fixture}.gguf"
    runs = {}
    for kernel in (build, "off"):
        monkeypatch.setenv("PHIJAX_CPU_KERNEL", kernel)
        model = phijax.load(path, progress=False)
        assert model.params.backend.reads_cache_in_place == (kernel != "off")
        prompts = [list(range(3, 3 + n)) for n in (5, 11, 19)]
        runs[kernel] = model.generate(
            prompts, sampler=phijax.Sampler.greedy(), max_new_tokens=24, top_logprobs=4
        )
    on, off = runs[build], runs["off"]
    assert on.tokens == off.tokens
    lp_on = np.array([[lp for _, lp in step] for row in on.top_logprobs for step in row])
    lp_off = np.array([[lp for _, lp in step] for row in off.top_logprobs for step in row])
    atol = f32_atol(model.config, float(np.ptp(lp_off)), keys=model.cache_len_for(19 + 24))
    np.testing.assert_allclose(lp_on, lp_off, atol=atol, rtol=0)
