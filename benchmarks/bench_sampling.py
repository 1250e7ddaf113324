"""What the sampling chain costs per decode step, at batch 32 (and 1), on a real model.

For each strategy: the median time of one compiled decode call (16 steps) divided
by 16, against the same with greedy sampling (the light chain, which
``generate`` compiles for it: docs/sampling.md), and the jitted ``sampling.sample`` alone on logits of the model's
vocabulary, also as a share of the step (what the chain adds to a step). Prompts
are 64 tokens of English text by default; ``--random-prompts`` gives random token
ids, whose flat next-token distributions are the worst case for top-p and
typical-p (the nucleus is not within the 64 candidates: bisection). The cache holds a 64-token prompt; rows never stop (stop ids
are not checked by this benchmark).

    python benchmarks/bench_sampling.py [--model pypi:smollm2] [--batch 32 1] [--reps 5] [--random-prompts] [--markdown]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import add_load_flags, load_kwargs

import phijax
from phijax import Sampler, sampling, steps
from phijax.driver import DECODE_STEPS

STRATEGIES = {
    "greedy": Sampler.greedy(),
    "temperature 1.0": Sampler(),
    "top_p 0.9": Sampler(top_p=0.9),
    "top_k 40, top_p 0.95, min_p 0.05, T 0.8": Sampler(
        top_k=40, top_p=0.95, min_p=0.05, temperature=0.8
    ),
    "candle (penalty 1.2/64, T 1)": Sampler.candle(),
    "typical 0.9 + repetition 1.1": Sampler(typical_p=0.9, repetition_penalty=1.1),
    "mirostat v2 (tau 5)": Sampler(mirostat_tau=5.0),
    "DRY 0.8": Sampler(dry_multiplier=0.8),
}


def _median_time(fn, reps: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a lamp, a "
    "notebook and a thermos of tea. From the gallery he could see the whole bay: the fishing boats "
    "coming home, the gulls settling on the harbour wall, and far out, the lights of the ferry. "
    "He wrote down the weather, the ships, and anything else that seemed worth remembering."
)


def measure(
    model, b: int, reps: int, random_prompts: bool
) -> list[tuple[int, str, float, float, float]]:
    """(batch, strategy, decode step seconds, extra vs greedy, sample() alone seconds) rows."""
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    words = TEXT.split()
    if random_prompts:  # flat next-token distributions: the worst case for top-p / typical-p
        prompts = [rng.integers(100, vocab - 100, 64).tolist() for _ in range(b)]
    else:  # text: each row starts at another word of the paragraph
        prompts = [
            (model.tokenizer.encode(" ".join(words[i % 20 :]), add_bos=False) * 2)[:64]
            for i in range(b)
        ]
    cache_len = model.cache_len_for(64 + 200)
    logits, prefill_cache = model._prefill(prompts, cache_len)
    history = jnp.zeros((b, cache_len), jnp.int32).at[:, :64].set(jnp.asarray(prompts))
    base = sampling.base_keys(0, range(b))
    keys = sampling.step_keys(base, jnp.int32(3))
    stop = jnp.asarray([-1], jnp.int32)
    alone = jax.jit(sampling.sample, static_argnames=("order", "mirostat"))
    rows, greedy_step = [], None
    for name, s in STRATEGIES.items():
        params = sampling.stack([s] * b, vocab, model._breaker_mask)
        state = sampling.init_state(history, jnp.full((b,), 64, jnp.int32), params)
        chain = sampling.compiled_chain(params, s.order)  # the chain generate() compiles

        def decode(params=params, state=state, chain=chain):
            start = steps.DecodeState(
                jax.tree.map(jnp.copy, prefill_cache), jnp.zeros((b,), jnp.int32),
                jnp.copy(logits), jnp.bool_(False), jax.tree.map(jnp.copy, state),
                jnp.zeros((b,), bool), jnp.int32(1),
            )  # fmt: skip
            return steps.decode(
                model.params, start, jnp.int32(DECODE_STEPS), jnp.full((b,), 10**6, jnp.int32),
                stop, base, params, {},
                attend_len=128, steps=DECODE_STEPS, chain=chain, top_n=0,
            )  # fmt: skip

        step = _median_time(decode, reps) / DECODE_STEPS
        greedy_step = greedy_step or step
        alone_s = _median_time(
            lambda params=params, state=state, chain=chain: alone(
                keys, logits, state, params, order=chain.order, mirostat=chain.mirostat
            ),
            reps * 4,
        )
        rows.append((b, name, step, step / greedy_step - 1, alone_s))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    add_load_flags(parser)
    parser.add_argument("--random-prompts", action="store_true",
                        help="random-token prompts (flat distributions: top-p/typical-p fall back to bisection)")  # fmt: skip
    args = parser.parse_args()

    model = phijax.load(args.model, progress=False, **load_kwargs(args))
    print(
        f"CPU: {platform.processor() or platform.machine()}; jax {jax.__version__} {jax.default_backend()}; {model}"
    )
    rows = [row for b in args.batch for row in measure(model, b, args.reps, args.random_prompts)]
    if args.markdown:
        print(
            "| batch | strategy | decode step | vs greedy step | sample() alone | sample() / step |\n|---|---|---|---|---|---|"
        )
        for b, name, step, extra, chain in rows:
            print(
                f"| {b} | {name} | {step * 1e3:.1f} ms | {extra:+.1%} | {chain * 1e3:.2f} ms | {chain / step:.1%} |"
            )
    else:
        for b, name, step, extra, chain in rows:
            print(
                f"batch {b:3d}  {name:42s} step {step * 1e3:7.1f} ms  {extra:+7.1%} vs greedy   "
                f"sample() alone {chain * 1e3:6.2f} ms ({chain / step:.1%} of the step)"
            )


if __name__ == "__main__":
    main()
