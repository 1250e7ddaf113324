"""Where a process's memory goes: RSS and peak RSS after each stage of a bench_modes run.

One process: import, JAX start, ``phijax.load`` (``--mode``, one of ``bench_modes.py``'s), then the stages of
``bench_modes.py``'s run (a cold and a warm batch-1 generate of a ``--prompt``-token
prompt, a generate per ``--batch`` of ``--new`` tokens, ``logits`` of a prompt). After each
stage it prints VmRSS and the stage's own peak (VmHWM, reset before the stage through
``/proc/self/clear_refs``), with the resident set split into anonymous memory (the heap:
weights, caches, XLA's buffers and temporaries) and file-backed pages (the mapped
libraries and any mapped model file: reclaimable, but counted in RSS as in llama.cpp's),
and ``--trim`` also what ``malloc_trim(0)`` gives back (freed heap that glibc kept) and, at
the end, what dropping JAX's compiled programs gives back (``jax.clear_caches()``). With
``--programs`` it prints the compiled prefill and decode programs' memory analysis (XLA's
temporaries besides their arguments and outputs).

    python benchmarks/rss_stages.py PATH.gguf [--mode quantized] [--batch 1 8 32] [--trim] [--programs]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import time

from bench_modes import MODES

STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def status() -> dict[str, int]:
    """``STATUS_KEYS`` of /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in STATUS_KEYS:
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Stages:
    """Prints one line per stage: its time, RSS after it (anon + file), its own peak."""

    def __init__(self, trim: bool) -> None:
        self.trim = trim
        self.libc = ctypes.CDLL("libc.so.6") if trim else None
        self.whole = 0
        print(f"{'stage':44} {'s':>6} {'RSS':>7} {'anon':>7} {'file':>6} {'peak':>7}"
              + (f" {'trimmed':>8}" if trim else ""))  # fmt: skip

    def run(self, name: str, fn):
        gc.collect()
        reset_peak()
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        s = status()
        self.whole = max(self.whole, s["VmHWM"])
        line = (f"{name:44} {seconds:6.1f} {gb(s['VmRSS'])} {gb(s['RssAnon'])} "
                f"{gb(s['RssFile'], 6)} {gb(s['VmHWM'])}")  # fmt: skip
        if self.trim:
            line += f" {gb(self.trimmed_rss(), 8)}"
        print(line, flush=True)
        return value

    def trimmed_rss(self) -> int:
        """VmRSS after garbage collection and ``malloc_trim(0)``."""
        gc.collect()
        self.libc.malloc_trim(0)
        return status()["VmRSS"]


def gb(n: int, width: int = 7) -> str:
    return f"{n / 1e9:{width}.2f}"


def print_programs(m, prompt: list[int], batch: int) -> None:
    """XLA's memory analysis of the prefill and decode programs a ``batch``-row request of
    ``prompt`` compiles (lowered again here: the same shapes hit JAX's caches)."""
    import jax

    from phijax import steps

    captured = []
    original = steps.compile_later

    def keep(step, *args, **kwargs):
        fut = original(step, *args, **kwargs)
        if fut is not None:
            captured.append(("decode", fut))
        return fut

    prefill = steps.prefill

    def spy(*args, **kwargs):
        captured.append(("prefill", prefill.lower(*args, **kwargs).compile()))
        return prefill(*args, **kwargs)

    steps.compile_later, steps.prefill = keep, spy
    try:
        m.generate([prompt] * batch, max_new_tokens=2)
    finally:
        steps.compile_later, steps.prefill = original, prefill
    for name, c in captured:
        c = c.result() if hasattr(c, "result") else c
        a = c.memory_analysis()
        print(f"  {name} b{batch}: arguments {a.argument_size_in_bytes / 1e9:.3f} GB, outputs "
              f"{a.output_size_in_bytes / 1e9:.3f}, aliased {a.alias_size_in_bytes / 1e9:.3f}, "
              f"temporaries {a.temp_size_in_bytes / 1e9:.3f}, generated code "
              f"{a.generated_code_size_in_bytes / 1e6:.1f} MB")  # fmt: skip
    del jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--mode", choices=list(MODES), default="default")
    parser.add_argument("--prompt", type=int, default=32, help="batch-1 prompt tokens (32)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new", type=int, default=16, help="new tokens per batched run (16)")
    parser.add_argument("--trim", action="store_true", help="also RSS after malloc_trim(0)")
    parser.add_argument("--programs", action="store_true", help="XLA memory analysis")
    parser.add_argument(
        "--serial-compile",
        action="store_true",
        help="compile decode at its first call, not beside the prefill's compile",
    )
    args = parser.parse_args()

    if args.serial_compile:
        from phijax import steps

        steps.compile_later = lambda *args, **kwargs: None
    stages = Stages(args.trim)
    jax, phijax = stages.run(
        "import jax, phijax", lambda: (__import__("jax"), __import__("phijax"))
    )
    stages.run("JAX started", lambda: jax.numpy.zeros(1).block_until_ready())
    base = status()["VmRSS"]
    m = stages.run(f"load ({args.mode})",
                   lambda: phijax.load(args.path, progress=False, **MODES[args.mode]))  # fmt: skip
    weights = sum(x.nbytes for x in jax.tree.leaves(m.params))
    print(f"  weights {weights / 1e9:.2f} GB")
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = m.config.vocab_size
    greedy = phijax.Sampler.greedy()
    prompt = rng.integers(100, vocab - 100, args.prompt).tolist()
    if args.programs:
        for b in args.batch:
            print_programs(m, rng.integers(100, vocab - 100, 20).tolist(), b)
    for run in ("cold", "warm"):
        stages.run(f"generate b1, {args.prompt}-token prompt, 1 token, {run}",
                   lambda: m.generate(prompt, max_new_tokens=1, sampler=greedy))  # fmt: skip
    for b in args.batch:
        prompts = [rng.integers(100, vocab - 100, 20).tolist() for _ in range(b)]
        kw = {"max_new_tokens": args.new + 1, "sampler": phijax.Sampler(temperature=1.0)}
        for run in ("first", "second"):
            stages.run(f"generate b{b}, {args.new + 1} tokens, {run}",
                       lambda p=prompts, kw=kw: m.generate(p, **kw))  # fmt: skip
    stages.run(f"logits, {args.prompt} tokens", lambda: np.asarray(m.logits(prompt)))
    print(f"whole-run peak {stages.whole / 1e9:.2f} GB; over JAX started "
          f"{(stages.whole - base) / 1e9:.2f} GB")  # fmt: skip
    if args.trim:  # what the compiled programs of the run hold: dropped with JAX's caches
        before = status()["VmRSS"]
        jax.clear_caches()
        print(f"jax.clear_caches() gives back {(before - stages.trimmed_rss()) / 1e9:.2f} GB "
              "(the compiled programs held, after malloc_trim)")  # fmt: skip


if __name__ == "__main__":
    main()
