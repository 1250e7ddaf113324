"""phijax.gguf.dequant against gguf-py's numpy reference: bit-exact on random and real tensors."""

from __future__ import annotations

import gguf
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax.errors import GGUFFormatError, UnsupportedError
from phijax.gguf import dequant, relayout
from phijax.gguf.dequant import dequantize
from phijax.gguf.synthetic import F16_FIELDS
from phijax.quant import can_interleave, interleaved

from blocks import random_blocks

FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
ALL_TYPES = sorted(dequant.SUPPORTED_TYPES, key=lambda t: t.name)

# Real tensors above this many elements are checked on a sample of rows (Gemma's 262k-row embedding).
FULL_TENSOR_LIMIT = 1 << 25


def reference(raw: np.ndarray, qtype: QT, shape: tuple[int, ...]) -> np.ndarray:
    """gguf-py's numpy dequantization of ``raw`` bytes, in ``shape``."""
    rows = raw.reshape(-1, GGML_QUANT_SIZES[qtype][1])
    return gguf.quants.dequantize(rows, qtype).reshape(shape)


def assert_bit_exact(got: jax.Array | np.ndarray, want: np.ndarray) -> None:
    """Same shape, dtype and values (NaN == NaN), and the same bits wherever ``want`` is not NaN.

    The bit check catches what ``assert_array_equal`` lets through: 0.0 vs -0.0.
    """
    got = np.asarray(got)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    # Compared as f32 (exact for bf16/f16): only there does assert_array_equal match NaN to NaN.
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    bits = np.dtype(f"u{want.dtype.itemsize}")
    not_nan = ~np.isnan(want.astype(np.float32))
    np.testing.assert_array_equal(got.view(bits)[not_nan], want.view(bits)[not_nan])


def test_supported_types() -> None:
    assert set(F16_FIELDS) | set(FLOAT_TYPES) == dequant.SUPPORTED_TYPES


# ---------------------------------------------------------------------------
# (a) random well-formed blocks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype: QT) -> None:
    block_elems = GGML_QUANT_SIZES[qtype][0]
    n_blocks = 4096 if qtype in FLOAT_TYPES else 384
    blocks = random_blocks(qtype, n_blocks, seed=int(qtype))
    shape = (n_blocks * block_elems,)
    assert_bit_exact(dequantize(blocks.reshape(-1), qtype, shape), reference(blocks, qtype, shape))


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
def test_2d_shape_from_jax_array(qtype: QT) -> None:
    """Rows of three blocks; raw given as a 2-D jax.Array (flattened by dequantize)."""
    block_elems = GGML_QUANT_SIZES[qtype][0]
    blocks = random_blocks(qtype, 5 * 3, seed=100 + int(qtype))
    shape = (5, 3 * block_elems)
    got = dequantize(jnp.asarray(blocks), qtype, shape)
    assert isinstance(got, jax.Array)
    assert got.devices() == {jax.devices()[0]}
    assert_bit_exact(got, reference(blocks, qtype, shape))


@pytest.mark.parametrize(
    "qtype", [QT.F16, QT.Q4_0, QT.Q5_1, QT.Q3_K, QT.Q6_K, QT.IQ4_XS], ids=lambda t: t.name
)
def test_3d_shape(qtype: QT) -> None:
    block_elems = GGML_QUANT_SIZES[qtype][0]
    blocks = random_blocks(qtype, 2 * 3 * 2, seed=200 + int(qtype))
    shape = (2, 3, 2 * block_elems)
    assert_bit_exact(dequantize(blocks, qtype, shape), reference(blocks, qtype, shape))


