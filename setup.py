"""Builds the CPU kernel for packed and bf16 weights (``phijax/kernels``); everything else is in
pyproject.toml. Each build is optional: without a C++ compiler, or without jaxlib in the build
environment, the install still succeeds and those weights use the pure-JAX path
(``phijax.kernels.status()`` says why)."""

import glob
import os
import platform
import sys
from importlib.util import find_spec

from setuptools import Extension, setup


def _xla_ffi_include() -> str | None:
    """The XLA FFI headers that jaxlib ships (a build requirement in pyproject.toml), or None
    where jaxlib cannot be imported (``pip install --no-build-isolation`` without it)."""
    spec = find_spec("jaxlib")
    if spec is None or spec.origin is None:
        return None
    include = os.path.join(os.path.dirname(spec.origin), "include")
    return include if os.path.isfile(os.path.join(include, "xla", "ffi", "api", "ffi.h")) else None


VNNI_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
"""The AVX-512 build plus integer dot products (int8 activations: ``vpdpbusd``)."""


HEADERS = sorted(
    os.path.join("phijax", "kernels", h)
    for h in glob.glob(
        "*.h",
        root_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "phijax", "kernels"),
    )
)
"""The kernel's headers: a change to one rebuilds every build (``build_ext --inplace`` compares
only ``sources`` and ``depends`` with the built files)."""


def _kernel(isa: str, flags: list[str], include: str) -> Extension:
    name = f"_cpu_matmul_{isa}"
    family = "AVX512" if isa.startswith("avx512") else isa.upper()
    macros = [("PHIJAX_MODULE", name)] + ([(f"PHIJAX_{family}", "1")] if flags else [])
    return Extension(
        f"phijax.kernels.{name}",
        sources=["phijax/kernels/cpu_matmul.cc"],
        depends=HEADERS,
        include_dirs=[include],
        define_macros=macros,
        extra_compile_args=["/std:c++17", "/O2"]
        if sys.platform == "win32"
        # no contraction of a * b + c into one FMA where the source does not ask for one: the
        # int8 activations must round x * scale first, as llama.cpp does (int8_dot.h). No
        # wrapping signed arithmetic (Python's flags ask for it): under it GCC cannot prove a
        # loop's index non-negative, and each k / 2 in a tile's loop costs a sign fix-up.
        else [
            "-std=c++17",
            "-O3",
            "-fvisibility=hidden",
            "-ffp-contract=off",
            "-fno-wrapv",
            *flags,
        ],
        language="c++",
        optional=True,
    )


def _kernels() -> list[Extension]:
    include = _xla_ffi_include()
    if include is None:
        print(
            "phijax: jaxlib (and its XLA FFI headers) is not importable in this build "
            "environment, so the CPU kernel is not built; packed and bf16 weights will use "
            "XLA's products. Install jaxlib first, or build without --no-build-isolation.",
            file=sys.stderr,
        )
        return []
    kernels = [_kernel("generic", [], include)]
    if platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32":
        kernels += [
            _kernel("avx2", ["-mavx2", "-mfma", "-mf16c"], include),
            _kernel("avx512", ["-mavx512f", "-mfma", "-mf16c"], include),
            _kernel("avx512vnni", [*VNNI_FLAGS, "-mfma", "-mf16c"], include),
        ]
    return kernels


setup(ext_modules=_kernels())
