"""Tolerances from an error model, not from the machine they were first run on.

Two f32 evaluations of the same network that differ only in summation order
(another GEMM kernel for another batch shape, chunk width, CPU, or library)
differ by rounding alone. Each of the ``L`` layers reduces over at most
``K = max(hidden, ffn, keys)`` terms (``keys``: the positions one query attends to,
the longest reduction only for tiny fixtures at long context); rounding errors of
size ``eps`` (f32: 1.19e-7) relative to the values' scale are independent with
zero mean, so after ``L·K`` roundings they accumulate like a random walk, to
about ``sqrt(L·K)·eps`` times the scale of the output, which for logits is their
range. Two evaluations each carry such an error, hence the factor 2:

    atol = 2 · sqrt(L · K) · eps · range(logits)

Measured against it (tests/numerics.py, docs/reproducibility.md): SmolLM2
(L=30, K=1536, range 78) gives atol 4.0e-3; batch 8/32 rows differ from solo
runs by 5.0e-4 on an AMD EPYC Zen 4, and phijax differs from HF f32 by 9.6e-5.
Tiny phi3 fixtures (L=2, K=96, range 3) give atol 1.3e-5; HF differs by 3e-7.
Against a float64 reference only the f32 side rounds, so the same bound holds
with a factor 2 to spare.

What users rely on is asserted as well: the same top-1 token wherever the
top-2 margin is beyond the noise (> 2·atol and > 1e-3).
"""

from __future__ import annotations

import math

import numpy as np

from phijax.config import Phi3Config

F32_EPS = float(np.finfo(np.float32).eps)


def f32_atol(config: Phi3Config, scale: float, keys: int = 0) -> float:
    """Bound on |Δ| between two f32 evaluations of ``config``'s network whose output
    spans ``scale`` (the logits' range), from the random-walk rounding model above.
    ``keys``: the most positions one query attends to, where that exceeds the widths."""
    k = max(config.hidden_size, config.intermediate_size, keys)
    return 2 * math.sqrt(config.num_layers * k) * F32_EPS * scale


def assert_logits_close(
    actual, desired, config: Phi3Config, err_msg: str = "", keys: int = 0
) -> None:
    """``actual`` within :func:`f32_atol` of ``desired`` ``[..., vocab]``, with the same
    top-1 token wherever ``desired``'s top-2 margin is beyond the rounding noise."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    atol = f32_atol(config, float(np.ptp(desired)), keys)
    np.testing.assert_allclose(actual, desired, atol=atol, rtol=0, err_msg=err_msg)
    top2 = np.sort(desired, axis=-1)[..., -2:]
    decisive = top2[..., 1] - top2[..., 0] > max(2 * atol, 1e-3)
    np.testing.assert_array_equal(
        actual.argmax(-1)[decisive], desired.argmax(-1)[decisive], err_msg=err_msg
    )
