#!/usr/bin/env bash
# Runs the CPU kernel's AVX-512 builds (avx512vnni, avx512) on a CPU without AVX-512: a copy of
# the tree builds them over SIMDe's portable intrinsics (emulated_avx512/simde_avx512.h), and
# the tests run them as if this CPU had the instructions (emulated_avx512/emulated_avx512.py).
# This checks what their intrinsics compute, on an x86-64 CPU with AVX2, FMA and F16C; not
# GCC's AVX-512 code, and not their speed. Exits non-zero on any failure.
#
#   scripts/check_avx512_emulated.sh                 # the kernel tests, then the models'
#   scripts/check_avx512_emulated.sh tests/test_x.py  # other tests, once per build
#
# Needs g++, SIMDe's headers (Debian: libsimde-dev; or SIMDE_INCLUDE=<dir holding simde/>) and
# a Python with phijax's dependencies (PYTHON=..., default python3). The test models come from
# phijax's cache, as for the full suite.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
simde=${SIMDE_INCLUDE:-/usr/include}
if [ ! -f "$simde/simde/x86/avx512.h" ]; then
    echo "SIMDe's headers are not in $simde: install libsimde-dev, or set SIMDE_INCLUDE" >&2
    exit 2
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/phijax-avx512.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A copy of the working tree: the builds land there, never over the checkout's own.
source "$root/scripts/working_tree.sh"
copy_working_tree "$root" "$work"
cd "$work"

read -r python_include jaxlib_include suffix < <("$python" -c '
import os, sysconfig, jaxlib
print(sysconfig.get_paths()["include"], os.path.join(os.path.dirname(jaxlib.__file__), "include"),
      sysconfig.get_config_var("EXT_SUFFIX"))')

# setup.py's flags (-O1: SIMDe's code compiles for minutes at -O3, and computes the same); the
# compiler's output is shown only when it fails (jaxlib's headers warn at -O1).
build() {
    local name=$1
    shift
    g++ -std=c++17 -O1 -fPIC -shared -fvisibility=hidden -ffp-contract=off -fno-wrapv -DNDEBUG \
        -DPHIJAX_MODULE="_cpu_matmul_$name" -I"$jaxlib_include" -I"$python_include" -I"$simde" "$@" \
        phijax/kernels/cpu_matmul.cc -o "phijax/kernels/_cpu_matmul_$name$suffix" \
        >"$work/build-$name.log" 2>&1 || { cat "$work/build-$name.log" >&2; return 1; }
}
emulated=(-DPHIJAX_AVX512=1 -mavx2 -mfma -mf16c -Wno-psabi -include scripts/emulated_avx512/simde_avx512.h)
build generic &  # the build that reports what this CPU runs
build avx512 "${emulated[@]}" &
build avx512vnni -DPHIJAX_EMULATE_VNNI=1 "${emulated[@]}" &
for job in $(jobs -p); do wait "$job"; done

export PYTHONPATH=$work/scripts/emulated_avx512
pytest=("$python" -m pytest -q -p no:cacheprovider -p emulated_avx512)
if [ $# -eq 0 ]; then
    "${pytest[@]}" tests/kernels -k avx512
    set -- tests/model/test_quantized.py tests/model/test_int8_activations.py
fi
for b in avx512vnni avx512; do
    PHIJAX_CPU_KERNEL=$b "${pytest[@]}" "$@"
done