@pytest.mark.parametrize(
    "qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_K, QT.Q6_K], ids=lambda t: t.name
)
def test_bf16_output_is_f32_result_rounded_once(qtype: QT) -> None:
    block_elems = GGML_QUANT_SIZES[qtype][0]
    n_blocks = 2048 if qtype in FLOAT_TYPES else 64
    blocks = random_blocks(qtype, n_blocks, seed=300 + int(qtype))
    shape = (n_blocks * block_elems // 256, 256)
    with np.errstate(invalid="ignore"):  # NaNs from random float bytes
        want = reference(blocks, qtype, shape).astype(ml_dtypes.bfloat16)
    assert_bit_exact(dequantize(blocks, qtype, shape, dtype=jnp.bfloat16), want)


def test_f16_every_bit_pattern() -> None:
    """All 65536 halves; each NaN widens to the f32 NaN with the same sign and payload."""
    halves = np.arange(1 << 16, dtype=np.uint16)
    got = np.asarray(dequantize(halves.view(np.uint8), QT.F16, (1 << 16,)))
    assert_bit_exact(got, reference(halves.view(np.uint8), QT.F16, (1 << 16,)))
    nan = ((halves & 0x7C00) == 0x7C00) & ((halves & 0x03FF) != 0)
    h = halves[nan].astype(np.uint32)
    np.testing.assert_array_equal(
        got.view(np.uint32)[nan], (h & 0x8000) << 16 | 0x7F800000 | (h & 0x03FF) << 13
    )


# ---------------------------------------------------------------------------
# (b) every tensor type in two real GGUF files
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tensors(smollm2_gguf) -> list:
    return gguf.GGUFReader(smollm2_gguf).tensors


@pytest.fixture(scope="module")
def gemma3_tensors(gemma3_gguf) -> list:
    return gguf.GGUFReader(gemma3_gguf).tensors


REAL_TYPES = {
    "smollm2": {QT.Q4_1, QT.Q8_0, QT.F32},
    "gemma3": {QT.Q4_K, QT.Q5_0, QT.Q6_K, QT.Q8_0, QT.F32},
}


@pytest.mark.parametrize("model", sorted(REAL_TYPES))
def test_real_files_hold_the_expected_types(model: str, request) -> None:
    tensors = request.getfixturevalue(f"{model}_tensors")
    assert {QT(t.tensor_type) for t in tensors} == REAL_TYPES[model]


@pytest.mark.parametrize(
    ("model", "qtype"),
    [(model, qtype) for model, types in sorted(REAL_TYPES.items()) for qtype in sorted(types)],
    ids=lambda x: getattr(x, "name", x),
)
def test_real_tensors_bit_exact(model: str, qtype: QT, request) -> None:
    """Every tensor of the type: whole if small enough, else a sample of its rows."""
    tensors = [t for t in request.getfixturevalue(f"{model}_tensors") if t.tensor_type == qtype]
    rng = np.random.default_rng(0)
    n_full = 0
    for t in tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        data = np.asarray(t.data)
        if t.n_elements > FULL_TENSOR_LIMIT:
            picked = np.unique(
                np.r_[0:4, data.shape[0] - 4 : data.shape[0], rng.integers(0, data.shape[0], 56)]
            )
            data = data[picked]
            shape = (len(picked), *shape[1:])
        else:
            n_full += 1
        raw = data.reshape(-1).view(np.uint8)
        assert_bit_exact(dequantize(raw, qtype, shape, name=t.name), reference(raw, qtype, shape))
    assert n_full >= 1


# ---------------------------------------------------------------------------
# (c) errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [QT.IQ2_XXS, QT.TQ1_0, QT.MXFP4], ids=lambda t: t.name)
def test_unsupported_type_names_tensor_type_and_alternatives(qtype: QT) -> None:
    block_elems, type_size = GGML_QUANT_SIZES[qtype]
    with pytest.raises(UnsupportedError) as excinfo:
        dequantize(np.zeros(type_size, np.uint8), qtype, (block_elems,), name="blk.0.ffn_up.weight")
    message = str(excinfo.value)
    assert "blk.0.ffn_up.weight" in message
    assert qtype.name in message
    assert all(t.name in message for t in dequant.SUPPORTED_TYPES)


def test_unknown_type_id_is_unsupported() -> None:
    with pytest.raises(UnsupportedError, match=r"'w'.*9999"):
        dequantize(np.zeros(4, np.uint8), 9999, (1,), name="w")


def test_type_may_be_given_as_int() -> None:
    blocks = random_blocks(QT.Q4_K, 2, seed=7)
    assert_bit_exact(dequantize(blocks, int(QT.Q4_K), (512,)), reference(blocks, QT.Q4_K, (512,)))


def test_wrong_byte_count_names_tensor_and_numbers() -> None:
    raw = np.zeros(144 * 3 - 1, np.uint8)
    with pytest.raises(GGUFFormatError, match=r"'blk\.3\.attn_q\.weight'.*Q4_K.*432.*431"):
        dequantize(raw, QT.Q4_K, (3, 256), name="blk.3.attn_q.weight")


def test_row_not_a_multiple_of_the_block_names_tensor_and_numbers() -> None:
    with pytest.raises(GGUFFormatError, match=r"'odd'.*Q8_0.*32.*\(2, 48\).*48"):
        dequantize(np.zeros(34 * 3, np.uint8), QT.Q8_0, (2, 48), name="odd")


def test_non_byte_numpy_input_is_read_as_its_bytes() -> None:
    values = np.random.default_rng(9).standard_normal((4, 8)).astype(np.float32)
    assert_bit_exact(dequantize(values, QT.F32, (4, 8)), values)


def test_bad_raw_or_output_dtype_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="uint8"):
        dequantize(jnp.zeros(4, jnp.int32), QT.F32, (4,))
    with pytest.raises(TypeError, match="floating"):
        dequantize(np.zeros(4, np.uint8), QT.F32, (1,), dtype=jnp.int32)


