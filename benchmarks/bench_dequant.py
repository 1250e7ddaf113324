"""Dequantization throughput: phijax's JAX kernels vs gguf-py's numpy reference.

Throughput is GB/s of f32 output (4 bytes per element). Each ggml type gets one
tensor of ``--rows x --cols`` elements (default 3072 x 8192, Phi-3-mini's FFN
matrix), made by quantizing random normal data with ``gguf.quants.quantize``
where gguf-py can, else from random well-formed blocks. JAX is timed on bytes
already on the device and, separately, from a host numpy array (what loading a
file costs), with ``block_until_ready``. Every figure is the median of
``--reps`` runs after two warm-up runs; for JAX on device the fastest run is
shown too. Each JAX result is first checked bit-exact against numpy.

On CPU, read the numbers together with the allocator line printed first. Each
call returns a fresh output buffer; numpy asks for transparent huge pages for
big arrays, XLA's buffers come from plain glibc malloc, i.e. a new mmap with
4 KiB pages per call, and the page faults then cost more than the decoding.
To time the decoding rather than the operating system's page faults, run with

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=137438953472

so that freed buffers are reused (numpy benefits too). Even then some runs
land on fresh memory, which is why the fastest JAX run is shown as well.

    python benchmarks/bench_dequant.py [--types Q4_K Q8_0] [--rows R --cols C] [--reps N] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import gguf
import jax
import numpy as np
from _common import cpu_name, print_table
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QT

from phijax.gguf.dequant import SUPPORTED_TYPES, dequantize
from phijax.gguf.synthetic import F16_FIELDS

DEFAULT_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0")


def make_tensor(qtype: QT, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A realistic ``[rows, row_bytes] uint8`` tensor of ``qtype``."""
    data = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    try:
        return gguf.quants.quantize(data, qtype).view(np.uint8).reshape(rows, -1)
    except NotImplementedError:
        block_elems, type_size = GGML_QUANT_SIZES[qtype]
        n_blocks = rows * cols // block_elems
        blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
        for offset in F16_FIELDS[qtype]:
            scale = (np.abs(rng.standard_normal(n_blocks)) * 1e-3).astype(np.float16)
            blocks[:, offset : offset + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
        return blocks.reshape(rows, -1)


def timings(fn, reps: int) -> list[float]:
    """Wall times of ``reps`` calls of ``fn()``, after two untimed ones."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_type(qtype: QT, rows: int, cols: int, reps: int, rng: np.random.Generator) -> dict:
    """Time numpy and JAX on one tensor; returns GB/s of f32 output for each."""
    raw = make_tensor(qtype, rows, cols, rng)
    shape = (rows, cols)
    out_gb = rows * cols * 4 / 1e9

    on_device = jax.device_put(raw.reshape(-1)).block_until_ready()
    expected = gguf.quants.dequantize(raw, qtype)
    np.testing.assert_array_equal(np.asarray(dequantize(on_device, qtype, shape)), expected)
    del expected

    t_numpy = timings(lambda: gguf.quants.dequantize(raw, qtype), reps)
    t_device = timings(lambda: dequantize(on_device, qtype, shape).block_until_ready(), reps)
    t_host = timings(lambda: dequantize(raw, qtype, shape).block_until_ready(), reps)
    return {
        "type": qtype.name,
        "shape": f"{rows}x{cols}",
        "in_mb": raw.nbytes / 1e6,
        "numpy": out_gb / statistics.median(t_numpy),
        "jax": out_gb / statistics.median(t_device),
        "jax_best": out_gb / min(t_device),
        "jax_host": out_gb / statistics.median(t_host),
    }


def machine_lines() -> list[str]:
    """CPU model, core count, JAX version and backend, malloc settings."""
    cpu = cpu_name()
    devices = ", ".join(str(d) for d in jax.devices())
    allocator = [
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))
    ]
    return [
        f"CPU: {cpu} ({os.cpu_count()} cores visible)",
        f"jax {jax.__version__}, backend {jax.default_backend()} [{devices}], numpy {np.__version__}",
        f"allocator env: {' '.join(allocator) or 'none (glibc defaults)'}",
    ]


def print_results(results: list[dict], markdown: bool) -> None:
    """One row per type: GB/s for numpy, JAX (bytes on device; median, best), JAX from host, speedup."""
    header = [
        "type",
        "shape",
        "in MB",
        "numpy GB/s",
        "jax GB/s",
        "jax best",
        "jax+h2d GB/s",
        "jax/numpy",
    ]
    rows = [
        [
            r["type"],
            r["shape"],
            f"{r['in_mb']:.1f}",
            f"{r['numpy']:.2f}",
            f"{r['jax']:.2f}",
            f"{r['jax_best']:.2f}",
            f"{r['jax_host']:.2f}",
            f"{r['jax'] / r['numpy']:.1f}x",
        ]
        for r in results
    ]
    print_table(header, rows, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--types",
        nargs="+",
        default=list(DEFAULT_TYPES),
        choices=sorted(t.name for t in SUPPORTED_TYPES),
        metavar="TYPE",
        help=f"ggml types to time (default: {' '.join(DEFAULT_TYPES)})",
    )
    parser.add_argument("--rows", type=int, default=3072, help="tensor rows (default 3072)")
    parser.add_argument(
        "--cols", type=int, default=8192, help="tensor columns, a multiple of 256 (default 8192)"
    )
    parser.add_argument(
        "--reps", type=int, default=11, help="timed runs per measurement (default 11)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    results = [bench_type(QT[name], args.rows, args.cols, args.reps, rng) for name in args.types]

    for line in machine_lines():
        print(line)
    print(
        f"f32 output GB/s, median of {args.reps} (jax best: fastest run); jax = bytes already "
        "on device, jax+h2d = from a host numpy array; jax/numpy = ratio of medians"
    )
    print_results(results, args.markdown)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
