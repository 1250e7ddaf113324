"""Builds the CPU kernel for packed and bf16 weights (``phijax/kernels``); everything else is in
pyproject.toml. Each build is optional: without a C++ compiler the install still succeeds
and those weights use the pure-JAX path (``phijax.kernels.status()`` says why)."""

import os
import platform
import sys
from importlib.util import find_spec

from setuptools import Extension, setup


def _xla_ffi_include() -> str:
    """The XLA FFI headers that jaxlib ships (a build requirement in pyproject.toml)."""
    return os.path.join(os.path.dirname(find_spec("jaxlib").origin), "include")


def _kernel(isa: str, flags: list[str]) -> Extension:
    name = f"_cpu_matmul_{isa}"
    macros = [("PHIJAX_MODULE", name)] + ([(f"PHIJAX_{isa.upper()}", "1")] if flags else [])
    return Extension(
        f"phijax.kernels.{name}",
        sources=["phijax/kernels/cpu_matmul.cc"],
        include_dirs=[_xla_ffi_include()],
        define_macros=macros,
        extra_compile_args=["/std:c++17", "/O2"]
        if sys.platform == "win32"
        else ["-std=c++17", "-O3", "-fvisibility=hidden", *flags],
        language="c++",
        optional=True,
    )


kernels = [_kernel("generic", [])]
if platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32":
    kernels += [_kernel("avx2", ["-mavx2", "-mfma"]), _kernel("avx512", ["-mavx512f", "-mfma"])]

setup(ext_modules=kernels)
