"""Logit lens: what each layer's residual stream would predict if the model stopped there.

Every layer's ``resid_post`` goes through the model's own final RMSNorm and
(tied) head, giving a next-token distribution per layer and position. The
heatmap's colour is the probability, at that layer, of the token the full model
finally predicts at that position (or of ``--target`` everywhere); the text in
each cell is that layer's own top-1 token. Read it bottom-up: the row where a
column turns bright is where the eventual answer becomes linearly decodable.

    python experiments/logit_lens.py [--model pypi:smollm2] [--prompt "..."] [--target " Paris"] [--out results/research]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import phijax
from phijax.model.layers import rms_norm


def lens_probs(params, resid: jax.Array, eps: float) -> jax.Array:
    """``resid [layers, seq, hidden]`` → next-token probabilities ``[layers, seq, vocab]``."""
    x = rms_norm(resid, params.final_norm[...], eps)
    return jax.nn.softmax(x @ params.head().T, axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument(
        "--prompt", default="The Eiffel Tower is in the city of Paris, the capital of"
    )
    parser.add_argument("--target", default=None, help="a one-token string to track instead")
    parser.add_argument("--out", default="results/research")
    args = parser.parse_args()
    start = time.perf_counter()

    m = phijax.load(args.model, progress=False)
    tok, n_layers = m.tokenizer, m.config.num_layers
    ids = tok.encode(args.prompt)
    names = [f"layers.{i}.resid_post" for i in range(n_layers)]
    acts = m.activations(ids, [*names, "logits"])
    resid = jnp.stack([acts[n] for n in names])  # [layers, seq, hidden]
    probs = np.asarray(
        jax.jit(lens_probs, static_argnums=2)(m.params, resid, m.config.rms_norm_eps)
    )

    if args.target is None:
        tracked = acts["logits"].argmax(-1)  # the model's own prediction at each position
    else:
        (target,) = tok.encode(args.target)
        tracked = np.full(len(ids), target)
    tracked_p = probs[:, np.arange(len(ids)), tracked]  # [layers, seq]
    top = probs.argmax(-1)  # [layers, seq]
    # the lens at the last layer is the model's own output: a built-in check
    np.testing.assert_allclose(probs[-1].argmax(-1), acts["logits"].argmax(-1))

    def label(t):
        return repr(tok.decode([int(t)]))[1:-1][:8]

    fig, ax = plt.subplots(figsize=(1.0 + 0.85 * len(ids), 0.3 * n_layers + 1.6))
    im = ax.imshow(tracked_p, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
    for layer in range(n_layers):
        for pos in range(len(ids)):
            ax.text(
                pos,
                layer,
                label(top[layer, pos]),
                ha="center",
                va="center",
                fontsize=6,
                color="black" if tracked_p[layer, pos] > 0.5 else "white",
            )
    ax.set_xticks(
        range(len(ids)),
        [f"{label(t)}\n→{label(u)}" for t, u in zip(ids, tracked, strict=True)],
        fontsize=7,
    )
    ax.set_ylabel("layer (resid_post)")
    what = "final top-1 token (below each input)" if args.target is None else repr(args.target)
    ax.set_title(f"logit lens, {m.path.name}: p({what}); text = layer's top-1", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "logit_lens.png", dpi=80)

    last, final = tracked_p[:, -1], tok.decode([int(tracked[-1])])
    hits = np.flatnonzero(top[:, -1] == tracked[-1])
    print(f"prompt {args.prompt!r}: final prediction {final!r} (p={last[-1]:.3f})")
    print(f"last position: layers where {final!r} is the lens top-1: {hits.tolist()}")
    print("p by layer:", " ".join(f"{i}:{p:.2f}" for i, p in enumerate(last) if i % 3 == 2))
    print(f"wrote {out / 'logit_lens.png'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
