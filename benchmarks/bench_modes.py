"""Weight modes side by side: the default, f32, quantized=True and bf16 on this machine, one model.

``default`` is ``phijax.load(source)`` with no options: whatever :func:`phijax.backend.choose`
picks here (its choice is printed under the table); ``f32`` is ``quantized=False``; ``int8``
the int8 activations; ``read`` and ``int8-read`` (only when named) the same loads with
``map_prepared=False`` (prepared weights read into fresh memory instead of mapped).

Each mode runs in a fresh process, so its memory is its own: load time, the load's
peak RSS over the process's RSS after JAX started (``VmHWM - VmRSS``), the weights'
bytes, the first token of a ``--prompt``-token prompt (cold: tracing and compiling or the
persistent cache; warm: median), decode tok/s at each ``--batch`` for ``--new`` tokens
(median of ``--reps`` after one untimed run), the peak so far after batch 1 (llama.cpp's
own workload: load, prompt, batch 1; later batches grow the cache), and with ``--text`` the teacher-forced
top-1 token at every position of a real text, compared with f32's. Every ratio against
f32 is printed in the same run. ``bench_model.py --modes`` runs the same measurement.

    python benchmarks/bench_modes.py --markdown                 # SmolLM2 from PyPI
    python benchmarks/bench_modes.py --model PATH.gguf --batch 1 8 --new 16 --reps 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import cpu_name, print_table

ONE_MODE = """
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np, phijax, phijax.prepared
from phijax import Sampler
spec = json.loads(sys.argv[1])

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

if spec["rebuild"]:  # a first load: re-lay the file out (and write its prepared weights)
    phijax.prepared.load = lambda *args, **kwargs: None
jnp.zeros(1).block_until_ready()
base = status("VmRSS")
before = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
m = phijax.load(spec["source"], progress=False, **spec["kwargs"])
jax.block_until_ready(jax.tree.leaves(m.params))
after = resource.getrusage(resource.RUSAGE_SELF)
out = {"load_s": time.perf_counter() - start, "load_peak": status("VmHWM") - base,
       "load_sys_s": after.ru_stime - before.ru_stime,
       "weights": sum(x.nbytes for x in jax.tree.leaves(m.params)),
       # what a batch-1 decode step reads: every weight but an untied embedding (one row)
       "step_bytes": sum(x.nbytes for x in jax.tree.leaves(m.params))
       - (0 if m.params.lm_head is None else sum(x.nbytes for x in jax.tree.leaves(m.params.embed))),
       "backend": m.backend.describe(), "load_summary": m.load_summary}
rng = np.random.default_rng(0)
vocab = m.config.vocab_size
greedy = Sampler.greedy()
prompt = rng.integers(100, vocab - 100, spec["prompt"]).tolist()
out["first_cold"] = m.generate(prompt, max_new_tokens=1, sampler=greedy).timings["prefill_s"]
out["first_warm"] = float(np.median([m.generate(prompt, max_new_tokens=1, sampler=greedy)
                                     .timings["prefill_s"] for _ in range(max(spec["reps"], 3))]))
for b in spec["batches"]:
    prompts = [rng.integers(100, vocab - 100, 20).tolist() for _ in range(b)]
    kw = {"max_new_tokens": spec["new"] + 1, "sampler": Sampler(temperature=1.0)}
    m.generate(prompts, **kw)
    out[f"decode_b{b}"] = float(np.median([m.generate(prompts, **kw).timings["decode_tok_s"]
                                          for _ in range(spec["reps"])]))
    if b == 1:  # llama.cpp's own workload so far: a load, a prompt, batch 1
        out["peak_b1"] = status("VmHWM") - base
if spec["text"]:
    ids = m.tokenizer.encode(spec["text"])[: min(512, m.config.context_length)]
    out["top1"] = np.asarray(m.logits(ids)).argmax(-1).tolist()
out["peak"] = status("VmHWM") - base
print(json.dumps(out))
"""

MODES = {
    "default": {},
    "f32": {"quantized": False},
    "quantized": {"quantized": True},
    "bf16": {"dtype": "bfloat16"},
    "int8": {"quantized": True, "activations": "int8"},
    "read": {"map_prepared": False},
    "int8-read": {"quantized": True, "activations": "int8", "map_prepared": False},
}
BY_DEFAULT = [m for m in MODES if "map_prepared" not in MODES[m]]
"""The modes run unless ``--modes`` names others: the read ones differ only in their load."""
REAL_TEXT = Path(__file__).parents[1] / "docs" / "sampling.md"


def run_mode(source: str, mode: str, *, batches, new: int, prompt: int, reps: int,
             text: str | None, rebuild: bool = False) -> dict:  # fmt: skip
    """One mode's numbers, measured in a fresh process (``rebuild``: as a first load, which
    re-lays the file out instead of reading prepared weights, :mod:`phijax.prepared`)."""
    spec = {"source": str(source), "kwargs": MODES[mode], "batches": list(batches), "new": new,
            "prompt": prompt, "reps": reps, "text": text, "rebuild": rebuild}  # fmt: skip
    out = json.loads(_python(mode, ONE_MODE, json.dumps(spec)).strip().splitlines()[-1])
    out["load_from"] = load_from(out.pop("load_summary"))
    return out


def load_from(summary: str) -> str:
    """Where a load got its weights, from its ``load_summary``."""
    saved = (f"prepared weights {how}" for how in ("read", "mapped") if f"{how} from" in summary)
    return next(saved, "the file")


def _python(mode: str, code: str, *args: str) -> str:
    """``code`` run by this Python in a fresh process: its stdout; a RuntimeError with the end
    of its stderr if it fails."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        why = " (SIGKILL: out of memory?)" if proc.returncode == -9 else ""
        raise RuntimeError(f"mode {mode} exited with {proc.returncode}{why}\n{proc.stderr[-3000:]}")
    return proc.stdout


