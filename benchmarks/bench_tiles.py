"""The CPU kernel's tiles alone: ``dot_tile`` (``phijax/kernels/cpu_matmul.cc``) and the
int8 path's interleaved ``int8_group_tile`` (``int8_dot.h``) on a weight held in L2, on one
thread, in nanoseconds (and cycles, given the clock) per 8 weights per row of x, for each
code layout and tile shape. No memory, threads or XLA in the way: what each loop costs, to
compare tile shapes and summation orders (``docs/benchmarks.md``, fifteenth step).

It compiles ``benchmarks/tiles.cc`` (which includes the kernel's source) with the flags
``setup.py`` gives one kernel build into a temporary shared library and calls it through
ctypes; it needs a C++ compiler and jaxlib's XLA FFI headers, as ``setup.py`` does.

    python benchmarks/bench_tiles.py [--isa avx2] [--ghz 3.05] [--cpu 1] [--markdown]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import runpy
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from unittest import mock

import setuptools
from _common import cpu_name, print_table

from phijax import kernels

ROOT = Path(__file__).resolve().parent.parent


def setup_flags() -> dict[str, list[str]]:
    """Each kernel build's compile flags and macros (but its module name) as ``setup.py``
    asks setuptools to build it: one place for them."""
    seen = {}
    with mock.patch.object(setuptools, "setup", lambda **kw: seen.update(kw)):
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return {
        ext.name.rsplit("_", 1)[-1]: [
            *ext.extra_compile_args,
            *(f"-D{k}={v}" for k, v in ext.define_macros if k != "PHIJAX_MODULE"),
        ]
        for ext in seen["ext_modules"]
    }


FLAGS = setup_flags()
LAYOUTS = {
    "Q4_K (4-bit, mins)": 0,
    "Q5_K (fifth bits)": 1,
    "Q6_K (int8 codes)": 2,
    "bf16": 3,
    "Q4_K, two-level scales": 4,
    "Q5_K, two-level scales": 5,
    "Q6_K, two-level scales": 6,
    "Q4_K, two-level, interleaved": 7,
    "Q5_K, two-level, interleaved": 8,
    "Q6_K, two-level, interleaved": 9,
}
TILES = [(1, 1), (2, 1), (2, 2), (4, 1), (4, 2)]
INT8_LAYOUTS = {
    "Q4_K": 0,
    "Q5_K (fifth bits)": 1,
    "Q6_K (6-bit codes)": 2,
    "int8 codes, blocks of 16": 3,
}
INT8_TILES = [(1, 1), (4, 1), (4, 2), (8, 1), (8, 2)]


def build(isa: str, out: Path) -> ctypes.CDLL:
    """tiles.cc compiled with ``isa``'s flags into ``out``, loaded."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        raise SystemExit("bench_tiles: no C++ compiler (set CXX)")
    jaxlib = importlib.util.find_spec("jaxlib")
    include = Path(jaxlib.origin).parent / "include"
    command = [compiler, *FLAGS[isa], "-fPIC", "-shared", "-DPHIJAX_MODULE=_tiles", f"-I{ROOT / 'phijax' / 'kernels'}",
               f"-I{include}", f"-I{sysconfig.get_paths()['include']}",
               str(ROOT / "benchmarks" / "tiles.cc"), "-o", str(out)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    lib = ctypes.CDLL(str(out))
    for fn in (lib.phijax_time_tile, lib.phijax_time_int8_tile):
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.c_int] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    return lib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = kernels.chosen() or "generic"
    parser.add_argument("--isa", choices=list(FLAGS), default=default, help="kernel build's flags")
    parser.add_argument("--ghz", type=float, help="the core's clock, to print cycles")
    parser.add_argument("--cpu", type=int, help="pin to this CPU (os.sched_setaffinity)")
    parser.add_argument("--rows", type=int, default=32, help="weight rows (default 32)")
    parser.add_argument("--cols", type=int, default=3072, help="weight columns (default 3072)")
    parser.add_argument("--reps", type=int, default=200, help="best of this many (default 200)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(args.isa, Path(tmp) / "tiles.so")

        def table(timer, layouts: dict[str, int], tiles: list[tuple[int, int]]) -> None:
            rows = []
            for name, layout in layouts.items():
                cells = [name]
                for r, c in tiles:
                    ns = timer(layout, r, c, args.rows, args.cols, args.reps) / r
                    cells.append(f"{ns * args.ghz:.2f}" if args.ghz else f"{ns:.3f}")
                rows.append(cells)
            print_table(["layout", *(f"{r} x {c}" for r, c in tiles)], rows, markdown=args.markdown)

        unit = f"cycles at {args.ghz} GHz" if args.ghz else "ns"
        print(f"# {cpu_name()}; build flags: {args.isa}; weight [{args.rows}, {args.cols}] in L2; "
              f"{unit} per 8 weights per row of x, best of {args.reps}")  # fmt: skip
        print("\n## f32 activations (dot_tile)")
        table(lib.phijax_time_tile, LAYOUTS, TILES)
        print("\n## int8 activations, interleaved codes (int8_group_tile)")
        table(lib.phijax_time_int8_tile, INT8_LAYOUTS, INT8_TILES)


if __name__ == "__main__":
    main()
