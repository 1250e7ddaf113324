"""Evaluation throughput: ``phijax eval`` against lm_eval's ``hf`` model on the same GGUF.

Runs the local multiple-choice tasks (``eval_tasks/``: phijax_facts_mc and phijax_cloze_mc)
with ``phijax eval`` and with ``lm_eval run --model hf`` (transformers loading the GGUF,
f32, CPU), each in a fresh process, alternating (``--repeat N`` rounds of phijax then hf;
each engine's fastest run is reported, as a shared machine's load only slows), offline,
with the arguments ``eval_tasks/parity.py`` uses (``max_length``, ``softmax_dtype=float64``
for hf) and the same ``--batch_size`` on both sides. Reported per engine:

* process wall time: Python start, imports, model load, compiles and evaluation;
* lm_eval's ``total_evaluation_time_seconds`` from the results file (from lm_eval's
  tracker creation to saving the results: model load and evaluation, not the imports);
* loglikelihood requests (one per choice, counted from ``--log_samples``) and requests/s
  over the process wall time, and the ratio phijax / hf;
* phijax's compiles: its process runs with ``PHIJAX_NO_CACHE=1`` (no persistent JAX
  compilation cache: every program is compiled, "compiles included" is cold) and
  ``JAX_LOG_COMPILES=1``; the "Compiling" lines of its stderr are counted, and the
  "Finished XLA compilation ... in S sec" and "Finished jaxpr to MLIR module conversion"
  lines summed (XLA compile time and lowering time; tracing is not in them);
* lm_eval's index of its built-in tasks: ``lm_eval run`` reads every built-in task YAML
  at start-up (in the hf process's wall time); ``phijax eval`` skips that index when every
  task is local (``phijax.lm_eval.local_tasks``). ``TaskManager()`` is timed once more in
  this process, and the hf wall time less it is compared too.

Needs ``pip install 'phijax[eval]' torch transformers accelerate``; run from anywhere::

    python benchmarks/bench_eval.py [--model SOURCE] [--batch-size 8] [--max-length 64]
        [--repeat 1] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import cpu_name, print_table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "eval_tasks"))
from parity import read_run, run_lm_eval  # noqa: E402

TASKS = "phijax_facts_mc,phijax_cloze_mc"
XLA_SECONDS = re.compile(r"Finished XLA compilation of .* in ([0-9.]+) sec")
LOWER_SECONDS = re.compile(r"Finished jaxpr to MLIR module conversion .* in ([0-9.]+) sec")


@dataclass
class Run:
    """One engine's evaluation: times in seconds, requests counted from the logged samples."""

    wall_s: float
    lm_eval_s: float
    requests: int
    accuracy: dict[str, float]
    compiles: int | None = None
    xla_compile_s: float | None = None
    lowering_s: float | None = None

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s


def run(backend: str, gguf: Path, out: Path, *, max_length: int, batch_size: int) -> Run:
    """One evaluation in a fresh process, timed from spawn to exit; samples logged under ``out``."""
    env = {"PHIJAX_NO_CACHE": "1", "JAX_LOG_COMPILES": "1"} if backend == "phijax" else {}
    start = time.perf_counter()
    proc = run_lm_eval(
        backend, gguf, out, max_length=max_length, chat=False, batch_size=batch_size,
        tasks=TASKS, env=env,
    )  # fmt: skip
    wall = time.perf_counter() - start
    samples, results = read_run(out)
    requests = sum(len(row["resps"]) for rows in samples.values() for row in rows)
    accuracy = {task: results["results"][task]["acc,none"] for task in sorted(samples)}
    r = Run(wall, float(results["total_evaluation_time_seconds"]), requests, accuracy)
    if backend == "phijax":
        r.compiles = sum("Compiling " in line for line in proc.stderr.splitlines())
        r.xla_compile_s = sum(float(s) for s in XLA_SECONDS.findall(proc.stderr))
        r.lowering_s = sum(float(s) for s in LOWER_SECONDS.findall(proc.stderr))
    return r


