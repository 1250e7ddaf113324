"""pytest plugin for ``scripts/check_avx512_emulated.sh``: the AVX-512 builds, compiled over
SIMDe's emulated intrinsics, count as builds this CPU runs, for phijax's loader and for the
kernel tests' choice of builds (``tests/kernels/conftest.py``)."""

import functools

EMULATED = ("avx512vnni", "avx512")


def with_emulated(cpu):
    """``phijax.kernels._cpu`` with the emulated builds among those this CPU runs."""
    from phijax import kernels

    @functools.cache
    def runs():
        found, why = cpu()
        return (
            (found, why)
            if why
            else (tuple(b for b in kernels.BUILDS if b in {*found, *EMULATED}), why)
        )

    return runs


def pytest_configure(config):
    from phijax import kernels

    kernels._cpu = with_emulated(kernels._cpu)


def pytest_plugin_registered(plugin, manager):
    if getattr(plugin, "__name__", "").endswith("kernels.conftest"):
        flags = plugin.cpu_flags
        needed = frozenset().union(*(plugin.NEEDS[b] for b in EMULATED))
        plugin.cpu_flags = functools.cache(lambda: flags() | needed)
