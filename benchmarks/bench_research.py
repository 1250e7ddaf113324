"""Research throughput: one layer's residual stream over 200 sentences, phijax vs HF transformers.

The question a research user asks: how fast do I get ``layers.15.resid_post`` for a
dataset? In one process, on one machine:

* the data: ``--sentences`` (default 200) English sentences of 5-40 words (a drawn
  target, rounded up to whole clauses; 7-40 words, 8-46 tokens with seed 0), built
  deterministically from a small vocabulary and a few clause patterns by a seeded RNG
  (``--seed``); the same every run, so runs compare.
* phijax (``--model``, default ``pypi:smollm2``, f32): one
  ``m.activations(sentences, names=[NAME])`` call (strings in, so its tokenizing is
  timed too; rows run in buckets of padded length and batch size, and only the layers
  the capture needs). Cold: the first call in the process, tracing and compiling (the
  script sets ``PHIJAX_NO_CACHE=1``, so JAX's persistent compilation cache does not
  serve earlier runs' programs; ``--persistent-cache`` keeps it, for a user's second
  session). Warm: the median of ``--reps`` calls after it.
* HF transformers (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``, f32,
  transformers' own dequantization of the same GGUF, ``torch.set_num_threads(2)``):
  phijax's token ids (so both see the same tokens), sorted by length, right-padded with an
  ``attention_mask``, in batches of each of ``--hf-batch`` (default 16 and 32),
  ``torch.no_grad()``, ``output_hidden_states=True``; each row's ``hidden_states[L + 1]``
  (``hidden_states[0]`` is the embeddings) is taken as a numpy view trimmed to its length,
  as phijax returns it. One warm-up batch (the longest rows) per configuration, then the
  median of ``--reps`` passes.
  A last row runs the base model (``model.model``: no vocabulary projection) at the best
  batch size, HF's best case for this job. Ratios are against the fastest HF row.
* agreement: for a few rows (the shortest, the longest and two between), max |phijax -
  HF| over the row's values, divided by the range (max - min) of HF's values.
* memory: peak RSS of each engine's phase (its load and runs), from ``VmHWM`` reset at
  the phase's start (``ru_maxrss`` where that is not allowed), and its growth over the
  RSS at that start.

Throughput counts real tokens (padding excluded) and sentences, over the whole call.
"CPU s" is the process's user + system time during the call (both engines use 2
threads): on a shared machine, where wall time depends on what else runs, it is the
steadier comparison. (On an oversubscribed machine torch's OpenMP threads spin while
waiting: ``OMP_WAIT_POLICY=PASSIVE`` made HF up to 3x faster there; on a quiet machine
leave it unset. The ``env`` line records it.) The 2x line of issue 22 compares phijax's
warm sentences/s with the fastest HF row.

Run it where phijax, torch and transformers are installed (with the GGUF reader,
``gguf``):

    python benchmarks/bench_research.py [--model SOURCE] [--layer 15] [--sentences 200] [--hf-batch 16 32] [--reps 1] [--persistent-cache] [--markdown]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import numpy as np
from _common import add_load_flags, cpu_name, load_kwargs, print_table
from bench_model import PeakRSS, rss

import phijax
from phijax import backend, hub

SUBJECTS = (
    "the old farmer", "a young engineer", "my neighbour", "the committee", "our teacher",
    "the small dog", "a tired traveller", "the city council", "her brother", "the scientist",
    "every student", "the quiet child", "a group of musicians", "the ship's captain",
    "the new manager", "an elderly woman", "the local baker", "most of the visitors",
)  # fmt: skip
VERBS = (
    "found", "painted", "carried", "repaired", "described", "ignored", "opened", "counted",
    "remembered", "sold", "borrowed", "measured", "cleaned", "discovered", "explained",
    "photographed", "delivered", "questioned", "built", "studied",
)  # fmt: skip
OBJECTS = (
    "a wooden box", "the broken window", "several letters", "the long report", "an old map",
    "the heavy table", "a basket of apples", "the strange noise", "three red bicycles",
    "the missing key", "a bright lamp", "the garden gate", "an unusual stone",
    "the evening newspaper", "a pair of boots", "the train timetable",
)  # fmt: skip
ADVERBS = (
    "carefully", "quickly", "slowly", "without a word", "with great care", "again",
    "for the first time", "in silence", "before breakfast", "after a long delay",
)  # fmt: skip
PLACES = (
    "near the river", "in the market", "behind the station", "at the edge of the forest",
    "on the top floor", "under the bridge", "in a small village", "beside the harbour",
    "across the street", "inside the museum", "during the storm", "on a cold morning",
)  # fmt: skip
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "XLA_FLAGS")
LINKS = (", and", ", but", "; then", "because", "although", ", so", "while")


def sentences(n: int, seed: int, shortest: int = 5, longest: int = 40) -> list[str]:
    """``n`` English sentences of ``shortest``-``longest`` words: clauses (subject, verb,
    object, sometimes an adverb or a place) joined by links until a drawn target length,
    cut to ``longest`` words."""
    rng = np.random.default_rng(seed)

    def pick(options: Sequence[str]) -> str:
        return options[rng.integers(len(options))]

    out = []
    for _ in range(n):
        target = int(rng.integers(shortest, longest + 1))
        words: list[str] = []
        while len(words) < target:
            clause = [pick(SUBJECTS), pick(VERBS), pick(OBJECTS)]
            if rng.random() < 0.5:
                clause.append(pick(ADVERBS))
            if rng.random() < 0.5:
                clause.append(pick(PLACES))
            if words:
                link = pick(LINKS)
                words[-1] += link.split()[0] if link[0] in ",;" else ""
                words.extend(link.split()[-1:])
            words.extend(" ".join(clause).split())
        words = words[:longest]
        words[-1] = words[-1].rstrip(",;") + "."
        words[0] = words[0].capitalize()
        out.append(" ".join(words))
    return out


# -- timing ----------------------------------------------------------------------


@dataclass
class Run:
    engine: str
    seconds: float
    cpu: float
    sentences: int
    tokens: int
    peak: int = 0
    grew: int = 0
    note: str = ""

    @property
    def sentences_s(self) -> float:
        return self.sentences / self.seconds

    @property
    def tokens_s(self) -> float:
        return self.tokens / self.seconds


def cpu_s() -> float:
    """This process's CPU seconds so far (user + system, all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], object]) -> tuple[tuple[float, float], object]:
    """(wall seconds, CPU seconds) of one call, and its result."""
    wall, cpu = time.perf_counter(), cpu_s()
    out = fn()
    return (time.perf_counter() - wall, cpu_s() - cpu), out


