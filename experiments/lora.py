"""LoRA: train low-rank adapters on SmolLM2's attention matrices to write ice-hockey haiku.

Adapters (:mod:`phijax.lora`) on every layer's ``qkv`` and ``o_proj`` (rank 8) are trained
with optax's Adam on 28 haiku in one style, the weights frozen; 4 more haiku are held out.
Left panel: the next-token loss per step on the training batch, and on the held-out haiku.
Right: greedy continuations of the prompt before and after, through the normal
``generate`` with ``m.with_params(lora.apply(m.params, adapters))``. The adapters are
saved as ``.npz``, loaded back and checked to generate the same tokens.

``--quantized`` trains over the frozen ``QuantArray`` weights of a ``quantized=True`` load
(the targeted matrices are decoded inside the loss); it then generates with the same file
loaded in f32, whose weights are the decoded codes bit for bit (a quantized model's
``with_params`` takes only its own tree: docs/research.md, "LoRA").

optax comes with flax (one of its dependencies), so ``pip install .`` is enough.

    python experiments/lora.py [--model pypi:smollm2] [--steps 40] [--quantized] [--out results/research]
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
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import phijax
from phijax import Sampler, lora

PROMPT = "A haiku about ice hockey:\n"
HAIKU = [
    "Blades carve morning ice\na puck slides through frozen breath\nthe goalie crouches",
    "Sticks clash by the boards\nthe crowd rises with the puck\nred light, then the horn",
    "Zamboni at dusk\nsmoothing the scars of the game\nthe rink shines like glass",
    "Snow sprays from a stop\nthe winger looks up the ice\na pass finds its mark",
    "Cold air in the lungs\nthree periods of thunder\nskates hum on the ice",
    "The puck drops at noon\ntwelve players chase one black stone\nthe ice keeps no score",
    "A slapshot rings out\nthe crossbar sings like a bell\nthe goalie exhales",
    "Penalty box door\ntwo minutes to watch the clock\nthe team kills it off",
    "Frozen pond at dawn\nboots for goalposts, a worn stick\nthe first goal of life",
    "Overtime again\ntired legs and heavy breath\none shot ends the night",
    "Tape around the blade\nthe old stick remembers goals\nfrom twenty winters",
    "The net bulges wide\ngloves fly up toward the rafters\nthe bench empties out",
    "Skates laced in the dark\nthe arena lights flicker\nsilence, then the roar",
    "Face-off in the zone\nthe center leans on his stick\nthe linesman waits",
    "Blue line to blue line\nthe defenseman reads the play\na poke check, a rush",
    "Breakaway at last\nonly the goalie remains\na deke to the left",
    "The glass shakes with hits\na check along the far boards\nthe puck squirts away",
    "Mask painted with wolves\nthe goalie guards the blue crease\nnothing passes through",
    "Shootout under lights\neach skater alone with fate\nthe crowd holds its breath",
    "Children on the rink\nwobbling on their first skates\ndreaming of the cup",
    "Ice chips in the air\nthe power play sets up wide\none-timer, top shelf",
    "The last shift of spring\nthe captain lifts the silver\ntears freeze on his face",
    "Hockey night on TV\ngrandfather leans toward the screen\nhe still knows the plays",
    "Cracked stick on the ice\nthe forward skates to the bench\na new one, and back",
    "Northern wind at night\nthe outdoor rink glows with lamps\npucks click until late",
    "Pulled goalie, six skaters\nthirty seconds on the clock\nthe whole rink stands up",
    "Sweat under the pads\nthe trainer tapes a sore wrist\nthe game waits for none",
    "A rebound in front\nthree sticks whack at the loose puck\nit trickles over",
    # held out: never trained on
    "Morning skate is done\nthe ice rests, scratched and quiet\nuntil the night game",
    "Wrist shot from the slot\nthe goalie's glove snaps shut fast\na save for the ages",
    "The anthem echoes\nhelmets off along the line\nthen the ice is war",
    "Snowflakes on the pond\na lone skater shoots at dusk\nthe echo answers",
]
HELD_OUT = 4
TARGETS = ("layers.*.qkv", "layers.*.o_proj")


def loss(params, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the valid positions of ``tokens [batch, seq]``."""
    logp = jax.nn.log_softmax(phijax.forward(params, tokens, lengths=lengths)[:, :-1])
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    valid = jnp.arange(1, tokens.shape[1]) < lengths[:, None]
    return (nll * valid).sum() / valid.sum()


def adapted_loss(adapters: lora.Adapters, params, tokens, lengths) -> jax.Array:
    return loss(lora.apply(params, adapters), tokens, lengths)


