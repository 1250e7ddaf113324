"""The kernel's FFI targets are registered for any caller, so their handler must refuse every
buffer it cannot use with INVALID_ARGUMENT instead of reading or writing out of bounds. Called
here the way any caller can, through ``jax.ffi.ffi_call``, in a subprocess: before the
handler checked its output, an output of ``[1, 1]`` for a 200,000-row weight segfaulted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CALLS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from phijax import kernels

x = np.ones((1, 64), np.float32)
codes, scales = np.ones((24, 64), np.int8), np.ones((24, 2), np.float32)
tall = np.ones((200_000, 64), np.int8), np.ones((200_000, 2), np.float32)
empty, bits = np.zeros((0,), np.float32), np.zeros((0,), np.uint8)
# a Q6_K-like weight with two-level scales: int8 codes and scales, one d per 256 columns
x256, codes256, codes_s8 = np.ones((1, 256), np.float32), np.ones((24, 256), np.int8), np.ones((24, 16), np.int8)
units, no_units = np.ones((24, 1, 1), np.float16), np.zeros((0,), np.float16)
# its codes as 6 bits: nibbles 1 and, in the group's 64 plane bytes, bit 4 (bits 0, 2, 4, 6: steps
# 0-3) clear and bit 5 (bits 1, 3, 5, 7) set: 33 - 32 = 1
nibbles6 = np.full((24, 128), 0x11, np.uint8)
planes6 = np.full((24, 64), 0b10101010, np.uint8)
# a stack of 3 weights: layers 0 and 1 zero, layer 2 the valid one
stack, stacked_scales = np.stack([codes * 0, codes * 0, codes]), np.ones((3, 24, 2), np.float32)
cases = {  # name: (act, output shape, x, codes, scales, mins[, high bits[, interleave[, units[, nibbles[, layer]]]]])
    "valid": (0, (1, 24), x, codes, scales, empty),
    "valid with mins": (0, (1, 24), x, codes, scales, np.ones((24, 2), np.float32)),
    "valid, int8 activations": (2, (1, 24), x, codes, scales, empty),
    "output [1, 1] for 200,000 weight rows": (0, (1, 1), x, *tall, empty),
    "output [2, 24] for 1 row of x": (0, (2, 24), x, codes, scales, empty),
    "output [24], 1-D": (0, (24,), x, codes, scales, empty),
    "mins [48] next to scales [24, 2]": (0, (1, 24), x, codes, scales, np.ones(48, np.float32)),
    "mins [2, 24] next to scales [24, 2]": (0, (1, 24), x, codes, scales, np.ones((2, 24), np.float32)),
    "int8 activations in blocks of 256, 64 columns": (1, (1, 24), x, codes, scales, empty),
    "activations 7": (7, (1, 24), x, codes, scales, empty),
    "fifth bits beside int8 codes": (0, (1, 24), x, codes, scales, empty, np.ones((24, 8), np.uint8)),
    "interleaved codes, f32 activations": (0, (1, 24), x, codes, scales, empty, bits, 32),
    "interleaved codes, 64 columns (not 16 blocks)": (1, (1, 24), x, codes, scales, empty, bits, 32),
    "valid, two-level scales": (1, (1, 24), x256, codes256, codes_s8, empty, bits, 16, units),
    "int8 scales without units": (1, (1, 24), x256, codes256, codes_s8, empty, bits, 16),
    "units beside row-order codes": (1, (1, 24), x256, codes256, codes_s8, empty, bits, 0, units),
    "valid, two-level scales in row order": (0, (1, 24), x256, codes256, codes_s8, empty, bits, 0, units),
    "units beside nibbles in groups of 32": (0, (1, 24), x256, np.full((24, 128), 0x11, np.uint8),
                                             np.ones((24, 8), np.uint8), np.ones((24, 8), np.uint8), bits, 0,
                                             np.ones((24, 1, 2), np.float16), 32),
    "units [24, 2, 1] for 256 columns": (1, (1, 24), x256, codes256, codes_s8, empty, bits, 16,
                                         np.ones((24, 2, 1), np.float16)),
    "units beside int8 codes in blocks of 32": (1, (1, 24), np.ones((1, 512), np.float32),
                                                np.ones((24, 512), np.int8), codes_s8, empty, bits, 32,
                                                np.ones((24, 2, 1), np.float16)),
    "valid, 6-bit codes": (1, (1, 24), x256, nibbles6, codes_s8, empty, planes6, 16, units, 64),
    "6-bit codes in row order": (1, (1, 24), x256, nibbles6, codes_s8, empty, planes6, 0, units, 64),
    "6-bit codes in groups of 32": (1, (1, 24), x256, nibbles6, codes_s8, empty, planes6, 16, units, 32),
    "valid, layer 2 of a stack": (0, (1, 24), x, stack, stacked_scales, empty, bits, 0, no_units, 0, 2),
    "layer 3 of a stack of 3": (0, (1, 24), x, stack, stacked_scales, empty, bits, 0, no_units, 0, 3),
    "layer -1 of a stack": (0, (1, 24), x, stack, stacked_scales, empty, bits, 0, no_units, 0, -1),
    "layer 1 of one weight": (0, (1, 24), x, codes, scales, empty, bits, 0, no_units, 0, 1),
    "scales of 2 layers beside codes of 3": (0, (1, 24), x, stack, stacked_scales[:2], empty, bits, 0, no_units, 0, 1),
}
results = {}
for build in sys.argv[1:]:
    kernels.status(build)  # imports and registers the build's target
    for name, (act, shape, *args) in cases.items():
        x_, codes_, scales_, mins_, high, interleave, units_, nibbles, layer = [
            *args, *(bits, 0, no_units, 0, 0)[len(args) - 4 :]
        ]
        out = jax.ShapeDtypeStruct(shape, jnp.float32)
        call = jax.ffi.ffi_call(kernels.target(build), out)
        try:
            y = call(x_, codes_, scales_, mins_, high, units_, np.int32(layer), act=np.int64(act), nibbles=np.int64(nibbles),
                     interleave=np.int64(interleave))
            results[f"{build}: {name}"] = f"accepted {float(np.asarray(y).ravel()[0])}"
        except Exception as e:
            results[f"{build}: {name}"] = f"{type(e).__name__}: {e}"
print(json.dumps(results))
"""


