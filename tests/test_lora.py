"""phijax.lora: adapters train with optax, generate through with_params, save and load exactly."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import phijax
from phijax import lora
from phijax.errors import ConfigError
from phijax.quant import QuantArray

from numerics import assert_logits_close, f32_atol

FIXTURE = Path(__file__).parent / "fixtures" / "model" / "q4_0.gguf"
TARGETS = ["layers.*.o_proj", "layers.1.gate_up"]
STEPS = 5
forward = jax.jit(phijax.forward)  # one compile per tree and shape; eager runs op by op


@pytest.fixture(scope="module")
def f32():
    return phijax.load(FIXTURE, progress=False, quantized=False)


@pytest.fixture(scope="module")
def batch(f32):
    """Four right-padded rows of random ids: ``tokens [4, 16]``, ``lengths [4]``."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(3, f32.config.vocab_size, n).tolist() for n in (12, 9, 16, 7)]
    return phijax.pad(rows, length=16)


def loss(params, tokens, lengths):
    """Mean next-token cross-entropy over the valid positions of a padded batch."""
    logp = jax.nn.log_softmax(phijax.forward(params, tokens, lengths=lengths)[:, :-1])
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    valid = jnp.arange(1, tokens.shape[1]) < lengths[:, None]
    return (nll * valid).sum() / valid.sum()


def train(params, adapters, tokens, lengths, steps=STEPS):
    """``steps`` Adam steps on the adapters (``params`` frozen); the adapters and the loss
    before each step."""
    opt = optax.adam(3e-2)

    @jax.jit
    def step(adapters, state, params):
        value, grads = jax.value_and_grad(lambda ad: loss(lora.apply(params, ad), tokens, lengths))(
            adapters
        )
        updates, state = opt.update(grads, state, adapters)
        return optax.apply_updates(adapters, updates), state, value

    state, losses = opt.init(adapters), []
    for _ in range(steps):
        adapters, state, value = step(adapters, state, params)
        losses.append(float(value))
    return adapters, losses


@pytest.fixture(scope="module")
def trained(f32, batch):
    fresh = lora.init(f32.params, TARGETS, rank=4, key=jax.random.key(0))
    return train(f32.params, fresh, *batch)


def test_training_lowers_the_loss_and_generate_runs_the_adapted_weights(f32, trained):
    adapters, losses = trained
    assert adapters.targets == ("layers.0.o_proj", "layers.1.gate_up", "layers.1.o_proj")
    assert (np.diff(losses) < 0).all(), losses
    adapted = lora.apply(f32.params, adapters)
    prompt = [1, 17, 42, 99, 5]
    out = f32.with_params(adapted).generate(
        prompt, sampler=phijax.Sampler.greedy(), max_new_tokens=8
    )
    # greedy decoding with the pure forward pass, one full pass per token
    ids, want = list(prompt), []
    for _ in range(8):  # each pass pads to 16 tokens: one shape, one compile
        n = len(ids)
        row = jnp.asarray([ids + [0] * (16 - n)])
        last = np.asarray(forward(adapted, row, lengths=jnp.asarray([n])))[0, n - 1]
        top2 = np.sort(last)[-2:]
        # generate sums in another order (KV cache, buckets): a tie within rounding could flip
        assert top2[1] - top2[0] > 2 * f32_atol(f32.config, float(np.ptp(last))), ids
        token = int(last.argmax())
        if token in f32.tokenizer.stop_ids:
            break
        ids.append(token)
        want.append(token)
    assert out.tokens[0] == want
    base = f32.generate(prompt, sampler=phijax.Sampler.greedy(), max_new_tokens=8).tokens[0]
    assert base != want  # the adapters are what changed the tokens


