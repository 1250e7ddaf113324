"""phijax's lm_eval adapter against lm_eval's ``hf`` model on the same GGUF, request by request.

Runs ``phijax eval`` and ``lm_eval run --model hf`` (transformers loading the GGUF, f32, CPU)
on the local tasks of this folder, offline, each in its own process with ``--log_samples``,
then compares every request: log-likelihoods (multiple choice and rolling) within
``--atol``, identical ``is_greedy`` flags, identical generations, identical request
arguments (so the chat template renders alike) and equal task metrics. Needs
``pip install 'phijax[eval]' torch transformers accelerate``; run from the repository root::

    python eval_tasks/parity.py                       # SmolLM2-135M-Instruct from PyPI
    python eval_tasks/parity.py --apply_chat_template
    python eval_tasks/parity.py --model path/to/model.gguf --max-length 128

Prints the largest differences and exits 1 if any check fails. ``--max-length 64`` (the
default) makes the rolling task's windows roll and truncates long generation prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TASKS = "phijax_local"
# f32 on both sides, summed in different orders (tests/numerics.py): SmolLM2's logits agree
# to ~1e-4 and per-token log-probabilities to ~3e-5, without bias, so a continuation's sum
# and a 160-token text's sum agree within 1e-3. HF's f32 log_softmax over SmolLM2's 49152
# logits is biased (+9e-6 per token against its own float64 softmax, which phijax's f32
# logsumexp matches to 1e-7 per token), which would add 1.5e-3 over such a text: the hf run
# uses lm_eval's softmax_dtype=float64.
ATOL = 1e-3


@dataclass
class Parity:
    """Per-request comparison of two lm_eval runs."""

    requests: dict[str, int] = field(default_factory=dict)  # per output type
    max_loglik_diff: float = 0.0
    greedy_mismatches: list[str] = field(default_factory=list)
    generation_mismatches: list[str] = field(default_factory=list)
    argument_mismatches: list[str] = field(default_factory=list)
    metric_mismatches: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    generations: list[str] = field(default_factory=list)
    greedy_true: int = 0  # loglikelihood requests whose continuation is greedy

    def failures(self, atol: float) -> list[str]:
        out = [*self.argument_mismatches, *self.greedy_mismatches]
        out += [*self.generation_mismatches, *self.metric_mismatches]
        if self.max_loglik_diff > atol:
            out.append(f"max |Δ loglik| {self.max_loglik_diff:.2e} > {atol:.0e}")
        return out


def command(
    backend: str,
    gguf: Path,
    out: Path,
    *,
    max_length: int,
    batch_size: int,
    chat: bool = False,
    tasks: str = TASKS,
) -> list[str]:
    """The command line of one engine ("phijax" or "hf") on the same GGUF, f32 on CPU, its
    samples logged under ``out``."""
    common = [
        "--tasks", tasks, "--include_path", str(ROOT / "eval_tasks"), "--log_samples",
        "--output_path", str(out), "--batch_size", str(batch_size), "--device", "cpu",
    ]  # fmt: skip
    if chat:
        common.append("--apply_chat_template")
    if backend == "phijax":
        argv = ["-m", "phijax.cli", "eval", "--model", str(gguf)]
        argv += ["--model_args", f"max_length={max_length}"]
    else:
        args = f"pretrained={gguf.parent},gguf_file={gguf.name},dtype=float32"
        args += f",softmax_dtype=float64,max_length={max_length}"
        argv = ["-m", "lm_eval", "run", "--model", "hf", "--model_args", args]
    return [sys.executable, *argv, *common]


def run_lm_eval(
    backend: str,
    gguf: Path,
    out: Path,
    *,
    max_length: int,
    chat: bool,
    batch_size: int,
    tasks: str = TASKS,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """One evaluation in a fresh process, offline, samples logged under ``out`` (emptied);
    ``env``: more environment variables for it. Returns the finished process."""
    shutil.rmtree(out, ignore_errors=True)
    full = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    full["TOKENIZERS_PARALLELISM"] = "false"
    argv = command(
        backend, gguf, out, max_length=max_length, batch_size=batch_size, chat=chat, tasks=tasks
    )
    proc = subprocess.run(argv, cwd=ROOT, env=full, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def read_run(out: Path) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The logged samples per task (ordered by doc id) and the results file of one run."""
    samples = {}
    for path in sorted(out.rglob("samples_*.jsonl")):
        task = path.name[len("samples_") :].rsplit("_", 1)[0]
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    [results_file] = sorted(out.rglob("results_*.json"))
    return samples, json.loads(results_file.read_text())


