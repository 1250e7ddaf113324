"""The research API: activations, edits, gradients, vmap, and the pure forward pass.

Activations are checked against an independent float64 numpy implementation of
HF's Phi3 math, fed weights decoded by ``gguf.quants`` (not phijax's kernels).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phijax
from phijax import Sampler
from phijax.errors import ConfigError
from phijax.model.forward import take_rows

from numerics import F32_EPS, assert_logits_close, f32_atol
from tracing import count_traces

FIXTURES = Path(__file__).parent.parent / "fixtures" / "model"
# LongRoPE variants are covered by the HF logits parity tests; this reference has plain rope.
REFERENCE_VARIANTS = ["plain", "gqa", "sliding_window", "partial_rotary_tied", "q4_0"]


def _weights(path: Path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        out[t.name.removesuffix(".weight")] = w.reshape([int(d) for d in reversed(t.shape)])
    return out


def reference_activations(path: Path, config, ids: list[int]) -> dict[str, np.ndarray]:
    """HF Phi3's forward pass in float64 (docs/formats.md), recording every named point."""
    w, c = _weights(path), config
    s, hd, rot = len(ids), c.head_dim, c.rotary_dim

    def norm(x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + c.rms_norm_eps) * weight.reshape(-1)

    inv = c.rope_theta ** -(np.arange(0, rot, 2) / rot)
    ang = np.arange(s)[:, None] * inv
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(x):  # [s, heads, hd], rotate halves of the first `rot` dims
        x1, x2 = x[..., : rot // 2], x[..., rot // 2 : rot]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., rot:]], -1)

    qi, ki = np.arange(s)[:, None], np.arange(s)[None]
    allowed = ki <= qi
    if c.sliding_window is not None:
        allowed &= qi - ki < c.sliding_window
    acts = {"embed": w["token_embd"][ids]}
    x = acts["embed"]
    for i in range(c.num_layers):
        b = f"blk.{i}"
        acts[f"layers.{i}.resid_pre"] = x
        qkv = norm(x, w[f"{b}.attn_norm"]) @ w[f"{b}.attn_qkv"].T
        nq, nkv = c.num_heads * hd, c.num_kv_heads * hd
        q = rope(qkv[:, :nq].reshape(s, c.num_heads, hd))
        k = rope(qkv[:, nq : nq + nkv].reshape(s, c.num_kv_heads, hd))
        v = qkv[:, nq + nkv :].reshape(s, c.num_kv_heads, hd)
        rep = c.num_heads // c.num_kv_heads
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        scores = np.where(allowed, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        acts[f"layers.{i}.attn_weights"] = probs
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(s, nq) @ w[f"{b}.attn_output"].T
        acts[f"layers.{i}.attn_out"] = attn
        h = x + attn
        gu = norm(h, w[f"{b}.ffn_norm"]) @ w[f"{b}.ffn_up"].T
        gate, up = gu[:, : c.intermediate_size], gu[:, c.intermediate_size :]
        mlp = (gate / (1 + np.exp(-gate)) * up) @ w[f"{b}.ffn_down"].T
        acts[f"layers.{i}.mlp_out"] = mlp
        x = acts[f"layers.{i}.resid_post"] = h + mlp
    acts["final"] = norm(x, w["output_norm"])
    acts["logits"] = acts["final"] @ w.get("output", w["token_embd"]).T
    return acts


@pytest.fixture(scope="module")
def gqa():
    return phijax.load(FIXTURES / "gqa.gguf", progress=False)


@pytest.fixture(scope="module")
def ids(gqa):
    return np.random.default_rng(0).integers(3, gqa.config.vocab_size, 21).tolist()


@pytest.mark.parametrize("variant", REFERENCE_VARIANTS)
def test_activations_match_a_float64_reference(variant):
    path = FIXTURES / f"{variant}.gguf"
    m = phijax.load(path, progress=False)
    ids = np.random.default_rng(1).integers(3, m.config.vocab_size, 19).tolist()
    ref = reference_activations(path, m.config, ids)
    got = m.activations(ids)
    assert list(got) == list(phijax.model.hooks.all_names(m.config.num_layers))
    for name, want in ref.items():
        assert got[name].shape == want.shape, name
        # f32 vs float64: the error model's bound (tests/numerics.py) relative to each point's
        # range, 3.3e-6 of it (L=2, K=96); measured at most 3.1e-7 of it (layers.0.mlp_out)
        atol = f32_atol(m.config, max(np.ptp(want), 1e-6))
        np.testing.assert_allclose(got[name], want, atol=atol, rtol=0, err_msg=name)


def test_resid_post_is_the_sum_of_its_parts(gqa, ids):
    acts = gqa.activations(ids)
    for i in range(gqa.config.num_layers):
        parts = acts[f"layers.{i}.resid_pre"] + acts[f"layers.{i}.attn_out"]
        np.testing.assert_array_equal(
            parts + acts[f"layers.{i}.mlp_out"], acts[f"layers.{i}.resid_post"]
        )
    assert acts["layers.0.attn_weights"].shape == (gqa.config.num_heads, len(ids), len(ids))
    # 21 f32 probabilities: their normalization and this sum each round, sqrt(21)·eps apiece
    # (tests/numerics.py's random walk), 1.1e-6; measured 1.8e-7
    np.testing.assert_allclose(
        acts["layers.1.attn_weights"].sum(-1), 1.0, rtol=2 * np.sqrt(len(ids)) * F32_EPS
    )


def test_only_the_named_activations_are_built(gqa, ids):
    got = gqa.activations(ids, ["layers.1.resid_post"])
    assert list(got) == ["layers.1.resid_post"]
    out = jax.eval_shape(
        lambda p: phijax.steps.activations(p, jnp.asarray(ids), names=("layers.1.resid_post",)),
        gqa.params,
    )
    assert jax.tree.leaves(out[1]) == [
        jax.ShapeDtypeStruct((len(ids), gqa.config.hidden_size), jnp.float32)
    ]


def test_bad_names_are_clear_errors(gqa, ids):
    with pytest.raises(ConfigError, match=r"Did you mean 'layers\.1\.resid_post'"):
        gqa.activations(ids, ["layers.1.resid_pots"])
    with pytest.raises(ConfigError, match="i < 2"):
        gqa.activations(ids, ["layers.7.mlp_out"])
    with pytest.raises(ConfigError, match="read but not edited"):
        gqa.logits(ids, edits={"layers.0.attn_weights": 0.0})
    with pytest.raises(ConfigError, match=r"does not broadcast to \[21, 64\]"):
        gqa.logits(ids, edits={"embed": np.zeros(3)})
    with pytest.raises(ConfigError, match=r"\[hidden\] vectors|does not broadcast"):
        gqa.generate(ids, max_new_tokens=2, edits={"embed": np.zeros((21, 64))})


def test_a_zero_edit_changes_nothing(gqa, ids):
    plain = gqa.activations(ids, ["logits"])["logits"]
    zero = gqa.logits(ids, edits={"layers.0.resid_post": np.zeros(gqa.config.hidden_size)})
    np.testing.assert_array_equal(zero, plain)  # same graph, x + 0 == x


def test_patching_the_residual_reproduces_the_other_prompt(gqa, ids):
    other = np.random.default_rng(5).integers(3, gqa.config.vocab_size, len(ids)).tolist()
    donor = gqa.activations(other, ["layers.0.resid_post", "logits"])
    patch = jnp.asarray(donor["layers.0.resid_post"])
    patched = gqa.logits(ids, edits={"layers.0.resid_post": lambda x, pos: patch})
    # everything after layer 0 reads only the residual stream: the donor's logits
    assert_logits_close(patched, donor["logits"], gqa.config)
    assert np.abs(patched - gqa.logits(ids)).max() > 0.1


def test_edit_values_do_not_recompile(gqa, ids):
    gqa.logits(ids, edits={"layers.1.attn_out": np.ones(64)})
    gqa.generate(ids, max_new_tokens=3, edits={"layers.1.attn_out": np.ones(64)})
    with count_traces() as traces:
        a = gqa.logits(ids, edits={"layers.1.attn_out": np.full(64, 2.0)})
        gqa.generate(ids, max_new_tokens=3, edits={"layers.1.attn_out": np.full(64, -3.0)})
    assert traces == []
    assert np.abs(a - gqa.logits(ids)).max() > 1e-3


def test_steering_changes_greedy_text_and_zero_does_not(smollm2_model):
    m, prompt = smollm2_model, "My favourite food is"
    greedy = Sampler.greedy()
    base = m.generate(prompt, sampler=greedy, max_new_tokens=12)
    zero = m.generate(
        prompt, sampler=greedy, max_new_tokens=12, edits={"layers.10.resid_post": np.zeros(576)}
    )
    acts = m.activations(m.tokenizer.encode(" the ocean, the sea, waves"), ["layers.10.resid_post"])
    direction = acts["layers.10.resid_post"].mean(0)
    steered = m.generate(
        prompt, sampler=greedy, max_new_tokens=12, edits={"layers.10.resid_post": 4 * direction}
    )
    assert zero.tokens == base.tokens
    assert steered.tokens != base.tokens


def test_forward_equals_model_logits(gqa, ids):
    got = jax.jit(phijax.forward)(gqa.params, jnp.asarray(ids))
    # m.logits pads the prompt to a bucket: another kernel shape, same math
    assert_logits_close(got, gqa.logits(ids), gqa.config)


def test_vmap_of_forward_matches_row_by_row(gqa):
    rows = np.random.default_rng(2).integers(3, gqa.config.vocab_size, (3, 11))
    together = jax.jit(jax.vmap(phijax.forward, in_axes=(None, 0)))(gqa.params, jnp.asarray(rows))
    for r in range(3):
        assert_logits_close(
            together[r], phijax.forward(gqa.params, jnp.asarray(rows[r])), gqa.config
        )


def test_grad_wrt_embeddings_matches_finite_differences(gqa, ids):
    target = 17

    def logprob(e):
        return jax.nn.log_softmax(phijax.forward(gqa.params, embeds=e)[-1])[target]

    e = gqa.embed(ids)
    grad = jax.jit(jax.grad(logprob))(e)
    f = jax.jit(logprob)
    h = 2e-2

    def slope(u, step):  # central difference along u
        return float(f(e + step * u) - f(e - step * u)) / (2 * step)

    # Richardson's (4·D(h) - D(2h)) / 3 leaves O(h^4) truncation (~1e-7 here). Rounding: two
    # f32 log-probs differ by at most 2·f32_atol (a logit's bound, and the log-sum-exp's), so
    # D(h) is off by f32_atol/h, D(2h) by half that, the estimate by 1.5·f32_atol/h: 8.3e-4
    # (measured: at most 1.1e-5; the old rtol 0.02 allowed 4e-3 to 1.4e-2).
    atol = 1.5 * f32_atol(gqa.config, float(np.ptp(phijax.forward(gqa.params, embeds=e)))) / h
    rng = np.random.default_rng(3)
    for _ in range(3):
        u = jnp.asarray(rng.standard_normal(e.shape).astype(np.float32))
        u = u / jnp.linalg.norm(u) * jnp.linalg.norm(e)
        numeric = (4 * slope(u, h) - slope(u, 2 * h)) / 3
        np.testing.assert_allclose(float(jnp.vdot(grad, u)), numeric, atol=atol, rtol=0)


def test_grad_wrt_params_has_the_weights_structure(gqa, ids):
    grads = jax.grad(lambda p: phijax.forward(p, jnp.asarray(ids))[-1, 5])(gqa.params)
    assert jax.tree.structure(grads) == jax.tree.structure(gqa.params)
    assert float(jnp.abs(grads.layers[0].qkv[...]).max()) > 0


def test_bf16_embedding_rows_and_their_gradient_equal_a_plain_gather():
    """``take_rows`` gathers 16-bit words (XLA:CPU would copy the whole table to f32); its
    values and its gradient (a scatter-add into the looked-up rows, a repeated id summed)
    equal jnp.take's exactly: every value and sum here is a small integer, exact in bf16."""
    table = jnp.arange(24.0, dtype=jnp.bfloat16).reshape(6, 4)
    ids = jnp.array([[4, 1], [1, 0]])
    np.testing.assert_array_equal(take_rows(table, ids), jnp.take(table, ids, axis=0))
    weights = jnp.arange(16.0, dtype=jnp.bfloat16).reshape(2, 2, 4)

    def loss(take):
        return lambda t: jnp.sum(take(t, ids).astype(jnp.float32) * weights)

    ours = jax.grad(loss(take_rows))(table)
    assert ours.dtype == jnp.bfloat16 and float(jnp.abs(ours[1]).max()) > 0
    np.testing.assert_array_equal(ours, jax.grad(loss(lambda t, i: jnp.take(t, i, axis=0)))(table))


def test_params_are_exactly_the_weights(gqa):
    leaves = jax.tree.leaves(gqa.params)
    c = gqa.config
    per_layer = sum(np.prod(s) for s in phijax.model.phi3.layer_shapes(c).values())
    head = 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    expected = c.vocab_size * c.hidden_size + head + c.hidden_size + c.num_layers * per_layer
    assert sum(x.size for x in leaves) == expected


@pytest.mark.parametrize("variant", ["gqa", "partial_rotary_tied", "longrope_long"])
def test_stacked_and_layers_layouts_give_equal_logits(variant):
    path, ids = FIXTURES / f"{variant}.gguf", list(range(3, 40))
    layers = phijax.load(path, progress=False, layout="layers")
    stacked = phijax.load(path, progress=False, layout="stacked")
    np.testing.assert_array_equal(stacked.logits(ids), layers.logits(ids))
    np.testing.assert_array_equal(
        stacked.activations(ids, ["layers.1.mlp_out"])["layers.1.mlp_out"],
        layers.activations(ids, ["layers.1.mlp_out"])["layers.1.mlp_out"],
    )
    g = Sampler(temperature=0.8)
    assert (
        stacked.generate(ids, sampler=g, max_new_tokens=8).tokens
        == layers.generate(ids, sampler=g, max_new_tokens=8).tokens
    )


def test_function_edits_see_matching_positions(gqa, ids):
    """A function edit gets one sequence's values and their positions, row for row, in
    prefill (where only the last position reaches the head) and in decode."""
    seen = []

    def fn(x, pos):
        seen.append((x.shape[0], pos.shape[0]))
        return x

    gqa.generate(ids, max_new_tokens=3, edits={"final": fn, "logits": fn, "layers.0.attn_out": fn})
    assert seen and all(a == b for a, b in seen)
