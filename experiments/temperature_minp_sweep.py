"""Temperature x min-p: how min-p keeps quality up as temperature rises.

For each (temperature, min_p) point, sample continuations of a few prompts with
SmolLM2-135M (PyPI-shipped, no hub) and measure quality (mean log-probability
per token under the model) and diversity (distinct-2 across samples). All
points use the same seeds, so by the key rule they share their random numbers:
differences come from the strategy, not from the draws. Writes a PNG and prints
a table.

    python experiments/temperature_minp_sweep.py [--model pypi:smollm2] [--samples 8] [--tokens 48] [--out sweep.png]
"""

from __future__ import annotations

import argparse
import itertools
from statistics import fmean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import phijax
from phijax import Sampler
from phijax.experiment.metrics import distinct_n

PROMPTS = [
    "Write a haiku about ice hockey",
    "Describe the smell of rain in one paragraph.",
    "Invent a name for a new color and describe it.",
    "Write the opening line of a mystery novel.",
]
TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0)
MIN_PS = (0.0, 0.05, 0.1, 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="temperature_minp_sweep.png")
    args = parser.parse_args()

    model = phijax.load(args.model)
    points = list(itertools.product(TEMPERATURES, MIN_PS))
    results = {}
    for temperature, min_p in points:
        sampler = Sampler(temperature=temperature, min_p=min_p)
        g = model.generate(PROMPTS, sampler=sampler, seed=args.seed, num_samples=args.samples,
                           max_new_tokens=args.tokens, chat=True)  # fmt: skip
        quality = fmean(lp for row in g.logprobs for lp in row)
        diversity = fmean(
            distinct_n(g.tokens[i * args.samples : (i + 1) * args.samples], 2)
            for i in range(len(PROMPTS))
        )
        results[temperature, min_p] = quality, diversity
        print(
            f"T={temperature:<4} min_p={min_p:<5} mean logprob {quality:7.3f}  distinct-2 {diversity:.3f}"
        )

    fig, (ax_q, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    for min_p in MIN_PS:
        ax_q.plot(
            TEMPERATURES,
            [results[t, min_p][0] for t in TEMPERATURES],
            marker="o",
            label=f"min_p={min_p}",
        )
        ax_d.plot(
            TEMPERATURES,
            [results[t, min_p][1] for t in TEMPERATURES],
            marker="o",
            label=f"min_p={min_p}",
        )
    ax_q.set(xlabel="temperature", ylabel="mean log-prob per token (model)", title="quality")
    ax_d.set(xlabel="temperature", ylabel="distinct-2 across samples", title="diversity")
    for ax in (ax_q, ax_d):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{model.path.name}: {len(PROMPTS)} prompts x {args.samples} samples, {args.tokens} tokens, seed {args.seed}"
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