def compare(ours: Path, theirs: Path) -> Parity:
    """Request-by-request comparison of a phijax run (``ours``) with an hf run. Logged
    samples hold numbers as strings (lm_eval's JSON writer); the task's output type says
    what each response is."""
    p = Parity()
    (s_ours, r_ours), (s_theirs, r_theirs) = read_run(ours), read_run(theirs)
    if sorted(s_ours) != sorted(s_theirs):
        p.argument_mismatches.append(f"tasks {sorted(s_ours)} vs {sorted(s_theirs)}")
        return p
    for task in sorted(s_ours):
        kind = r_ours["configs"][task]["output_type"]
        for a, b in zip(s_ours[task], s_theirs[task], strict=True):
            where = f"{task} doc {a['doc_id']}"
            if a["arguments"] != b["arguments"]:
                p.argument_mismatches.append(f"{where}: request arguments differ")
            for i, (ra, rb) in enumerate(zip(a["resps"], b["resps"], strict=True)):
                ra, rb = ra[0], rb[0]
                p.requests[kind] = p.requests.get(kind, 0) + 1
                if kind == "generate_until":
                    p.generations.append(ra)
                    if ra != rb:
                        p.generation_mismatches.append(f"{where}: {ra!r} vs hf {rb!r}")
                elif kind == "loglikelihood_rolling":
                    p.max_loglik_diff = max(p.max_loglik_diff, abs(float(ra) - float(rb)))
                else:
                    p.max_loglik_diff = max(p.max_loglik_diff, abs(float(ra[0]) - float(rb[0])))
                    if str(ra[1]) != str(rb[1]):
                        p.greedy_mismatches.append(f"{where} request {i}: {ra[1]} vs hf {rb[1]}")
                    p.greedy_true += str(ra[1]) == "True"
        for key, value in r_ours["results"][task].items():
            if "," not in key or "stderr" in key or not isinstance(value, (int, float)):
                continue
            other = r_theirs["results"][task][key]
            p.metrics.setdefault(task, {})[key] = value
            perplexity = "perplexity" in key or "bits_per_byte" in key
            same = math.isclose(value, other, rel_tol=1e-5) if perplexity else value == other
            if not same:
                p.metric_mismatches.append(f"{task} {key}: {value} vs hf {other}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pypi:smollm2", help="a phijax source of a GGUF file")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--apply_chat_template", action="store_true")
    parser.add_argument("--batch-size", type=int, default=8, help="phijax's (hf runs 1 by 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "eval_parity")
    parser.add_argument("--atol", type=float, default=ATOL)
    args = parser.parse_args(argv)
    from phijax.hub import resolve

    gguf = Path(resolve(args.model))
    tag = "chat" if args.apply_chat_template else "plain"
    dirs = {b: args.out / f"{tag}-{b}" for b in ("phijax", "hf")}
    for backend, out in dirs.items():
        run_lm_eval(
            backend, gguf, out, max_length=args.max_length, chat=args.apply_chat_template,
            batch_size=args.batch_size if backend == "phijax" else 1,
        )  # fmt: skip
    p = compare(dirs["phijax"], dirs["hf"])
    print(f"requests: {p.requests}")
    print(f"max |Δ loglik|: {p.max_loglik_diff:.3e} (tolerance {args.atol:.0e})")
    print(f"greedy continuations: {p.greedy_true}; generations: {p.generations}")
    for task, metrics in p.metrics.items():
        print(task, {k: round(v, 6) for k, v in metrics.items()})
    failures = p.failures(args.atol)
    for f in failures:
        print("MISMATCH", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