def median_s(fn: Callable[[], object], reps: int) -> tuple[tuple[float, float], object]:
    """(wall, CPU) seconds of the median of ``reps`` calls by wall time (no warm-up: the
    caller does it), and the last result."""
    times, out = [], None
    for _ in range(reps):
        t, out = timed(fn)
        times.append(t)
    return sorted(times)[(reps - 1) // 2], out


# -- phijax ------------------------------------------------------------------------


def run_phijax(
    source: str, texts: list[str], name: str, reps: int, check: list[int], cold_note: str,
    load: dict,
) -> dict:  # fmt: skip
    """Load, then one cold and ``reps`` warm ``activations`` calls; the token ids, the
    captures of the ``check`` rows, and the runs."""
    peak = PeakRSS().start()
    m = phijax.load(source, progress=False, **load)
    ids = m.tokenizer.encode_batch(texts)
    tokens = sum(map(len, ids))
    cold_s, _ = timed(lambda: m.activations(texts, names=[name]))
    warm_s, out = median_s(lambda: m.activations(texts, names=[name]), reps)
    captured = {i: out[i][name] for i in check}
    used, grew = peak.peak(), peak.peak() - peak.before
    warm = Run("phijax, warm", *warm_s, len(texts), tokens, used, grew, f"median of {reps}")
    cold = Run("phijax, cold", *cold_s, len(texts), tokens, used, grew, cold_note)
    return {"ids": ids, "captured": captured, "runs": [warm, cold]}


# -- HF transformers -----------------------------------------------------------------


def hf_pass(
    model, ids: list[list[int]], batch: int, layer: int, *, warmup: bool = False
) -> list[np.ndarray]:
    """Rows sorted by length, right-padded, ``batch`` at a time → each row's
    ``hidden_states[layer + 1]`` trimmed to its length (in input order). ``warmup``: only
    the batch of the longest rows (torch compiles nothing; this sizes its allocator)."""
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    if warmup:
        order = order[-batch:]
    out: list[np.ndarray] = [np.empty(0)] * len(ids)
    with torch.no_grad():
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            width = max(len(ids[i]) for i in rows)
            tokens = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                tokens[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i])] = 1
            hidden = model(
                input_ids=tokens, attention_mask=mask, output_hidden_states=True
            ).hidden_states[layer + 1]
            values = hidden.numpy()
            for r, i in enumerate(rows):
                out[i] = values[r, : len(ids[i])]
    return out


