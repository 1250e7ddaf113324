"""The vector builds' machine code keeps the prefetches the source asks for (read with objdump).

GCC once deleted every prefetch of the interleaved int8 tiles: a lambda that only prefetches
looked pure to it, so it dropped the lambda's calls. The products stayed right and only got
slower (Q4_K [8192, 3072] at one row, AMD EPYC Zen 3: 0.6 -> 0.45-0.55 ms with them back), so
no test of values could see it. Static: it reads builds this CPU may not run.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import phijax

KERNELS = Path(phijax.__file__).resolve().parent / "kernels"
VECTOR_BUILDS = ("avx2", "avx512", "avx512vnni")


X86 = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32",
    reason="the vector builds exist on x86-64 Linux and macOS only (setup.py)",
)


def built(build: str) -> Path:
    """``build``'s shared library, to read with objdump (skips where there is no objdump)."""
    if shutil.which("objdump") is None:
        pytest.skip("no objdump (binutils) on the PATH to read the build with")
    so = KERNELS / f"_cpu_matmul_{build}{sysconfig.get_config_var('EXT_SUFFIX')}"
    assert so.exists(), f"{so.name} is missing: run `python setup.py build_ext --inplace`"
    return so


def functions(so: Path, name: str) -> dict[str, str]:
    """The disassembly of each function of ``so`` whose symbol contains ``name``."""
    text = subprocess.run(
        ["objdump", "-d", "-C", "--no-show-raw-insn", str(so)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for block in text.split("\n\n"):
        head = re.match(r"[0-9a-f]+ <(.*)>:", block)
        if head and name in head.group(1):
            found[head.group(1)] = block
    return found


@X86
@pytest.mark.parametrize("build", VECTOR_BUILDS)
def test_every_interleaved_int8_tile_prefetches(cxx: str, build: str):
    tiles = functions(built(build), "int8_group_tile<")
    # rows (int8_dot.h's kGroupRows: 8 under VNNI) x (one weight row for 5 code kinds + two
    # for those tiled in pairs: in the maddubs builds not the 2 with bit planes, kInt8Pairs)
    rows, paired = (8, 5) if build == "avx512vnni" else (4, 3)
    assert len(tiles) >= rows * (5 + paired), sorted(tiles)
    missing = [name for name, body in tiles.items() if "prefetch" not in body]
    assert not missing, f"{len(missing)} of {len(tiles)} tiles without a prefetch: {missing[:3]}"


@X86
def test_vnni_pair_tiles_load_each_vector_of_x_once(cxx: str):
    """A tile of two weight rows multiplies each loaded vector of x from a register
    (``in_register``): GCC folded the load into both rows' ``vpdpbusd`` as a memory operand,
    loading x twice (8 x 2 Q4_K tile 0.046 -> 0.041 ns per 8 weights without it). As with
    the prefetches, the values stay right either way."""
    tiles = functions(built("avx512vnni"), "int8_group_tile<")
    pairs = {k: v for k, v in tiles.items() if re.search(r", 2>\(", k)}
    assert len(pairs) >= 8 * 5, sorted(pairs)
    # an operand off the stack is a spilled register (the 4 x 2 Q4_K tile has one); x's rows
    # are addressed from other registers
    folded = [k for k, v in pairs.items() if re.search(r"vpdpbusd\s+[^,\n]*\((?!%rsp)", v)]
    assert not folded, f"{len(folded)} pair tiles multiply x from memory: {folded[:3]}"