@pytest.mark.slow
def test_the_handler_rejects_wrong_shapes(expected_builds):
    out = subprocess.run(
        [sys.executable, "-c", CALLS, *expected_builds], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]  # a crash (SIGSEGV: -11) fails here
    results = json.loads(out.stdout.strip().splitlines()[-1])
    for build in expected_builds:
        assert results.pop(f"{build}: valid") == "accepted 64.0"
        assert results.pop(f"{build}: valid with mins") == "accepted 0.0"
        assert results.pop(f"{build}: valid, layer 2 of a stack") == "accepted 64.0"
        # x = 1 rounds to 127 codes of scale f16(1/127): 64 * 127 * f16(1/127), within 0.1%
        accepted = results.pop(f"{build}: valid, int8 activations").split()
        assert accepted[0] == "accepted" and abs(float(accepted[1]) - 64) < 0.064
        for valid in ("two-level scales", "6-bit codes"):  # d · scale = 1, codes 1
            accepted = results.pop(f"{build}: valid, {valid}").split()
            assert accepted[0] == "accepted" and abs(float(accepted[1]) - 256) < 0.256
        assert results.pop(f"{build}: valid, two-level scales in row order") == "accepted 256.0"
    assert len(results) == 21 * len(expected_builds)
    for name, result in results.items():
        assert "INVALID_ARGUMENT" in result and "cpu_matmul" in result, (name, result)