def test_fresh_adapters_change_nothing(f32):
    fresh = lora.init(f32.params, "layers.*.*", rank=2, key=jax.random.key(1))
    assert len(fresh.targets) == 2 * len(lora.MATRICES)
    same = lora.apply(f32.params, fresh)
    for w, v in zip(jax.tree.leaves(f32.params), jax.tree.leaves(same), strict=True):
        np.testing.assert_array_equal(v, w)  # b = 0: W + 0 is W exactly


def test_save_and_load_round_trip_exactly(trained, tmp_path, f32, batch):
    adapters, _ = trained
    path = lora.save(tmp_path / "adapter.npz", adapters)
    back = lora.load(path)
    assert (back.targets, back.rank, back.alpha) == (adapters.targets, 4, adapters.alpha)
    for x, y in zip(jax.tree.leaves(adapters), jax.tree.leaves(back), strict=True):
        assert x.dtype == y.dtype == jnp.float32
        np.testing.assert_array_equal(y, x)
    tokens, lengths = batch
    np.testing.assert_array_equal(
        forward(lora.apply(f32.params, back), tokens, lengths=lengths),
        forward(lora.apply(f32.params, adapters), tokens, lengths=lengths),
    )


def test_stacked_layout_applies_the_same_update(trained, f32, batch):
    stacked = phijax.load(FIXTURE, progress=False, layout="stacked", quantized=False)
    adapters, _ = trained
    tokens, lengths = batch
    got = forward(lora.apply(stacked.params, adapters), tokens, lengths=lengths)
    want = forward(lora.apply(f32.params, adapters), tokens, lengths=lengths)
    assert_logits_close(got, want, f32.config)  # a scan instead of unrolled layers: sum order


def test_quantized_adapters_train_over_frozen_codes(f32, batch):
    """In quantized mode the targeted QuantArrays are decoded inside the pass and only the
    adapters are trained; the result is the f32 model's adapted pass (the same weights, bit
    for bit, summed in another order), which is where it generates."""
    packed = phijax.load(FIXTURE, progress=False, quantized=True)
    assert isinstance(packed.params.layer(0)["o_proj"], QuantArray)
    fresh = lora.init(packed.params, TARGETS, rank=4, key=jax.random.key(0))
    adapters, losses = train(packed.params, fresh, *batch)
    assert (np.diff(losses) < 0).all(), losses
    tokens, lengths = batch
    assert_logits_close(
        forward(lora.apply(packed.params, adapters), tokens, lengths=lengths),
        forward(lora.apply(f32.params, adapters), tokens, lengths=lengths),
        f32.config,
    )
    with pytest.raises(ConfigError, match="another structure"):
        packed.with_params(lora.apply(packed.params, adapters))  # dense leaves: another tree


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        ("layers.1.o_prj", r"'layers.1.o_prj' matches no weight.*Did you mean 'layers.1.o_proj'"),
        (["layers.*.qkv", "layers.7.qkv"], r"'layers.7.qkv' matches no .* 2-layer .* i in 0..1"),
        ("embed", r"Targets are 'layers.\{i\}.\{qkv\|o_proj\|gate_up\|down\}'"),
        ([], "none given"),
    ],
)
def test_bad_targets_name_the_valid_ones(f32, targets, match):
    with pytest.raises(ConfigError, match=match):
        lora.init(f32.params, targets, key=jax.random.key(0))


def test_adapters_of_another_shape_and_foreign_files_are_refused(f32, tmp_path):
    wrong = lora.Adapters(
        {"layers.0.qkv": jnp.zeros((4, 32))}, {"layers.0.qkv": jnp.zeros((192, 4))}, 4, 8.0
    )
    with pytest.raises(ConfigError, match=r"'layers.0.qkv' has a \[4, 32\].*needs a \[4, 64\]"):
        lora.apply(f32.params, wrong)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ConfigError, match="not a LoRA file of phijax"):
        lora.load(tmp_path / "other.npz")
    with pytest.raises(ConfigError, match="does not exist"):
        lora.load(tmp_path / "missing.npz")
