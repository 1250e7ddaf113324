"""Named points inside the forward pass: where activations are read and edited.

Names (``[seq, hidden]`` per sequence unless stated; a batch adds a leading
``[batch]`` axis):

- ``embed``: the token embeddings;
- ``layers.{i}.resid_pre``: the residual stream entering layer ``i``;
- ``layers.{i}.attn_out``: the attention block's output, after ``o_proj``;
- ``layers.{i}.mlp_out``: the MLP block's output, after ``down``;
- ``layers.{i}.resid_post``: ``resid_pre + attn_out + mlp_out``, leaving layer ``i``;
- ``layers.{i}.attn_weights``: softmax probabilities ``[heads, seq, keys]`` (read only);
- ``final``: after the final norm; ``logits`` ``[seq, vocab]``.

An edit is an array, *added* to the value (it broadcasts to ``[seq, hidden]``:
a steering vector ``[hidden]``, or one row per position; for a batch, also
``[batch, 1 | seq, hidden]``, one edit per row), or a function
``fn(x [seq, hidden], positions [seq]) -> x`` that *replaces* it (activation
patching); in a batch a function sees one row at a time (it is vmapped over the
rows, padded positions included). Arrays are traced, so new values never
recompile; functions are static (a new function object compiles anew). Edits
apply before the value is read, so a capture shows the edited value and later
layers see it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phijax.errors import ConfigError

LAYER_POINTS = ("resid_pre", "attn_out", "mlp_out", "resid_post", "attn_weights")
READ_ONLY = frozenset({"attn_weights"})
_LAYER_NAME = re.compile(r"layers\.(\d+)\.(\w+)")

EditFns = tuple[tuple[str, Callable[[jax.Array, jax.Array], jax.Array]], ...]


def all_names(num_layers: int) -> tuple[str, ...]:
    """Every readable point, in the order the forward pass reaches them."""
    per_layer = [f"layers.{i}.{p}" for i in range(num_layers) for p in LAYER_POINTS]
    return ("embed", *per_layer, "final", "logits")


def check_name(name: str, num_layers: int, *, editable: bool = False) -> str:
    """``name`` if it names a point of a ``num_layers``-layer model, else ConfigError with a hint."""
    m = _LAYER_NAME.fullmatch(name) if isinstance(name, str) else None
    valid = name in ("embed", "final", "logits") or (
        m is not None and int(m[1]) < num_layers and m[2] in LAYER_POINTS
    )
    if not valid:
        close = difflib.get_close_matches(str(name), all_names(num_layers), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{name!r} is not an activation name of this {num_layers}-layer model.{hint} Names: "
            f"'embed', 'layers.{{i}}.{{{'|'.join(LAYER_POINTS)}}}' (i < {num_layers}), "
            "'final', 'logits'."
        )
    if editable and m is not None and m[2] in READ_ONLY:
        raise ConfigError(
            f"{name!r} can be read but not edited; edit 'layers.{m[1]}.attn_out' instead."
        )
    return name


def depth(names: Iterable[str], num_layers: int, head: bool) -> int:
    """How many layers a pass must run to produce ``names``: all of them for the head,
    ``final`` or ``logits``; else up to the deepest layer named (0 for ``embed`` alone)."""
    names = list(names)
    if head or "final" in names or "logits" in names:
        return num_layers
    return max((int(m[1]) + 1 for n in names if (m := _LAYER_NAME.fullmatch(n))), default=0)


def split_edits(
    edits: Mapping[str, Any] | None, num_layers: int
) -> tuple[dict[str, jax.Array], EditFns]:
    """User edits → (arrays to add, traced) and (name, fn) pairs to apply (static, hashable)."""
    arrays: dict[str, jax.Array] = {}
    fns = []
    for name, edit in (edits or {}).items():
        check_name(name, num_layers, editable=True)
        if callable(edit):
            fns.append((name, edit))
        else:
            try:
                arrays[name] = jnp.asarray(edit, jnp.float32)
            except (TypeError, ValueError) as e:
                raise ConfigError(
                    f"edits[{name!r}]: give an array (added) or a function fn(x, positions) -> x "
                    f"(replaces); got {type(edit).__name__}: {e}"
                ) from None
    return arrays, tuple(sorted(fns, key=lambda item: item[0]))


def check_broadcast(arrays: Mapping[str, jax.Array], shape: tuple[int, ...]) -> None:
    """ConfigError unless every added edit (but a ``logits`` bias) broadcasts to ``shape``
    (``[seq, hidden]``, or ``[batch, seq, hidden]`` for a batch)."""
    for name, a in arrays.items():
        if name == "logits":
            continue
        try:
            fits = np.broadcast_shapes(a.shape, shape) == tuple(shape)
        except ValueError:
            fits = False
        if not fits:
            raise ConfigError(
                f"edits[{name!r}] has shape {list(a.shape)}, which does not broadcast to "
                f"{list(shape)}; give a [hidden] vector"
                + (
                    ", [seq, hidden] rows, or per row [batch, 1 or seq, hidden]."
                    if len(shape) == 3
                    else " or [seq, hidden] rows."
                    if shape[0] > 1
                    else " (generate() edits every position)."
                )
            )


class Hooks:
    """The edits and captures of one forward pass, applied at trace time.

    Values are batched ``[batch, seq, ...]``; a function edit sees one sequence at a
    time (``jax.vmap`` over the batch). ``captured`` collects what was asked for.
    """

    def __init__(
        self,
        arrays: Mapping[str, jax.Array] | None = None,
        fns: EditFns = (),
        capture: frozenset[str] = frozenset(),
    ):
        self.arrays = dict(arrays or {})
        self.fns = dict(fns)
        self.capture = capture
        self.captured: dict[str, jax.Array] = {}
        self.names = frozenset(self.arrays) | frozenset(self.fns) | capture

    @property
    def per_layer(self) -> bool:
        """Whether any point inside a layer is edited or read (then layers are unrolled)."""
        return any(n.startswith("layers.") for n in self.names)

    def wants(self, name: str) -> bool:
        return name in self.names

    @property
    def reads_attention_weights(self) -> bool:
        """Whether any layer's ``attn_weights`` is edited or read (only the pure attention
        path computes them)."""
        return any(n.endswith(".attn_weights") for n in self.names)

    def __call__(self, name: str, x: jax.Array, positions: jax.Array) -> jax.Array:
        """``x [batch, seq, ...]`` at point ``name``, edited, and recorded if asked for."""
        if name in self.arrays:
            x = (x + self.arrays[name]).astype(x.dtype)
        if name in self.fns:
            x = jax.vmap(self.fns[name])(x, positions).astype(x.dtype)
        if name in self.capture:
            self.captured[name] = x
        return x


NO_HOOKS = Hooks()
