"""quantized=True: packed weights (QuantArray) decoded inside the steps, against the f32 mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import phijax
from phijax import Sampler, kernels
from phijax.model.quant import QuantArray

from numerics import assert_logits_close, f32_atol
from tracing import step_calls

FIXTURES = Path(__file__).parent.parent / "fixtures" / "model"
GREEDY = Sampler.greedy()


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
    f32 = phijax.load(FIXTURES / f"{variant}.gguf", progress=False, layout=layout)
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
    assert np.abs(a - b).max() <= 2e-3 * np.ptp(b)  # the bound; same weights
    assert_logits_close(a, b, smollm2_model.config)  # only the order of f32 sums differs
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
    assert np.abs(a - b).max() <= 2e-3 * np.ptp(b)  # the bound; same weights, scan


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
            calls = step.as_text().count(f'custom_call_target="{kernels.TARGET}"')
            layers = 4 * smollm2_model.config.num_layers  # qkv, o_proj, gate_up, down
            want = (layers if name == "decode" else 0) + 1  # + the head on the last position
            assert calls == (want if kernels.available() else 0), name


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
