"""Low-rank adapters (LoRA) over a model's weight matrices: init, apply, save, load.

An adapter on a weight ``W [out, in]`` is a pair ``a [rank, in]``, ``b [out, rank]``; the
adapted weight is ``W + scale · b @ a`` with ``scale = alpha / rank`` (Hu et al. 2021,
arXiv:2106.09685). ``b`` starts at zero, so a fresh adapter changes nothing, bit for bit.
:class:`Adapters` is a pytree of f32 arrays: ``jax.grad`` and optax optimizers take it as
it is, while the model's weights stay frozen (an argument the gradient is not taken of).

Targets are named ``layers.{i}.{qkv|o_proj|gate_up|down}``, matched with shell wildcards
(``"layers.*.o_proj"``). ``qkv`` and ``gate_up`` are the fused matrices, so one adapter
there is one rank-``rank`` update shared by q, k and v (or gate and up): ``a`` is common,
``b``'s rows split like the matrix's (docs/research.md, "The parameter tree").

:func:`apply` merges the adapters into the tree: dense leaves keep their tree, shapes and
dtypes, so ``m.with_params(apply(m.params, adapters))`` reuses every compiled step. A
targeted :class:`~phijax.quant.QuantArray` (``quantized=True`` loads) becomes its
decoded weight plus the update, a dense array of the compute dtype: that tree runs in
:func:`phijax.forward` (training over the frozen codes works), but it is not the quantized
model's tree, so ``with_params`` refuses it; generate with the same file loaded without
``quantized=True``, whose weights are the decoded codes bit for bit.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from phijax.errors import ConfigError
from phijax.model.phi3 import Phi3, layer_shapes
from phijax.quant import QuantArray, dense

MATRICES = ("qkv", "o_proj", "gate_up", "down")
FORMAT = "phijax-lora/1"


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Adapters:
    """``a[name] [rank, in]`` and ``b[name] [out, rank]`` (f32) per targeted matrix ``name``
    (``layers.{i}.{matrix}``); ``rank`` and ``alpha`` are static: the update is
    ``alpha / rank · b @ a``."""

    a: dict[str, jax.Array]
    b: dict[str, jax.Array]
    rank: int = field(metadata={"static": True})
    alpha: float = field(metadata={"static": True})

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def targets(self) -> tuple[str, ...]:
        """The adapted matrices' names, sorted."""
        return tuple(sorted(self.a))


def names(params: Phi3) -> tuple[str, ...]:
    """Every matrix an adapter can target: ``layers.{i}.{matrix}``, in layer order."""
    return tuple(f"layers.{i}.{p}" for i in range(params.config.num_layers) for p in MATRICES)


