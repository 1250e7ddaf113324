"""quantized=True: packed weights (QuantArray) decoded inside the steps, against the f32 mode."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from gguf import GGMLQuantizationType as QT

import phijax
from phijax import Sampler, backend, kernels
from phijax.gguf.synthetic import PHI3_MINI_TINY, write_phi3
from phijax.quant import QuantArray

from numerics import assert_logits_close, f32_atol
from tracing import step_calls

FIXTURES = Path(__file__).parent.parent / "fixtures" / "model"
GREEDY = Sampler.greedy()
BF16_U = 2.0**-8  # bf16's unit roundoff: 8 significant bits


def kernel_on() -> bool:
    """Whether ``linear`` uses the CPU kernel here. Where a C++ compiler is on the PATH,
    phijax's install builds it (CI installs and tests on one machine, so a compiler now stands
    for one at install time), so there it must run unless PHIJAX_CPU_KERNEL turns it off."""
    compiler = sys.platform != "win32" and any(map(shutil.which, ("c++", "g++", "clang++")))
    if compiler and kernels.requested() != "off":
        assert kernels.available(), f"the CPU kernel must run here: {kernels.status()}"
    return kernels.available()


def kernel_calls(compiled) -> int:
    """Foreign calls to any build of the CPU kernel in a compiled step."""
    return compiled.as_text().count(f'custom_call_target="{kernels.TARGET}_')


@pytest.fixture(scope="module")
def smollm2_quantized(smollm2_gguf):
    return phijax.load(smollm2_gguf, progress=False, quantized=True)


@pytest.mark.parametrize("variant", ["q4_0", "q8_0"])
@pytest.mark.parametrize("layout", ["layers", "stacked"])
def test_tiny_quantized_matches_f32_and_hf(variant, layout):
    """The re-layout is lossless: the same weights, so the logits are the f32 mode's up to
    summation order (the CPU kernel sums in its own order; the f32 error model bounds it),
    and HF parity holds with the f32 mode's tolerance."""
    ref = np.load(FIXTURES / f"{variant}.npz")
    f32 = phijax.load(FIXTURES / f"{variant}.gguf", progress=False, layout=layout, quantized=False)
    packed = phijax.load(
        FIXTURES / f"{variant}.gguf", progress=False, layout=layout, quantized=True
    )
    layer = packed.params.layer(0)
    assert isinstance(layer["qkv"], QuantArray) and layer["qkv"].values.dtype == jnp.int8
    ids = ref["ids"].tolist()
    assert_logits_close(packed.logits(ids), f32.logits(ids), packed.config)
    assert_logits_close(packed.logits(ids), ref["logits"], packed.config)


def test_smollm2_quantized_matches_f32(smollm2_model, smollm2_quantized):
    ids = smollm2_model.tokenizer.encode("The quick brown fox jumps over the lazy dog. It was")
    a, b = smollm2_quantized.logits(ids), smollm2_model.logits(ids)
    assert_logits_close(a, b, smollm2_model.config)  # same weights: only f32 sum order differs
    prompts = ["The capital of France is", "def fib(n):"]
    kw = {"sampler": GREEDY, "max_new_tokens": 24}
    assert (
        smollm2_quantized.generate(prompts, **kw).tokens
        == smollm2_model.generate(prompts, **kw).tokens
    )


def test_smollm2_quantized_stacked_keeps_q4_codes_two_per_byte(smollm2_gguf, smollm2_model):
    """The stacked layout (accelerators' default) packs a parameter's 4-bit codes when every
    layer's tensor is Q4_1 (SmolLM2 mixes Q4_1 and Q8_0), and decodes the same weights."""
    stacked = phijax.load(smollm2_gguf, progress=False, layout="stacked", quantized=True)
    kinds = {name: getattr(stacked.params, name)[...] for name in ("qkv", "gate_up", "down")}
    assert any(q.nibbles for q in kinds.values()), {n: q.values.dtype for n, q in kinds.items()}
    ids = smollm2_model.tokenizer.encode("The quick brown fox jumps over the lazy dog. It was")
    a, b = stacked.logits(ids), smollm2_model.logits(ids)
    assert_logits_close(a, b, smollm2_model.config)  # same weights under a scan: sum order only


def test_smollm2_quantized_memory(smollm2_quantized, smollm2_model):
    packed = sum(x.nbytes for x in jax.tree.leaves(smollm2_quantized.params))
    dense = sum(x.nbytes for x in jax.tree.leaves(smollm2_model.params))
    n_weights = dense // 4
    assert packed <= 1.5 * n_weights, packed / n_weights  # bytes per weight
    assert packed <= 0.35 * dense