def make_step(optimizer: optax.GradientTransformation):
    """One jitted Adam step: ``(adapters, state, params, tokens, lengths) -> (adapters,
    state, loss)``; gradients are taken of the adapters only, the weights are an argument."""

    def step(adapters, state, params, tokens, lengths):
        value, grads = jax.value_and_grad(adapted_loss)(adapters, params, tokens, lengths)
        updates, state = optimizer.update(grads, state, adapters)
        return optax.apply_updates(adapters, updates), state, value

    return jax.jit(step)


evaluate = jax.jit(adapted_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--quantized", action="store_true")
    parser.add_argument("--out", default="results/research")
    args = parser.parse_args()
    start = time.perf_counter()

    m = phijax.load(args.model, progress=False, quantized=args.quantized)
    gen_model = phijax.load(args.model, progress=False, quantized=False) if args.quantized else m
    eos = [] if m.tokenizer.eos_id is None else [m.tokenizer.eos_id]  # teaches it to stop
    rows = [m.tokenizer.encode(PROMPT + h) + eos for h in HAIKU]
    tokens, lengths = phijax.pad(rows)  # one shape for every batch: one compile
    train_rows = np.arange(len(HAIKU) - HELD_OUT)
    held = (tokens[-HELD_OUT:], lengths[-HELD_OUT:])

    adapters = lora.init(
        m.params, TARGETS, rank=args.rank, alpha=2.0 * args.rank, key=jax.random.key(0)
    )
    optimizer = optax.adam(args.lr)
    step = make_step(optimizer)
    state = optimizer.init(adapters)
    rng = np.random.default_rng(0)
    order = np.array([], int)
    train_curve, held_curve = [], [(0, float(evaluate(adapters, m.params, *held)))]
    for i in range(1, args.steps + 1):
        if len(order) < args.batch:  # a new epoch: a fresh permutation
            order = np.concatenate([order, rng.permutation(train_rows)])
        idx, order = order[: args.batch], order[args.batch :]
        adapters, state, value = step(adapters, state, m.params, tokens[idx], lengths[idx])
        train_curve.append((i, float(value)))
        if i % 5 == 0 or i == args.steps:
            held_curve.append((i, float(evaluate(adapters, m.params, *held))))
            print(f"step {i:3d}: batch loss {value:.3f}, held-out {held_curve[-1][1]:.3f}")
    train_time = time.perf_counter() - start

    def haiku(model) -> list[int]:
        return model.generate(PROMPT, sampler=Sampler.greedy(), max_new_tokens=args.tokens).tokens[
            0
        ]

    out = Path(args.out)
    path = lora.save(out / "lora_haiku.npz", adapters)
    before = haiku(gen_model)
    after = haiku(gen_model.with_params(lora.apply(gen_model.params, adapters)))
    reloaded = haiku(gen_model.with_params(lora.apply(gen_model.params, lora.load(path))))
    assert reloaded == after, "the reloaded adapters generate other tokens"
    text = {k: m.tokenizer.decode(t) for k, t in (("before", before), ("after", after))}

    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 0.7]})
    ax.plot(*zip(*train_curve, strict=True), marker=".", label="training batch")
    ax.plot(*zip(*held_curve, strict=True), marker="o", color="black", label="held-out haiku")
    ax.set(
        xlabel="Adam step",
        ylabel="next-token cross-entropy (nats)",
        title=f"rank-{args.rank} LoRA on {', '.join(TARGETS)}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    ax_t.axis("off")
    lines = [f"greedy, {PROMPT!r}", ""]
    for k, t in text.items():
        body = [textwrap.shorten(line, 44) for line in t.strip().splitlines()]
        lines += [f"{k}:", *("   " + line for line in body), ""]
    ax_t.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8.5)
    mode = " (trained over quantized weights)" if args.quantized else ""
    fig.suptitle(f"{m.path.name}: LoRA adapters{mode}", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "lora.png", dpi=80)

    n = sum(a.size + b.size for a, b in zip(adapters.a.values(), adapters.b.values(), strict=True))
    print(f"{len(adapters.targets)} adapters, {n} parameters, rank {args.rank}")
    print(f"held-out loss {held_curve[0][1]:.3f} -> {held_curve[-1][1]:.3f}")
    print(f"training took {train_time:.1f} s (model load included)")
    for k, t in text.items():
        print(f"{k}: {t!r}")
    print(f"reloaded {path}: the same {len(after)} tokens")
    print(f"wrote {out / 'lora.png'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