def select(params: Phi3, targets: str | Sequence[str]) -> tuple[str, ...]:
    """The names matched by ``targets`` (shell patterns), in layer order; ConfigError for a
    pattern that matches nothing, naming the valid forms."""
    patterns = (targets,) if isinstance(targets, str) else tuple(targets)
    valid = names(params)
    if not patterns:
        raise ConfigError(f"targets: none given; e.g. 'layers.*.o_proj' ({_forms(params)}).")
    for pattern in patterns:
        if not isinstance(pattern, str) or not fnmatch.filter(valid, pattern):
            close = difflib.get_close_matches(str(pattern), valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"targets: {pattern!r} matches no weight matrix of this "
                f"{params.config.num_layers}-layer model.{hint} {_forms(params)}."
            )
    return tuple(n for n in valid if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def _forms(params: Phi3) -> str:
    last = params.config.num_layers - 1
    return (
        f"Targets are 'layers.{{i}}.{{{'|'.join(MATRICES)}}}' with i in 0..{last}, and may use "
        "shell wildcards: 'layers.*.o_proj', 'layers.1[0-5].qkv'"
    )


def init(
    params: Phi3,
    targets: str | Sequence[str],
    *,
    rank: int = 8,
    alpha: float = 16.0,
    key: jax.Array,
) -> Adapters:
    """Fresh adapters for the matrices ``targets`` names: ``a`` Gaussian with standard
    deviation ``1 / sqrt(in)`` (so ``a @ x`` keeps the input's scale), ``b`` zero."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank: got {rank!r}; give a positive int (e.g. 8).")
    if not alpha > 0:
        raise ConfigError(f"alpha: got {alpha!r}; give a positive number (e.g. 2 * rank).")
    shapes = layer_shapes(params.config)
    chosen = select(params, targets)
    a, b = {}, {}
    for name, k in zip(chosen, jax.random.split(key, len(chosen)), strict=True):
        out, inp = shapes[name.rsplit(".", 1)[1]]
        a[name] = jax.random.normal(k, (rank, inp), jnp.float32) / np.sqrt(inp)
        b[name] = jnp.zeros((out, rank), jnp.float32)
    return Adapters(a, b, rank, float(alpha))


def delta(adapters: Adapters, name: str) -> jax.Array:
    """The update ``scale · b @ a`` ``[out, in]`` of one target, f32."""
    ab = jnp.matmul(adapters.b[name], adapters.a[name], precision=jax.lax.Precision.HIGHEST)
    return adapters.scale * ab


def apply(params: Phi3, adapters: Adapters) -> Phi3:
    """``params`` with ``W + scale · b @ a`` at every targeted matrix; pure (``jit``, ``grad``
    with respect to ``adapters``). Dense weights are updated in f32 and cast back to their
    dtype (a bf16 weight rounds the sum to bf16), so the tree, shapes and dtypes are
    ``params``'; a targeted QuantArray becomes a dense array of the compute dtype (see the
    module docstring for what that means in quantized mode)."""
    shapes = layer_shapes(params.config)
    valid = set(names(params))
    for name in adapters.targets:
        if name not in valid:
            raise ConfigError(
                f"adapters: target {name!r} is not a matrix of this model. {_forms(params)}."
            )
        out, inp = shapes[name.rsplit(".", 1)[1]]
        want = {"a": (adapters.rank, inp), "b": (out, adapters.rank)}
        got = {"a": adapters.a[name].shape, "b": adapters.b[name].shape}
        if got != want:
            raise ConfigError(
                f"adapters: {name!r} has a {list(got['a'])}, b {list(got['b'])}; this model "
                f"needs a {list(want['a'])}, b {list(want['b'])} (adapters made for another "
                "model?)."
            )
    by_matrix: dict[str, list[tuple[int, str]]] = {}
    for name in adapters.targets:
        _, layer, matrix = name.split(".")
        by_matrix.setdefault(matrix, []).append((int(layer), name))

    def update(path, w):
        keys = [getattr(k, "name", getattr(k, "idx", None)) for k in path]
        if params.layout == "layers" and len(keys) == 4 and keys[0] == "layers":
            name = f"layers.{keys[1]}.{keys[2]}"
            if name in adapters.a:
                return _merged(dense(w, params.dtype), delta(adapters, name))
        elif params.layout == "stacked" and len(keys) == 2 and keys[0] in by_matrix:
            stack = dense(w, params.dtype)
            layers, names = zip(*by_matrix[keys[0]], strict=True)
            rows = np.asarray(layers)  # one scatter: each layer once, as the names are unique
            deltas = jnp.stack([delta(adapters, n) for n in names])
            return stack.at[rows].set(_merged(stack[rows], deltas))
        return w

    return jax.tree_util.tree_map_with_path(
        update, params, is_leaf=lambda x: isinstance(x, QuantArray)
    )


def _merged(w: jax.Array, d: jax.Array) -> jax.Array:
    """``w + d`` computed in f32, in ``w``'s dtype."""
    return (w.astype(jnp.float32) + d).astype(w.dtype)


def save(path: str | Path, adapters: Adapters) -> Path:
    """Writes ``adapters`` to ``path`` (an ``.npz``: ``{name}.a``, ``{name}.b`` and a JSON
    ``config`` with the format, targets, rank and alpha); returns the path."""
    path = Path(path)
    config = {
        "format": FORMAT,
        "targets": list(adapters.targets),
        "rank": adapters.rank,
        "alpha": adapters.alpha,
    }
    arrays = {
        f"{n}.{part}": np.asarray(getattr(adapters, part)[n])
        for n in adapters.targets
        for part in ("a", "b")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object: numpy does not append ".npz" to the name
        np.savez(f, config=np.asarray(json.dumps(config)), **arrays)
    return path


def load(path: str | Path) -> Adapters:
    """Adapters written by :func:`save` (the same arrays, bit for bit)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"LoRA file {str(path)!r} does not exist; write it with lora.save.")
    try:
        with np.load(path) as z:
            config = json.loads(str(z["config"]))
            if config.get("format") != FORMAT:
                raise ValueError(f"format {config.get('format')!r}")
            targets, rank, alpha = config["targets"], int(config["rank"]), float(config["alpha"])
            a = {n: jnp.asarray(z[f"{n}.a"]) for n in targets}
            b = {n: jnp.asarray(z[f"{n}.b"]) for n in targets}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{str(path)!r} is not a LoRA file of phijax ({FORMAT}): {e}; write one with "
            "phijax.lora.save."
        ) from e
    for n in targets:
        if a[n].ndim != 2 or b[n].ndim != 2 or a[n].shape[0] != rank or b[n].shape[1] != rank:
            raise ConfigError(
                f"{str(path)!r}: {n!r} has a {list(a[n].shape)}, b {list(b[n].shape)}, not "
                f"a [{rank}, in], b [out, {rank}] for its rank {rank}."
            )
    return Adapters(a, b, rank, alpha)
