"""Batched, ragged research calls: one padded forward for many sequences, new weights
without recompiling, the logit lens's unembed, and clear errors for bad inputs."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phijax
from phijax import Sampler, kernels, steps
from phijax.errors import ConfigError

from numerics import assert_logits_close, f32_atol
from tracing import count_traces

FIXTURES = Path(__file__).parent.parent / "fixtures" / "model"
DOCS = Path(__file__).parent.parent.parent / "docs" / "research.md"
GREEDY = Sampler.greedy()


@pytest.fixture(scope="module")
def gqa():
    return phijax.load(FIXTURES / "gqa.gguf", progress=False)


@pytest.fixture(scope="module")
def rows(gqa):
    """Ragged id rows: two share the 16 bucket, one each in 32 and 64."""
    rng = np.random.default_rng(0)
    return [rng.integers(3, gqa.config.vocab_size, n).tolist() for n in (5, 21, 9, 40)]


def assert_close(got, want, config, err_msg=""):
    """Equal up to f32 summation order (another batch or padded shape is another kernel):
    the error model of tests/numerics.py, scaled to the value's range."""
    want = np.asarray(want)
    atol = f32_atol(config, float(np.ptp(want)))
    np.testing.assert_allclose(np.asarray(got), want, atol=atol, rtol=0, err_msg=err_msg)


def sentences(n: int) -> list[str]:
    """``n`` short distinct sentences of 4 to about 20 tokens."""
    subjects = ["The cat", "A river", "My neighbour", "The old clock", "Every student"]
    verbs = ["sleeps", "runs quickly through the valley", "sings", "forgets the answer"]
    tails = ["", " at night", " because the weather was cold and grey", " again and again"]
    return [f"{subjects[i % 5]} {verbs[i // 5 % 4]}{tails[i // 20 % 4]} ({i})." for i in range(n)]


def spy_activations(monkeypatch) -> list[tuple[int, int]]:
    """Records the (batch, length) of each call of the research step."""
    calls = []
    step = steps.activations

    def spy(params, tokens, *args, **kwargs):
        calls.append(tuple(tokens.shape))
        return step(params, tokens, *args, **kwargs)

    monkeypatch.setattr(steps, "activations", spy)
    return calls