def builtin_index_s() -> float:
    """Seconds lm_eval takes to index its built-in tasks (what ``lm_eval run`` does first)."""
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    TaskManager()
    return time.perf_counter() - start


def machine_lines() -> list[str]:
    import jax
    import lm_eval
    import torch
    import transformers

    import phijax

    load = os.getloadavg()
    return [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable); "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at start",
        f"versions: python {platform.python_version()}, phijax {phijax.__version__}, jax "
        f"{jax.__version__}, torch {torch.__version__} (threads {torch.get_num_threads()}), "
        f"transformers {transformers.__version__}, lm_eval {lm_eval.__version__}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pypi:smollm2", help="a phijax source of a GGUF file")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="both engines'")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_eval")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the fastest is kept")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    from phijax.hub import resolve

    gguf = Path(resolve(args.model))
    for line in machine_lines():
        print(line)
    runs: dict[str, Run] = {}
    for _ in range(args.repeat):
        for backend in ("phijax", "hf"):
            r = run(
                backend, gguf, args.out / backend, max_length=args.max_length,
                batch_size=args.batch_size,
            )  # fmt: skip
            if backend not in runs or r.wall_s < runs[backend].wall_s:
                runs[backend] = r
    ours, theirs = runs["phijax"], runs["hf"]
    index_s = builtin_index_s()
    if ours.requests != theirs.requests:
        raise RuntimeError(f"request counts differ: phijax {ours.requests}, hf {theirs.requests}")
    rows = [
        ["loglikelihood requests", str(ours.requests), str(theirs.requests), "", TASKS],
        ["process wall time", f"{ours.wall_s:.1f} s", f"{theirs.wall_s:.1f} s",
         f"{theirs.wall_s / ours.wall_s:.2f}x faster", "spawn to exit: imports, load, compiles"],
        ["**requests/s (process)**", f"{ours.requests_per_s:.2f}", f"{theirs.requests_per_s:.2f}",
         f"**{ours.requests_per_s / theirs.requests_per_s:.2f}x**", "acceptance: at least 2x"],
        ["lm_eval's built-in task index", "skipped", f"{index_s:.1f} s",
         f"{(theirs.wall_s - index_s) / ours.wall_s:.2f}x without it",
         "TaskManager() timed after the runs; phijax eval reads eval_tasks/ only"],
        ["lm_eval's total_evaluation_time_seconds", f"{ours.lm_eval_s:.1f} s",
         f"{theirs.lm_eval_s:.1f} s", f"{theirs.lm_eval_s / ours.lm_eval_s:.2f}x faster",
         "load + evaluation, not imports"],
        ["imports and startup (wall - lm_eval's)", f"{ours.wall_s - ours.lm_eval_s:.1f} s",
         f"{theirs.wall_s - theirs.lm_eval_s:.1f} s", "", ""],
        ["compiles (cold, PHIJAX_NO_CACHE=1)", str(ours.compiles), "", "",
         f"'Compiling' lines, JAX_LOG_COMPILES=1; XLA {ours.xla_compile_s:.1f} s, "
         f"lowering {ours.lowering_s:.1f} s"],
        *[[f"acc {task}", f"{ours.accuracy[task]:.4f}", f"{theirs.accuracy[task]:.4f}", "", ""]
          for task in ours.accuracy],
    ]  # fmt: skip
    header = ["metric", "phijax eval", "lm_eval hf", "phijax / hf", "note"]
    if not args.markdown:
        rows = [[c.replace("**", "") for c in row] for row in rows]
    print_table(header, rows, args.markdown)
    print(f"batch size {args.batch_size} (both), max_length {args.max_length}, f32, CPU; "
          f"fastest of {args.repeat} alternating round(s); {gguf}")  # fmt: skip
    print("command: python " + shlex.join(["benchmarks/bench_eval.py", *(argv or sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