def run_hf(
    path, ids: list[list[int]], layer: int, batches: list[int], reps: int, check: list[int]
) -> dict:
    """HF's f32 model from the same GGUF: per batch size (and the base model at the best
    one) a warm-up batch, then the median of ``reps`` passes; the check rows' hidden
    states."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    peak = PeakRSS().start()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tokens = sum(map(len, ids))
    runs, out = [], None
    attn = model.config._attn_implementation
    for batch in batches:
        hf_pass(model, ids, batch, layer, warmup=True)
        seconds, out = median_s(lambda b=batch: hf_pass(model, ids, b, layer), reps)
        note = f"CausalLM (logits too), batch {batch}, sorted, right-padded, {attn}"
        runs.append(Run(f"HF, batch {batch}", *seconds, len(ids), tokens, note=note))
    best = min(runs, key=lambda r: r.seconds)
    batch = batches[runs.index(best)]
    hf_pass(model.model, ids, batch, layer, warmup=True)
    seconds, _ = median_s(lambda: hf_pass(model.model, ids, batch, layer), reps)
    note = f"model.model: no vocabulary projection, batch {batch}"
    runs.append(Run(f"HF base, batch {batch}", *seconds, len(ids), tokens, note=note))
    used, grew = peak.peak(), peak.peak() - peak.before
    for r in runs:
        r.peak, r.grew = used, grew
    return {"runs": runs, "captured": {i: out[i] for i in check}}


# -- report ----------------------------------------------------------------------------


def machine_lines(load_at_start: str) -> list[str]:
    import torch
    import transformers

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    cache = jax.config.jax_compilation_cache_dir
    return [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores ({usable} usable); load average at "
        f"start {load_at_start}",
        f"versions: python {platform.python_version()}, jax {jax.__version__}, phijax "
        f"{phijax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, numpy {np.__version__}",
        f"JAX backend {jax.default_backend()}, dtype {np.dtype(backend.choose().compute_dtype).name}; "
        f"persistent compilation cache: {f'on ({cache})' if cache else 'off'}, "
        f"PHIJAX_NO_CACHE={os.environ.get('PHIJAX_NO_CACHE', '(unset)')}",
        "env: " + " ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ENV_KEYS),
    ]


def agreement(ours: dict[int, np.ndarray], theirs: dict[int, np.ndarray]) -> list[str]:
    lines = []
    for i, a in ours.items():
        b = theirs[i]
        span = float(b.max() - b.min())
        diff = float(np.abs(a - b).max())
        lines.append(
            f"row {i} ({len(b)} tokens): max |phijax - HF| = {diff:.3g}, "
            f"range {span:.3g}, relative {diff / span:.2e}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pypi:smollm2", help="phijax source (a GGUF)")
    parser.add_argument("--layer", type=int, default=15, help="capture layers.L.resid_post")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hf-batch", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--reps", type=int, default=1, help="timed warm runs per row")
    parser.add_argument(
        "--persistent-cache",
        action="store_true",
        help="let JAX's persistent compilation cache serve the cold call (default: off)",
    )
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    add_load_flags(parser)
    args = parser.parse_args()

    load_at_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    if not args.persistent_cache:
        os.environ["PHIJAX_NO_CACHE"] = "1"
    cold_note = "first call: " + (
        "persistent compilation cache allowed" if args.persistent_cache else "compiles"
    )
    texts = sentences(args.sentences, args.seed)
    name = f"layers.{args.layer}.resid_post"
    by_length = np.argsort([len(t) for t in texts], kind="stable")
    check = sorted({int(by_length[0]), int(by_length[-1]), 1, len(texts) // 2})

    ours = run_phijax(args.model, texts, name, args.reps, check, cold_note, load_kwargs(args))
    gc.collect()  # phijax's model and outputs, before HF loads
    theirs = run_hf(
        hub.resolve(args.model), ours["ids"], args.layer, args.hf_batch, args.reps, check
    )

    hf_best = max(theirs["runs"], key=lambda r: r.sentences_s)
    rows = []
    for r in [*ours["runs"], *theirs["runs"]]:
        rows.append(
            [
                r.engine,
                f"{r.sentences_s:.1f}",
                f"{r.tokens_s:.0f}",
                f"{r.seconds:.2f}",
                f"{r.cpu:.2f}",
                f"{r.sentences_s / hf_best.sentences_s:.2f}x",
                f"{r.peak / 1e9:.2f} GB (+{r.grew / 1e9:.2f})",
                r.note,
            ]
        )
    lengths = [len(i) for i in ours["ids"]]
    for line in machine_lines(load_at_start):
        print(line)
    print(
        f"data: {len(texts)} sentences (seed {args.seed}), {sum(lengths)} tokens, "
        f"{min(lengths)}-{max(lengths)} per sentence; capture {name}; model {args.model}, f32"
    )
    print("command: " + " ".join([os.path.basename(sys.executable), *sys.argv]))
    header = [
        "engine",
        "sentences/s",
        "tokens/s",
        "seconds",
        "CPU s",
        "vs best HF",
        "peak RSS (+phase)",
    ]
    print_table([*header, "note"], rows, args.markdown)
    warm, best_cpu = ours["runs"][0], min(theirs["runs"], key=lambda r: r.cpu)
    print(
        f"phijax warm vs the fastest HF row: {hf_best.seconds / warm.seconds:.2f}x by wall "
        f"time ({hf_best.engine}), {best_cpu.cpu / warm.cpu:.2f}x by CPU time ({best_cpu.engine})"
    )
    for line in agreement(ours["captured"], theirs["captured"]):
        print(line)
    memory = PeakRSS().method
    print(
        f"peak RSS: {memory}; (+phase) = growth over the RSS at the phase's start ({rss() / 1e9:.2f} GB now)"
    )


if __name__ == "__main__":
    main()
