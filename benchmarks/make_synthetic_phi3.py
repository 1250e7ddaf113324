"""Write a synthetic full-size Phi-3-mini GGUF (random weights, real shapes, Q4_K_M-like types).

For benchmarks that need Phi-3-mini's size without downloading it: 32 layers,
hidden 3072, 32 heads of 96, ffn 8192, vocab 32064, context 4096, sliding
window 2047 (as in Phi-3-mini-4k-instruct's GGUF). Tensor types follow a
Q4_K_M-like layout: Q4_K for token_embd, attn_qkv, attn_output and ffn_up;
Q6_K for ffn_down and output; F32 norms. (llama.cpp's own Q4_K_M varies
ffn_down and attn_qkv per layer; this layout has about the same size, ~2.4 GB.)
Weights are random well-formed blocks, so the model computes garbage at the
real cost. Written by ``phijax.gguf.synthetic.write_phi3``: the encoded tensors
are held once (about the file's size in memory) and freed as they are written.

    python benchmarks/make_synthetic_phi3.py [OUT] [--layers N] [--seed S] [--force]

``--layers`` shrinks the model for a smoke test (the default file name then
says so). An existing file is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import time
from pathlib import Path

from gguf import GGMLQuantizationType as QT

from phijax.config import Phi3Config
from phijax.gguf import GGUFFile
from phijax.gguf.synthetic import write_phi3
from phijax.pypi_models import cache_dir

PHI3_MINI = Phi3Config(
    architecture="phi3",
    vocab_size=32064,
    hidden_size=3072,
    intermediate_size=8192,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    head_dim=96,
    rotary_dim=96,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    context_length=4096,
    sliding_window=2047,
)

Q4_K_M_LIKE = {
    "token_embd": QT.Q4_K,
    "attn_qkv": QT.Q4_K,
    "attn_output": QT.Q4_K,
    "ffn_up": QT.Q4_K,
    "ffn_down": QT.Q6_K,
    "output": QT.Q6_K,
}


def default_path(layers: int) -> Path:
    suffix = "" if layers == PHI3_MINI.num_layers else f"-{layers}L"
    return cache_dir() / "synthetic" / f"phi3-mini-synthetic-q4km{suffix}.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out", nargs="?", type=Path, help="output file (default: $PHIJAX_CACHE/synthetic/...)"
    )
    parser.add_argument(
        "--layers", type=int, default=PHI3_MINI.num_layers, help="layers (default 32)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite an existing file")
    args = parser.parse_args()

    config = PHI3_MINI.replace(num_layers=args.layers)
    out = (args.out or default_path(args.layers)).expanduser()
    if out.exists() and not args.force:
        print(f"{out} exists ({out.stat().st_size / 1e9:.2f} GB); --force to rewrite it")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    start = time.perf_counter()
    # general.name must not contain "phi3": llama.cpp would then look for Phi-3 special tokens
    # (<|endoftext|>) that the synthetic vocabulary lacks, and fail to load the file.
    name = "phijax synthetic mini (random weights)"
    write_phi3(partial, config, qtype=QT.Q4_K, qtypes=Q4_K_M_LIKE, seed=args.seed, name=name)
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