def check_many_strings(m, texts, monkeypatch):
    name = "layers.15.resid_post"
    calls = spy_activations(monkeypatch)
    together = m.activations(texts, names=[name])
    lengths = [len(m.tokenizer.encode(t)) for t in texts]
    buckets = [-(-n // 16) * 16 if n <= 64 else phijax.batching.bucket(n) for n in lengths]
    assert len(together) == len(texts)
    # one call, batched: one step per length bucket (multiples of 16 up to 64) and batch of up
    # to ROW_CAP (64) rows, each batch's rows padded to a power of two
    cap, expected = phijax.batching.ROW_CAP, []
    for b in set(buckets):
        full, rest = divmod(buckets.count(b), cap)
        expected += [(cap, b)] * full + ([(phijax.batching.bucket(rest, 1), b)] if rest else [])
    assert sorted(calls) == sorted(expected)
    for text, got in zip(texts, together, strict=True):
        want = m.activations(text, [name])
        assert list(got) == [name]
        assert got[name].shape == want[name].shape
        assert_close(got[name], want[name], m.config, err_msg=text)


def test_activations_of_many_strings_are_one_batched_call(smollm2_model, monkeypatch):
    check_many_strings(smollm2_model, sentences(24), monkeypatch)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_activations_of_200_strings_equal_single_calls(smollm2_model, monkeypatch):
    check_many_strings(smollm2_model, sentences(200), monkeypatch)


def test_forward_on_a_ragged_batch_equals_per_row_calls(gqa, rows):
    singles = [phijax.forward(gqa.params, jnp.asarray(r)) for r in rows]
    ragged = jax.jit(phijax.forward)(gqa.params, rows)  # padded to a bucket for us
    tokens, lengths = phijax.pad(rows)
    assert ragged.shape == (4, 64, gqa.config.vocab_size) and lengths.tolist() == [5, 21, 9, 40]
    padded = jax.jit(phijax.forward)(gqa.params, tokens, lengths=lengths)
    for i, (r, want) in enumerate(zip(rows, singles, strict=True)):
        assert_logits_close(ragged[i, : len(r)], want, gqa.config)
        assert_logits_close(padded[i, : len(r)], want, gqa.config)
    # padding is masked: other padding tokens change no valid position, bit for bit
    other = jnp.where(jnp.arange(64) < lengths[:, None], tokens, 7)
    again = jax.jit(phijax.forward)(gqa.params, other, lengths=lengths)
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(again[i, : len(r)], padded[i, : len(r)])


def test_forward_captures_and_edits_a_batch_per_row(gqa, rows):
    tokens, lengths = phijax.pad(rows)
    hidden = gqa.config.hidden_size
    vectors = np.random.default_rng(1).standard_normal((4, 1, hidden)).astype(np.float32)
    names = ("layers.0.attn_weights", "layers.1.resid_post")
    run = jax.jit(phijax.forward, static_argnames="capture")
    logits, caps = run(
        gqa.params, tokens, lengths=lengths, capture=names, edits={"layers.0.mlp_out": vectors}
    )
    assert caps["layers.0.attn_weights"].shape == (4, gqa.config.num_heads, 64, 64)
    assert caps["layers.1.resid_post"].shape == (4, 64, hidden)
    for i, r in enumerate(rows):
        one, one_caps = run(
            gqa.params, jnp.asarray(r), capture=names, edits={"layers.0.mlp_out": vectors[i, 0]}
        )
        n = len(r)
        assert_logits_close(logits[i, :n], one, gqa.config)
        assert_close(
            caps["layers.1.resid_post"][i, :n], one_caps["layers.1.resid_post"], gqa.config
        )
        weights = caps["layers.0.attn_weights"][i, :, :n]
        assert_close(weights[..., :n], one_caps["layers.0.attn_weights"], gqa.config)
        assert float(jnp.abs(weights[..., n:]).max()) == 0.0  # no weight on padding


def test_vmap_of_grad_over_a_padded_batch_equals_per_row_gradients(gqa, rows):
    target = 11

    def logprob(embeds, length):  # one row: the target's log-prob after its last token
        logits = phijax.forward(gqa.params, embeds=embeds, lengths=length)
        return jax.nn.log_softmax(logits[length - 1])[target]

    embeds, lengths = gqa.embed(rows, padded=True)
    grads = jax.jit(jax.vmap(jax.grad(logprob)))(embeds, lengths)
    solo = jax.jit(
        jax.grad(lambda e: jax.nn.log_softmax(phijax.forward(gqa.params, embeds=e)[-1])[target])
    )
    for i, r in enumerate(rows):
        n = len(r)
        want = solo(gqa.embed(r))
        assert_close(grads[i, :n], want, gqa.config)
        assert float(jnp.abs(grads[i, n:]).max()) == 0.0  # padding does not reach the row


def test_model_methods_take_strings_ids_and_lists(gqa, rows):
    text = "a short text"
    ids = gqa.tokenizer.encode(text)
    np.testing.assert_array_equal(gqa.logits(text), gqa.logits(ids))
    assert isinstance(gqa.logits(ids), np.ndarray) and gqa.logits(ids).shape == (len(ids), 320)
    mixed = gqa.logits([text, rows[0]])
    assert isinstance(mixed, list) and [x.shape[0] for x in mixed] == [len(ids), len(rows[0])]
    acts = gqa.activations(rows, "layers.1.mlp_out")
    assert [a["layers.1.mlp_out"].shape for a in acts] == [(len(r), 64) for r in rows]
    padded = gqa.logits(rows, padded=True)
    assert padded.values.shape == (4, 40, 320) and padded.lengths.tolist() == [5, 21, 9, 40]
    for i, (r, row) in enumerate(zip(rows, gqa.logits(rows), strict=True)):
        np.testing.assert_array_equal(padded.values[i, : len(r)], row)
        assert not padded.values[i, len(r) :].any()
    p = gqa.activations(rows, ["layers.0.attn_weights"], padded=True)
    assert p.values["layers.0.attn_weights"].shape == (4, 4, 40, 40)
    embeds = gqa.embed(rows)
    assert [e.shape for e in embeds] == [(len(r), 64) for r in rows]
    scores = gqa.score([text, rows[0]], [" more", rows[1][:3]])  # strings and ids, paired
    assert len(scores) == 2 and scores[0].size >= 1 and scores[1].shape == (3,)


def test_list_calls_compile_once_per_bucket(gqa):
    rng = np.random.default_rng(4)

    def batch(lengths):
        return [rng.integers(3, 320, n).tolist() for n in lengths]

    gqa.logits(batch((3, 9, 14)))
    gqa.activations(batch((3, 9, 14)), ["layers.0.resid_post"])
    with count_traces() as traces:
        gqa.logits(batch((16, 2, 7, 11)))  # the same length bucket (16) and batch bucket (4)
        gqa.activations(batch((6, 6, 1)), ["layers.0.resid_post"])
    assert traces == []


def test_function_edits_see_each_row_at_its_length(gqa, rows):
    seen = set()

    def fn(x, pos):
        seen.add((x.shape[0], pos.shape[0]))
        return x

    edited = gqa.logits(rows, edits={"layers.1.attn_out": fn})
    assert seen == {(len(r), len(r)) for r in rows}
    for r, got in zip(rows, edited, strict=True):
        assert_logits_close(got, gqa.logits(r), gqa.config)


def test_unembed_is_the_final_norm_and_head(gqa, rows):
    acts = gqa.activations(rows[1], ["layers.0.resid_post", "layers.1.resid_post", "logits"])
    assert_logits_close(gqa.unembed(acts["layers.1.resid_post"]), acts["logits"], gqa.config)
    lens = gqa.unembed(np.stack([acts["layers.0.resid_post"], acts["layers.1.resid_post"]]))
    assert lens.shape == (2, len(rows[1]), 320)
    np.testing.assert_array_equal(lens[1], gqa.unembed(acts["layers.1.resid_post"]))
    with pytest.raises(ConfigError, match=r"give \[\.\.\., 64\]"):
        gqa.unembed(np.zeros((3, 65)))


@pytest.fixture(scope="module")
def plain_and_q4():
    """Two fixture files of one config with different weights (compiled steps are shared)."""
    a = phijax.load(FIXTURES / "plain.gguf", progress=False, quantized=False)
    b = phijax.load(FIXTURES / "q4_0.gguf", progress=False, quantized=False)  # dense: one tree
    assert a.config == b.config
    return a, b


def test_with_params_runs_new_weights_without_compiling(plain_and_q4, rows):
    a, b = plain_and_q4
    prompt = rows[1]
    before = a.generate(prompt, sampler=GREEDY, max_new_tokens=12)
    a.logits(rows)
    with count_traces() as traces:
        swapped = a.with_params(b.params)
        generated = swapped.generate(prompt, sampler=GREEDY, max_new_tokens=12)
        logits = swapped.logits(rows)
    assert traces == []
    assert generated.tokens == b.generate(prompt, sampler=GREEDY, max_new_tokens=12).tokens
    assert generated.tokens != before.tokens
    for got, want in zip(logits, b.logits(rows), strict=True):
        np.testing.assert_array_equal(got, want)
    assert a.generate(prompt, sampler=GREEDY, max_new_tokens=12).tokens == before.tokens
    # values changed by a tree map keep the structure, shapes and dtypes: still no compile
    scaled = jax.tree.map(lambda w: w * 1.5, a.params)
    with count_traces() as traces:
        a.with_params(scaled).generate(prompt, sampler=GREEDY, max_new_tokens=12)
    assert traces == []


def test_with_params_rejects_another_tree(plain_and_q4, gqa):
    a, _ = plain_and_q4
    with pytest.raises(ConfigError, match="another structure"):
        a.with_params(gqa.params)  # kv heads differ: another config
    with pytest.raises(ConfigError, match="another structure"):
        a.with_params({"embed": a.params.embed[...]})
    half = jax.tree.map(lambda w: w.astype(jnp.bfloat16), a.params)
    with pytest.raises(ConfigError, match=r"leaf \.embed\.value is bfloat16"):
        a.with_params(half)


def test_quantized_adapters_and_new_norms(plain_and_q4, rows):
    """Packed (QuantArray) weights stay frozen; gradients flow to what is float: an adapter
    closed over by a function edit, and the norms; new norm values reuse compiled steps."""
    f32 = plain_and_q4[1]
    packed = phijax.load(FIXTURES / "q4_0.gguf", progress=False, quantized=True)
    r = jnp.asarray(rows[1])
    adapter = 0.1 * jax.random.normal(jax.random.key(0), (64, 4))

    def loss(params, a):
        def fn(x, pos):
            return x + (x @ a) @ a.T

        logits = phijax.forward(params, r, edits={"layers.0.mlp_out": fn})
        return jax.nn.log_softmax(logits[-1])[5]

    grads = [jax.jit(jax.grad(loss, argnums=1))(m.params, adapter) for m in (packed, f32)]
    assert float(jnp.abs(grads[0]).max()) > 0
    assert_close(*grads, packed.config)
    packed.generate(rows[0], sampler=GREEDY, max_new_tokens=4)
    norms = jax.tree.map(
        lambda w: w * 2 if w.dtype == jnp.float32 and w.ndim == 1 else w, packed.params
    )
    with count_traces() as traces:
        out = packed.with_params(norms).generate(rows[0], sampler=GREEDY, max_new_tokens=4)
    assert traces == [] and len(out.tokens[0]) == 4


def test_the_reported_raw_errors_now_work(gqa, rows):
    """Issue 22's six calls that raised raw TypeError/ValueError/chex/Concretization errors."""
    assert len(gqa.activations(rows, ["embed"])) == 4  # a list (was TypeError)
    assert gqa.activations("some text", ["embed"])["embed"].shape[1] == 64  # a string (ValueError)
    tokens, lengths = phijax.pad(rows[:2], length=21)
    assert phijax.forward(gqa.params, tokens, lengths=lengths).shape == (2, 21, 320)  # 2-D (chex)
    assert phijax.forward(gqa.params, rows[0]).shape == (5, 320)  # a Python list (chex rank 0)
    assert gqa.embed(tokens).shape == (2, 21, 64)  # [batch, seq] (rejected)
    assert jax.vmap(gqa.embed)(tokens).shape == (2, 21, 64)  # vmap (ConcretizationTypeError)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda m: phijax.forward(m.params, jnp.zeros((2, 3, 4), jnp.int32)),
            r"tokens: got int32 \[2, 3, 4\]; give int ids \[seq\] or \[batch, seq\]",
        ),
        (
            lambda m: phijax.forward(m.params, jnp.zeros(5)),
            r"tokens: got float32 \[5\]; give int ids",
        ),
        (
            lambda m: phijax.forward(m.params, [1, "a"]),
            r"tokens: got \[1, 'a'\], not numbers; give int ids",
        ),
        (lambda m: phijax.forward(m.params, [3, 999]), r"id 999 is outside the vocabulary"),
        (
            lambda m: phijax.forward(m.params, embeds=jnp.zeros((5, 63))),
            r"embeds: got float32 \[5, 63\]; give floats \[seq, 64\]",
        ),
        (lambda m: phijax.forward(m.params), "exactly one of tokens"),
        (
            lambda m: phijax.forward(m.params, jnp.ones((2, 8), jnp.int32), lengths=jnp.array([8])),
            r"lengths: got int32 \[1\]; give ints of shape \[2\]",
        ),
        (
            lambda m: phijax.forward(m.params, jnp.ones((2, 8), jnp.int32), lengths=[8, 9]),
            r"lengths: 9 is outside 1\.\.8",
        ),
        (lambda m: phijax.forward(m.params, [[1, 2], [3]], lengths=[2, 1]), "not a ragged list"),
        (
            lambda m: phijax.forward(
                m.params, jnp.ones((2, 8), jnp.int32), edits={"embed": jnp.ones((3, 1, 64))}
            ),
            r"per row \[batch, 1 or seq, hidden\]",
        ),
        (lambda m: phijax.forward(m.params, [1, 2], capture=["layers.9.mlp_out"]), r"i < 2"),
        (lambda m: jax.jit(phijax.forward)(m.params, jnp.zeros((4,), jnp.float32)), "give int ids"),
        (lambda m: jax.vmap(m.logits)(jnp.ones((2, 4), jnp.int32)), r"use phijax\.forward"),
        (
            lambda m: m.activations(3.5),
            r"activations\(inputs\): got 3\.5 \(float\); give a string, token ids",
        ),
        (
            lambda m: m.activations([[1, 2], [3, "x"]]),
            r"activations\(inputs\)\[1\]: got \[3, 'x'\]",
        ),
        (lambda m: m.logits([1, [2, 3]]), "mixes token ids and sequences"),
        (lambda m: m.logits([]), "is empty"),
        (
            lambda m: m.embed(np.zeros((2, 3))),
            r"embed\(inputs\)\[0\]: got float64 values of shape \[3\]",
        ),
        (lambda m: m.score(["a", "b"], ["c"]), "2 prompts but 1 continuations"),
        (lambda m: m.score("a", [""]), "give a non-empty continuation"),
        (lambda m: m.generate([[1, 2.5]]), r"prompts\[0\]: got float64 values"),
        (lambda m: phijax.pad([]), "non-empty list of rows"),
    ],
)
def test_bad_inputs_are_config_errors_naming_the_fix(gqa, call, match):
    with pytest.raises(ConfigError, match=match):
        call(gqa)