# ---------------------------------------------------------------------------
# (d) compilation cache
# ---------------------------------------------------------------------------


def test_same_type_shape_dtype_compiles_once() -> None:
    compiles: list[str] = []

    def on_event(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    blocks = random_blocks(QT.Q5_K, 7 * 3, seed=8)
    shape = (7, 3 * 256)  # used by no other test, so the first call must compile
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        first = dequantize(blocks, QT.Q5_K, shape)
        after_first = len(compiles)
        second = dequantize(blocks, QT.Q5_K, shape)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert after_first >= 1
    assert len(compiles) == after_first
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


# ---------------------------------------------------------------------------
# (e) quantized=True: the lossless re-layout into integers + block scales
# ---------------------------------------------------------------------------

QUANTIZED = sorted(relayout.QUANTIZED_TYPES, key=lambda t: t.name)


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
def test_relayout_decodes_bit_exact(qtype: QT) -> None:
    """values · scales - mins reproduces gguf.quants bit for bit (random blocks, every field);
    4-bit codes without a zero point are kept two per byte."""
    block_elems = GGML_QUANT_SIZES[qtype][0]
    blocks = random_blocks(qtype, 6 * 4, seed=500 + int(qtype))
    shape = (6, 4 * block_elems)
    q = relayout.relayout(blocks, qtype, shape)
    nibbles = relayout.NIBBLES.get(qtype, 0)
    assert q.shape == shape and q.nibbles == nibbles
    assert q.values.dtype == (jnp.uint8 if nibbles else jnp.int8)
    # the memory bound per weight; packed nibbles: 0.5 + 8 bytes of scale, min per 32,
    # and a fifth bit per code for 5-bit types
    fifth = qtype in (QT.Q5_K, QT.Q5_1)
    assert (q.high is not None) == fifth
    assert q.nbytes <= ((0.875 if fifth else 0.75) if nibbles else 1.5) * np.prod(shape)
    assert_bit_exact(q.unpacked().dequantize(), reference(blocks, qtype, shape))
    assert_bit_exact(q.dequantize(), reference(blocks, qtype, shape))
    rows = np.array([4, 0, 4])
    assert_bit_exact(q.take(jnp.asarray(rows)).dequantize(), reference(blocks, qtype, shape)[rows])


@pytest.mark.parametrize(
    "qtype", [t for t in QUANTIZED if GGML_QUANT_SIZES[t][0] == 256], ids=lambda t: t.name
)
def test_interleaved_order_keeps_the_weight(qtype: QT) -> None:
    """The CPU kernel's int8-activation order (``phijax.quant.interleaved``) moves codes
    within each group of 16 sub-blocks, and decodes to the file's weights bit for bit."""
    shape = (3, 1024)
    blocks = random_blocks(qtype, 3 * 4, seed=700 + int(qtype))
    q = relayout.relayout(blocks, qtype, shape)
    assert can_interleave(q) and not can_interleave(q[None])  # one matrix only
    i = interleaved(q)
    assert i.interleave == q.block and i.nbytes == q.nbytes
    assert not np.array_equal(np.asarray(i.values), np.asarray(q.values))  # really reordered
    want = reference(blocks, qtype, shape)
    assert_bit_exact(i.dequantize(), want)
    assert_bit_exact(i.unpacked().dequantize(), want)
    rows = np.array([2, 0])
    assert_bit_exact(i.take(jnp.asarray(rows)).dequantize(), want[rows])
    legacy = relayout.relayout(random_blocks(QT.Q4_1, 3 * 32, seed=1), QT.Q4_1, shape)
    assert not can_interleave(legacy)  # activations rounded per 32: the row-order path


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q5_K, QT.Q6_K], ids=lambda t: t.name)
def test_two_level_scales_keep_the_weight(qtype: QT) -> None:
    """``relayout(..., two_level=True)`` keeps a k-quant's integer scale codes and its
    super-blocks' d (and dmin) as the file stores them (``QuantArray.units``): the decode is
    the file's weight bit for bit, in row order, interleaved, by rows, and once folded back
    into f32 scales (as a fused weight's parts are)."""
    shape = (3, 1024)
    blocks = random_blocks(qtype, 3 * 4, seed=710 + int(qtype))
    q = relayout.relayout(blocks, qtype, shape, two_level=True)
    assert q.units.shape == (3, 4, 1 if qtype == QT.Q6_K else 2)
    assert q.scales.dtype == (jnp.int8 if qtype == QT.Q6_K else jnp.uint8)
    # the units are the blocks' own f16 fields (d, then dmin), bit for bit
    fields = np.stack(
        [blocks[:, o : o + 2].copy().view(np.uint16)[:, 0] for o in F16_FIELDS[qtype]], -1
    )
    assert q.units.dtype == jnp.float16
    np.testing.assert_array_equal(
        np.asarray(q.units).view(np.uint16), fields.reshape(q.units.shape)
    )
    one = relayout.relayout(blocks, qtype, shape)
    assert q.nbytes < one.nbytes
    want = reference(blocks, qtype, shape)
    assert_bit_exact(q.dequantize(), want)
    assert_bit_exact(interleaved(q).dequantize(), want)
    # interleaved in the relayout's own program (the int8 mode's load): the same arrays
    direct = relayout.relayout(blocks, qtype, shape, two_level=True, interleave=True)
    bits = 6 if qtype == QT.Q6_K else 8  # Q6_K's codes (-32..31) as nibbles and two planes
    later = interleaved(q, code_bits=bits)
    assert direct.interleave and (direct.zero, direct.planes) == (later.zero, later.planes)
    assert jax.tree.structure(direct) == jax.tree.structure(later)
    for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(later), strict=True):
        assert_bit_exact(a, b)
    assert_bit_exact(direct.dequantize(), want)
    assert_bit_exact(q.take(jnp.asarray([2, 0])).dequantize(), want[[2, 0]])
    assert_bit_exact(q.one_level().scales, one.scales)
    assert_bit_exact(relayout.concatenate([q, one]).dequantize(), np.concatenate([want, want]))


def test_relayout_concatenates_mixed_types_exactly() -> None:
    """A fused weight from parts of different sub-blocks and with/without mins (Q6_K, Q4_K, Q8_0)."""
    parts, want = [], []
    for k, qtype in enumerate((QT.Q6_K, QT.Q4_K, QT.Q8_0)):
        blocks = random_blocks(qtype, 2 * 256 // GGML_QUANT_SIZES[qtype][0], seed=600 + k)
        parts.append(relayout.relayout(blocks, qtype, (2, 256)))
        want.append(reference(blocks, qtype, (2, 256)))
    fused = relayout.concatenate(parts)
    assert fused.block == 16 and fused.mins is not None and not fused.nibbles
    assert_bit_exact(fused.dequantize(), np.concatenate(want))
    both_q4 = relayout.concatenate([parts[1], parts[1]])  # stays two codes per byte
    assert both_q4.nibbles and both_q4.shape == (4, 256)
    assert_bit_exact(both_q4.dequantize(), np.concatenate([want[1], want[1]]))
