"""First-call (compile) times of the research and generation calls, cold and warm.

Each measurement runs in a fresh Python process, so JAX's in-memory caches are empty:

* cold: the persistent compilation cache points at a new, empty folder (every step is
  traced and compiled by XLA);
* warm: the same folder again, now holding what the cold run compiled (every step is
  traced, then read from the cache; every program is kept, as ``phijax.load`` keeps them).

Per call (``--model``, default ``pypi:smollm2``, loaded f32): ``m.logits`` of a 40-token
text; ``m.activations`` of it with one capture name (``layers.{L/2}.resid_post``);
``m.generate`` of it, 8 new tokens, greedy; the same with an edit (a steering vector
added at ``layers.{L/2}.resid_post``). ``logits@whole`` and ``activations@whole``: those calls with the whole pass as one
program (``phijax.steps.whole_pass``), for comparison with the per-layer steps. Reported:
the load (not part of the call), the
first call's seconds, the second call's (compiled, in memory), and of the first call the
jit traces, XLA compiles and seconds spent in XLA's backend compile (from
``jax.monitoring``'s compile events).

The sweep (one process, warm cache): 20 prompt lengths (70..89, one length bucket: 128) through
``logits``, ``activations`` and ``generate`` (prefill and decode); the number of jit traces
each call made after the first (0 means the 20 lengths compiled once).

    python benchmarks/bench_compile.py [--model SOURCE] [--reps 1] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_load_flags, load_argv, load_kwargs

TEXT = (
    "The old lighthouse keeper climbed the spiral stairs each evening, counting the steps "
    "as his father had, and lit the lamp that guided the fishing boats home through the fog."
)
CALLS = ("logits", "activations", "generate", "generate+edit")
# the same research calls through one program for the whole pass (phijax.steps.whole_pass),
# what logits and activations compiled before they ran one layer at a time
WHOLE = ("logits@whole", "activations@whole")
SWEEP = range(70, 90)  # one bucket of every entry point (the research calls: 65..128 → 128)


def _events():
    """Counts and seconds of JAX's compile events from here on: traces, backend compiles."""
    import jax.monitoring

    seen = {"traces": 0, "compiles": 0, "compile_s": 0.0}

    def on_event(name: str, secs: float, **_kw) -> None:
        if name == "/jax/core/compile/jaxpr_trace_duration":
            seen["traces"] += 1
        elif name == "/jax/core/compile/backend_compile_duration":
            seen["compiles"] += 1
            seen["compile_s"] += secs

    jax.monitoring.register_event_duration_secs_listener(on_event)
    return seen


def _call(m, which: str, text) -> None:
    import numpy as np

    import phijax

    layer = f"layers.{m.config.num_layers // 2}.resid_post"
    if which == "logits":
        np.asarray(m.logits(text))
    elif which == "activations":
        np.asarray(m.activations(text, layer)[layer])
    else:
        edits = None
        if which == "generate+edit":
            edits = {layer: np.full(m.config.hidden_size, 0.5, np.float32)}
        m.generate(text, max_new_tokens=8, sampler=phijax.Sampler.greedy(), edits=edits)


def child(model: str, which: str, load: dict) -> dict:
    """One call's first and second run in this (fresh) process."""
    import phijax
    from phijax import steps

    if which.endswith("@whole"):
        which = which.removesuffix("@whole")
        steps.activations = steps.whole_pass
    t0 = time.perf_counter()
    m = phijax.load(model, progress=False, **load)
    load_s = time.perf_counter() - t0
    seen = _events()
    t0 = time.perf_counter()
    _call(m, which, TEXT)
    first = time.perf_counter() - t0
    first_events = dict(seen)
    t0 = time.perf_counter()
    _call(m, which, TEXT)
    second = time.perf_counter() - t0
    return {"load_s": load_s, "first_s": first, "second_s": second, **first_events}


def sweep(model: str, load: dict) -> dict:
    """Traces per call for each of 20 prompt lengths in one bucket, after the first."""
    import phijax

    m = phijax.load(model, progress=False, **load)
    seen = _events()
    rng = __import__("numpy").random.default_rng(0)
    out = {}
    for which in ("logits", "activations", "generate"):
        counts = []
        for n in SWEEP:
            ids = rng.integers(100, 1000, n).tolist()
            before = seen["traces"]
            _call(m, which, ids)
            counts.append(seen["traces"] - before)
        out[which] = counts
    return out


def _run(model: str, mode: str, cache: Path, load_flags: list[str]) -> dict:
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # what phijax.load sets
    }
    env.pop("PHIJAX_NO_CACHE", None)
    cmd = [sys.executable, __file__, "--model", model, "--child", mode, *load_flags]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_lines() -> list[str]:
    import jax
    import jaxlib
    import numpy as np
    from _common import cpu_name

    import phijax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores ({usable} usable); load average at "
        f"start {load}",
        f"versions: python {platform.python_version()}, jax {jax.__version__}, jaxlib "
        f"{jaxlib.__version__}, phijax {phijax.__version__}, numpy {np.__version__}",
        f"JAX backend {jax.default_backend()}; env: XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '(unset)')}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--reps", type=int, default=1, help="cold/warm pairs per call (median)")
    parser.add_argument("--calls", nargs="+", default=[*CALLS, *WHOLE], choices=[*CALLS, *WHOLE])
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_load_flags(parser)
    args = parser.parse_args()
    load = load_kwargs(args)
    if args.child:
        result = (
            sweep(args.model, load)
            if args.child == "sweep"
            else child(args.model, args.child, load)
        )
        print(json.dumps(result))
        return

    from _common import print_table

    for line in machine_lines():
        print(line)
    print(f"command: python benchmarks/bench_compile.py {' '.join(sys.argv[1:])}")
    print()
    rows = []
    for which in args.calls:
        runs = {"cold": [], "warm": []}
        for _ in range(args.reps):
            cache = Path(tempfile.mkdtemp(prefix="phijax-jax-cache-"))
            try:
                runs["cold"].append(_run(args.model, which, cache, load_argv(args)))
                runs["warm"].append(_run(args.model, which, cache, load_argv(args)))
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        for kind, results in runs.items():

            def med(key, results=results):
                return statistics.median(r[key] for r in results)

            rows.append([
                which, kind, f"{med('load_s'):.2f}", f"{med('first_s'):.2f}",
                f"{med('second_s'):.2f}", f"{med('traces'):.0f}", f"{med('compiles'):.0f}",
                f"{med('compile_s'):.2f}",
            ])  # fmt: skip
            print(f"  {which} {kind}: {rows[-1][3]} s", file=sys.stderr)
    header = ["call", "cache", "load s", "first call s", "second s", "traces", "compiles",
              "XLA compile s"]  # fmt: skip
    print_table(header, rows, args.markdown)
    if not args.no_sweep:
        cache = Path(tempfile.mkdtemp(prefix="phijax-jax-cache-"))
        try:
            counts = _run(args.model, "sweep", cache, load_argv(args))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print()
        print(f"Prompt lengths {SWEEP.start}..{SWEEP.stop - 1} (one bucket), traces per call:")
        sweep_rows = [
            [which, str(c[0]), str(sum(c[1:])), " ".join(map(str, c))]
            for which, c in counts.items()
        ]
        print_table(["call", "first length", "19 others", "per length"], sweep_rows, args.markdown)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