def test_packed_weights_are_decoded_where_used(smollm2_quantized, smollm2_model):
    """XLA must neither decode every packed matrix up front nor hoist the decoding out of the
    decode loop: either would hold a dense copy of the model (measured before the fix: the
    whole f32 model in temporaries; Phi-3-mini peaked at 20.7 GB for 4.8 GB of weights). Now
    the largest temporary is one decoded matrix (SmolLM2's tied 49152 x 576 head, 0.21 of it).
    Two prompts of a whole prefill chunk are more rows than the CPU kernel takes, so prefill's
    layers run the pure-JAX path and decode's the kernel (where it is built): both are checked."""
    dense = sum(x.nbytes for x in jax.tree.leaves(smollm2_model.params))
    prompt = " ".join(["word"] * kernels.MAX_ROWS)
    with step_calls("prefill", "decode") as compiled:
        smollm2_quantized.generate([prompt, prompt], max_new_tokens=3, sampler=GREEDY)
        for name in ("prefill", "decode"):
            step = compiled(name)
            temp = step.memory_analysis().temp_size_in_bytes
            assert temp < 0.4 * dense, (
                f"{name}: temporaries are {temp / dense:.2f} of the f32 weights"
            )
            # qkv, o_proj, gate_up, down in each layer (once, in a scan's body, when stacked)
            per_layer = 4 * _unrolled(smollm2_quantized.params)
            want = (per_layer if name == "decode" else 0) + 1  # + the head on the last position
            assert kernel_calls(step) == (want if kernel_on() else 0), name


@pytest.mark.parametrize("mode", ["bf16", "quantized"])
def test_weights_of_any_width(tiny_config, tmp_path, mode: str):
    """Hidden 48: q|k|v, o_proj, gate|up and the head have rows 48 wide, which the kernel does
    not take (it reads 32 columns a step), so they take XLA's products; down's rows are 96
    wide (packed: Q8_0), so it runs on the kernel, once per layer of each decode step. Before,
    a bf16 load crashed with INVALID_ARGUMENT. The logits are f32's: the same weights when
    packed (f32 rounding), and within bf16's error model otherwise: sqrt(8·L + 2) roundings of
    at most 2^-8 (weights, norm outputs, activations, residual adds: the model in
    tests/model/test_accelerator_defaults.py)."""
    config = dataclasses.replace(tiny_config, hidden_size=48, num_heads=3, num_kv_heads=1)
    path = tmp_path / "narrow.gguf"
    write_phi3(path, config, qtypes={"ffn_down": QT.Q8_0})
    f32 = phijax.load(path, progress=False, quantized=False)
    kw = {"dtype": "bfloat16"} if mode == "bf16" else {"quantized": True}
    model = phijax.load(path, progress=False, **kw)
    ids = list(range(3, 40))
    want = f32.logits(ids)
    if mode == "bf16":
        atol = math.sqrt(8 * config.num_layers + 2) * BF16_U * float(np.ptp(want))
        np.testing.assert_allclose(model.logits(ids), want, rtol=0, atol=atol)
    else:
        assert isinstance(model.params.layer(0)["down"], QuantArray)
        assert_logits_close(model.logits(ids), want, config)
    # bf16 pads a small decode batch as this machine measured fastest (phijax.decode_padding):
    # on a model this small the timings are near-ties, and a plan of 8 rows for one sequence
    # passes bf16's kernel limit (4), so XLA multiplies every matrix of that step
    rows = model.decode_batch(1)
    on = kernel_on() and rows <= kernels.row_limit(model.params.layer(0)["down"])
    with step_calls("decode") as compiled:
        model.generate(ids, max_new_tokens=3, sampler=GREEDY)
        assert kernel_calls(compiled("decode")) == (_unrolled(model.params) if on else 0), rows