def _tree_rows(params) -> list[str]:
    """The parameter tree's leaves as table cells, layers collapsed to ``{i}``."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = re.sub(r"\.layers\[\d+\]", ".layers[{i}]", jax.tree_util.keystr(path))
        cells = f"| `{key}` | `{list(leaf.shape)}` | {leaf.dtype.name} |"
        if cells not in out:
            out.append(cells)
    return out


def test_the_documented_parameter_trees_are_smollm2s(smollm2_model, smollm2_gguf):
    """docs/research.md's tables are the real trees (f32 in both layouts, and quantized),
    leaf for leaf, in the order ``tree_flatten_with_path`` gives them."""
    docs = DOCS.read_text()
    packed = phijax.load(smollm2_gguf, progress=False, quantized=True, layout="stacked")
    stacked = phijax.load(smollm2_gguf, progress=False, layout="stacked", quantized=False)
    for params in (smollm2_model.params, stacked.params, packed.params):
        table = "\n".join(_tree_rows(params))
        assert table in docs, table


@pytest.mark.skipif(kernels.chosen() is None, reason="the kernel reads stacks in place")
def test_stacked_layers_share_one_step_read_in_place(smollm2_gguf, monkeypatch):
    """Packed SmolLM2 stacked on the kernel: research calls run the shared per-layer step (the
    stacks passed whole with a traced index: one program for every layer, not the whole pass
    unrolled), and give the ``layers`` layout's values: the same kernel sums; the norms, rope
    and attention may fuse differently, so f32 rounding over the depth bounds them
    (numerics.f32_atol's model)."""
    stacked = phijax.load(smollm2_gguf, progress=False, quantized=True, layout="stacked")
    layers = phijax.load(smollm2_gguf, progress=False, quantized=True, layout="layers")
    assert stacked.params.backend.reads_stacks_in_place
    calls = []
    layer_step = steps._layer_step
    monkeypatch.setattr(
        steps, "_layer_step", lambda *a, **k: calls.append(a) or layer_step(*a, **k)
    )
    monkeypatch.setattr(steps, "whole_pass", None)  # not reached
    prompt = list(range(5, 45))
    names = ["layers.3.resid_post", "layers.17.mlp_out", "layers.29.resid_post"]
    got = stacked.activations(prompt, names)
    assert len(calls) == stacked.config.num_layers
    want = layers.activations(prompt, names)
    for name in names:
        atol = f32_atol(stacked.config, float(np.ptp(want[name])))
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=atol, err_msg=name)
