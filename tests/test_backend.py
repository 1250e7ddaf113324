"""The backend policy: one place decides every per-device choice, and tests can force either."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import phijax
from phijax import backend, kernels
from phijax.errors import ConfigError

ROOT = Path(__file__).parent.parent
TINY = Path(__file__).parent / "fixtures" / "model" / "gqa.gguf"


def test_only_backend_reads_the_platform():
    """``git grep default_backend phijax/`` finds one place: :func:`phijax.backend.platform`."""
    found = [
        p.relative_to(ROOT).as_posix()
        for p in sorted((ROOT / "phijax").rglob("*.py"))
        if "default_backend" in p.read_text()
    ]
    assert found == ["phijax/backend.py"]


def test_cpu_policy():
    b = backend.choose(platform_name="cpu")
    assert (b.dtype, b.layout, b.kv_dtype, b.weight_first, b.gather_words) == (
        "float32", "layers", jnp.float32, True, True
    )  # fmt: skip
    assert b.kernel == kernels.chosen()
    assert b.packed == (kernels.chosen() is not None)  # packed where the kernel runs
    assert not b.pads_decode  # f32 matrix-vector products are XLA:CPU's fast ones
    bf16 = backend.choose(platform_name="cpu", dtype="bfloat16")
    assert not bf16.packed and bf16.kv_dtype == jnp.float32 and bf16.pads_decode
    assert not backend.choose(platform_name="cpu", quantized=False).packed
    assert backend.choose(platform_name="cpu", mesh=True).kernel is None  # XLA splits products
    assert not backend.choose(platform_name="cpu", has_quantized=False).packed  # nothing to pack


@pytest.mark.parametrize("has_kernel", [True, False])
def test_small_models_stack_where_the_kernel_multiplies(has_kernel, monkeypatch):
    """Under :data:`~phijax.backend.STACKED_BELOW_PARAMETERS` the CPU default is stacked when
    the kernel multiplies the matrices (packed or bf16, f32 or int8 activations); otherwise, and from
    that size on, one array per layer. An explicit layout always wins."""
    monkeypatch.setattr(kernels, "chosen", lambda: "generic" if has_kernel else None)
    small, large = backend.STACKED_BELOW_PARAMETERS - 1, backend.STACKED_BELOW_PARAMETERS

    def layout(**kw):
        return backend.choose(platform_name="cpu", **kw).layout

    stacked = "stacked" if has_kernel else "layers"
    assert layout(parameters=small) == stacked
    assert layout(parameters=small, dtype="bfloat16") == stacked
    assert layout(parameters=small, quantized=False) == "layers"  # f32: XLA's products
    assert layout(parameters=small, activations="int8") == stacked
    assert layout(parameters=large) == layout() == "layers"
    assert layout(parameters=small, layout="layers") == "layers"
    why = backend.choose(platform_name="cpu", parameters=small).why
    assert any(w.startswith("stacked: a small model") for w in why) == has_kernel


@pytest.mark.skipif(kernels.chosen() is None, reason="names the kernel: needs a build here")
def test_summary_names_the_kernel_where_it_multiplies_and_attends():
    assert f"CPU kernel {kernels.chosen()}" in backend.choose(platform_name="cpu").describe()
    dense = backend.choose(platform_name="cpu", quantized=False).describe()
    assert "XLA's products" in dense and "dense weights" in dense
    assert dense.endswith(", decode attention on the CPU kernel")  # what it does for f32


@pytest.mark.parametrize(
    ("build", "activations", "want"),
    [("avx512vnni", "f32", "f32"), ("avx512", "f32", "f32"), ("avx2", "f32", "f32"),
     ("generic", "f32", None), (None, "f32", None), ("avx2", "int8", "int8"),
     ("generic", "int8", "int8"), (None, "int8", None)],
)  # fmt: skip
def test_the_interleaved_order_follows_the_build(build, activations, want, monkeypatch):
    """Packed matrices take the kernel's interleaved order for int8 activations on every
    build, and for f32 ones (Q4_K's and Q5_K's) on the AVX-512 and AVX2 builds, whose loops
    measured faster on it (``f32_interleaved.h``), and Q6_K's as 6-bit codes on AVX2, where
    they measured no slower; the portable build keeps row order. No kernel: row order."""
    monkeypatch.setattr(kernels, "chosen", lambda: build)
    policy = backend.choose(platform_name="cpu", quantized=True, activations=activations)
    assert policy.interleaves == want
    f32_types = {QT.Q4_K, QT.Q5_K} | ({QT.Q6_K} if build == "avx2" else set())
    assert policy.f32_interleaved == (f32_types if want == "f32" else set())


def test_cpu_policy_without_the_kernel(monkeypatch):
    monkeypatch.setattr(kernels, "chosen", lambda: None)
    assert not backend.choose(platform_name="cpu").packed  # dense f32 is faster than XLA's decode
    assert backend.choose(platform_name="cpu", activations="int8").packed  # what int8 rounds for
    tight = backend.choose(platform_name="cpu", fits_dense=False)
    assert tight.packed and "do not fit" in tight.describe()


@pytest.mark.parametrize("name", ["gpu", "tpu"])
def test_accelerator_policy(name):
    b = backend.choose(platform_name=name)
    assert (b.dtype, b.layout, b.kv_dtype, b.kernel, b.packed) == (
        "bfloat16", "stacked", jnp.bfloat16, None, False
    )  # fmt: skip
    assert not (b.weight_first or b.gather_words or b.pads_decode)
    assert backend.choose(platform_name=name, quantized=True).packed


def test_policy_is_a_static_argument():
    """Hashable and equal by value (a jit cache key); the reasons do not change identity."""
    a, b = backend.choose(platform_name="gpu"), backend.choose(platform_name="gpu")
    assert a == b and hash(a) == hash(b)
    assert a != backend.choose(platform_name="gpu", dtype="float32")
    f = jax.jit(lambda x, policy: x.astype(policy.kv_dtype), static_argnames="policy")
    assert f(jnp.ones(2), policy=a).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"platform_name": "npu"}, "platform = 'npu'"),
        ({"dtype": "int8"}, "dtype = int8"),
        ({"dtype": "nonsense"}, "not a dtype"),
        ({"layout": "rows"}, "layout = 'rows'"),
    ],
)
def test_bad_choices_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        backend.choose(**kwargs)


def test_load_stores_and_reports_the_policy():
    m = phijax.load(TINY, progress=False)
    assert m.backend == m.params.backend == backend.choose(has_quantized=False)  # F32 file
    assert m.backend.describe().split(" (")[0] in m.load_summary
    forced = phijax.load(TINY, progress=False, policy="gpu")
    assert forced.backend == backend.choose(platform_name="gpu")
    ids = np.load(TINY.with_suffix(".npz"))["ids"].tolist()[:8]
    assert forced.logits(ids).dtype == np.float32  # runs here, under the accelerator policy