@pytest.mark.parametrize("layout", ["layers", "stacked"])
def test_q4_k_takes_the_interleaved_order_where_the_policy_says(tmp_path, layout, monkeypatch):
    """The default packed load keeps Q4_K and Q5_K matrices in the kernel's interleaved order
    where ``Backend.interleaves`` says ``"f32"`` (the AVX-512 and AVX2 builds: ``f32_interleaved.h``),
    Q6_K's too where ``Backend.f32_interleaved`` names it (AVX2: 6-bit codes), and every other
    matrix as before: Q8_0 in row order, in both layouts. Its logits are
    the row order's but for the order of f32 sums: both are the same weights' products, so
    both lie about as near the dense f32 load's (XLA's sums): within twice the row order's
    distance, a margin for the random walk of rounding errors (measured 1.27x on the AVX-512
    builds, whose sums are deterministic; without the Q5_K part, 0.6x at 2 and 4 layers).
    ``numerics.f32_atol`` is too tight for these random weights in either order."""
    config = PHI3_MINI_TINY.replace(
        hidden_size=512, intermediate_size=1024, num_heads=8, num_kv_heads=8, vocab_size=300,
        num_layers=2,
    )  # fmt: skip
    path = tmp_path / "q4_k.gguf"  # 512 wide: whole groups of 16 sub-blocks of 32
    qtypes = {"attn_qkv": QT.Q5_K, "ffn_down": QT.Q6_K, "token_embd": QT.Q8_0}
    write_phi3(path, config, qtype=QT.Q4_K, qtypes=qtypes)
    ids = list(range(3, 40))
    dense = np.asarray(phijax.load(path, progress=False, quantized=False).logits(ids))
    model = phijax.load(path, progress=False, quantized=True, layout=layout)
    expected = model.backend.interleaves == "f32"
    packed = _packed(model)
    four_bit = [bool(q.interleave) for q in packed if q.nibbles == 64 and q.planes < 2]
    per_layer = 3  # qkv (Q5_K), o_proj, gate|up; and the head
    assert len(four_bit) == (per_layer if layout == "stacked" else per_layer * 2) + 1
    assert four_bit == [expected] * len(four_bit)
    six_bit = [q for q in packed if q.zero == 32]  # ffn_down: Q6_K's codes as 6 bits
    assert len(six_bit) == (QT.Q6_K in model.backend.f32_interleaved) * (
        1 if layout == "stacked" else 2
    )
    assert all(q.interleave == 16 and q.planes == 2 for q in six_bit)
    interleaved = sum(bool(q.interleave) for q in packed)
    assert interleaved == sum(four_bit) + len(six_bit)  # the others: row order
    monkeypatch.setattr(backend.Backend, "interleaves", property(lambda self: None))
    row_order = phijax.load(path, progress=False, quantized=True, layout=layout)
    assert not any(q.interleave for q in _packed(row_order))
    got, want = np.asarray(model.logits(ids)), np.asarray(row_order.logits(ids))
    assert np.abs(got - dense).max() <= 2 * np.abs(want - dense).max()


def _packed(model) -> list[QuantArray]:
    def is_quant(x) -> bool:
        return isinstance(x, QuantArray)

    return [q for q in jax.tree.leaves(nnx.state(model.params), is_leaf=is_quant) if is_quant(q)]


def _unrolled(params) -> int:
    """How many copies of the layer a compiled step holds: each layer, or one scan body."""
    return 1 if params.layout == "stacked" else params.config.num_layers


def test_research_api_in_quantized_mode(smollm2_quantized, smollm2_model):
    """Activations, edits and gradients of the packed model are the f32 model's up to the
    order of f32 sums (same weights): within the f32 error model, scaled to each output."""
    config = smollm2_model.config

    def assert_close(got, want):
        got, want = np.asarray(got), np.asarray(want)
        np.testing.assert_allclose(got, want, rtol=0, atol=f32_atol(config, float(np.ptp(want))))

    ids = smollm2_model.tokenizer.encode("Paris is the capital of")
    got = smollm2_quantized.activations(ids, ["layers.5.mlp_out", "final"])
    want = smollm2_model.activations(ids, ["layers.5.mlp_out", "final"])
    for name in got:
        assert_close(got[name], want[name])
    vec = want["layers.5.mlp_out"].mean(0)
    edited = smollm2_quantized.logits(ids, edits={"layers.5.resid_post": vec})
    assert_close(edited, smollm2_model.logits(ids, edits={"layers.5.resid_post": vec}))

    def logprob(params, e):
        return jax.nn.log_softmax(phijax.forward(params, embeds=e)[-1])[ids[-1]]

    grads = [
        jax.grad(logprob, argnums=1)(m.params, m.embed(ids))
        for m in (smollm2_quantized, smollm2_model)
    ]
    assert_close(*grads)


LOAD_RSS = """
import json, resource, sys, jax, jax.numpy as jnp, phijax
jnp.zeros(1).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = phijax.load(sys.argv[1], progress=False, quantized=sys.argv[2] == "1")
jax.block_until_ready(jax.tree.leaves(m.params))
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024))
"""


@pytest.mark.slow
def test_quantized_load_peak_rss(smollm2_gguf):
    """The load's peak RSS (over the process's JAX baseline): packed vs f32. Measured on
    SmolLM2: 267 MB vs 667 MB (0.40x); weights 165 MB vs 538 MB; the rest is the
    tokenizer and compiled kernels, the same in both modes."""

    def peak(quantized: bool) -> int:
        args = [sys.executable, "-c", LOAD_RSS, str(smollm2_gguf), str(int(quantized))]
        out = subprocess.run(args, capture_output=True, text=True, timeout=240, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    packed, dense = peak(True), peak(False)
    assert packed <= 0.45 * dense, (packed, dense)  # aim 0.4; room for allocator noise