PREPARE = """
import json, sys, phijax
phijax.load(sys.argv[1], progress=False, **json.loads(sys.argv[2]))
"""


def prepare(source: str, mode: str) -> None:
    """Load ``mode`` once in a process of its own, untimed, so that the timed load finds
    prepared weights (:mod:`phijax.prepared`) as a user's second run does, and as llama.cpp
    maps its file from the page cache. Without it a mode whose entry an earlier run had
    evicted (``bench_model.py --phi3`` clears them) was timed re-laying the file out: SmolLM2's
    int8 load 0.62 s against 0.17 s read back, and its peak 61 MB higher."""
    _python(mode, PREPARE, str(source), json.dumps(MODES[mode]))


def run_modes(source: str, modes, **kwargs) -> dict[str, dict]:
    """:func:`run_mode` for each of ``modes``, one after another, each after :func:`prepare`."""
    results = {}
    for mode in modes:
        prepare(source, mode)
        results[mode] = run_mode(source, mode, **kwargs)
    return results


def mode_rows(results: dict[str, dict], batches, prompt: int, new: int) -> list[list[str]]:
    """Table rows: each metric per mode, with its ratio against f32 where f32 ran."""
    base = results.get("f32")
    metrics = [
        ("load_s", "load (s)", 1.0, False),
        ("load_sys_s", "load: CPU time in the kernel (s)", 1.0, False),
        ("load_peak", "load peak RSS over JAX (MB)", 1e-6, False),
        ("peak", "peak RSS, whole run (MB)", 1e-6, False),
        ("weights", "weights (MB)", 1e-6, False),
        ("first_cold", f"first token, {prompt}-token prompt, cold (s)", 1.0, False),
        ("first_warm", f"first token, {prompt}-token prompt, warm (s)", 1.0, False),
    ]
    if 1 in batches:
        metrics.insert(3, ("peak_b1", "peak RSS, load + prompt + batch 1 (MB)", 1e-6, False))
    metrics += [
        (f"decode_b{b}", f"decode batch {b}, {new} tokens (tok/s)", 1.0, True) for b in batches
    ]
    rows = []
    for key, label, scale, faster_is_higher in metrics:
        row = [label]
        for mode, r in results.items():
            value = r[key]
            ratio = ""
            if base and mode != "f32" and base[key]:
                ratio = f" ({value / base[key]:.2f}x)"
            row.append(f"{value * scale:.{1 if value * scale >= 10 else 2}f}{ratio}")
        rows.append(row + (["higher is better"] if faster_is_higher else [""]))
    if base and "top1" in base:
        row = ["top-1 = f32's, real text"]
        for r in results.values():
            same = sum(a == b for a, b in zip(r["top1"], base["top1"], strict=True))
            row.append(f"{same / len(base['top1']):.1%} of {len(base['top1'])}")
        rows.append([*row, "teacher-forced"])
    return rows


def real_text(tokens_max: int = 512) -> str:
    """A real English text (this repo's sampling doc), cut to about ``tokens_max`` words."""
    return " ".join(REAL_TEXT.read_text().split()[:tokens_max])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--modes", nargs="+", default=BY_DEFAULT, choices=list(MODES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new", type=int, default=64, help="decode tokens per run (default 64)")
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens (default 256)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-text", action="store_true", help="skip the top-1 agreement")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    from phijax import kernels

    print(f"# {cpu_name()}; {args.model}; CPU kernel: {kernels.status()}")
    text = None if args.no_text else real_text()
    results = run_modes(args.model, args.modes, batches=args.batch, new=args.new,
                        prompt=args.prompt, reps=args.reps, text=text)  # fmt: skip
    rows = mode_rows(results, args.batch, args.prompt, args.new)
    print_table(["metric", *results, "note"], rows, args.markdown)
    print_backends(results)


def print_backends(results: dict[str, dict]) -> None:
    """What each mode's load chose (the default's line is the backend policy's choice)."""
    for mode, r in results.items():
        print(f"{mode}: {r['backend']}")


if __name__ == "__main__":
    main()
