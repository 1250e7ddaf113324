"""Input-gradient saliency: which prompt tokens the next-token prediction is most sensitive to.

Takes ``jax.grad`` of the target token's log-probability at the last position
with respect to the input embeddings (``phijax.forward(params, embeds=e)``),
and scores each input token two ways: the gradient's L2 norm (how sensitive the
prediction is to that embedding, sign-free) and gradient·embedding (the
first-order change in log-prob if the token's embedding were zeroed, negated:
positive = the token supports the target). Both are local, first-order
pictures, known to be noisy; compare them with activation patching.

    python experiments/saliency.py [--model pypi:smollm2] [--prompt "..."] [--target " Paris"] [--out results/research]
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


def target_logprob(embeds: jax.Array, params, target: int) -> jax.Array:
    """log P(target) for the token after ``embeds [seq, hidden]``."""
    return jax.nn.log_softmax(phijax.forward(params, embeds=embeds)[-1])[target]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--prompt", default="The Eiffel Tower is located in the city of")
    parser.add_argument(
        "--target", default=None, help="a one-token string; default: the top-1 token"
    )
    parser.add_argument("--out", default="results/research")
    args = parser.parse_args()
    start = time.perf_counter()

    m = phijax.load(args.model, progress=False)
    tok = m.tokenizer
    ids = tok.encode(args.prompt)
    e = m.embed(ids)
    if args.target is None:
        target = int(jnp.argmax(phijax.forward(m.params, embeds=e)[-1]))
    else:
        (target,) = tok.encode(args.target)
    logprob, grad = jax.jit(jax.value_and_grad(target_logprob), static_argnums=2)(
        e, m.params, target
    )
    norm = np.asarray(jnp.linalg.norm(grad, axis=-1))
    dot = np.asarray(jnp.sum(grad * e, axis=-1))

    labels = [repr(tok.decode([t]))[1:-1] for t in ids]
    fig, (ax_n, ax_d) = plt.subplots(2, 1, figsize=(0.7 * len(ids) + 2, 5.2), sharex=True)
    ax_n.bar(range(len(ids)), norm, color="tab:blue")
    ax_n.set(ylabel="|∂ log p / ∂ embedding|")
    ax_d.bar(range(len(ids)), dot, color=np.where(dot >= 0, "tab:green", "tab:red"))
    ax_d.axhline(0, color="grey", lw=0.8)
    ax_d.set(ylabel="gradient · embedding")
    ax_d.set_xticks(range(len(ids)), labels, rotation=30, ha="right")
    for ax in (ax_n, ax_d):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{m.path.name}: saliency of log P({tok.decode([target])!r}) = {float(logprob):.2f} "
        f"after {args.prompt!r}",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "saliency.png", dpi=80)

    print(
        f"target {tok.decode([target])!r}: log p = {float(logprob):.3f} (p = {np.exp(float(logprob)):.3f})"
    )
    for label, n, d in zip(labels, norm, dot, strict=True):
        print(f"  {label!r:>12}  |grad| {n:8.4f}  grad·emb {d:+8.4f}")
    print(f"wrote {out / 'saliency.png'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
