"""The Phi-3 weights, written once: each parameter's name, shape, logical axes, dtype rule and
GGUF source tensors (:data:`WEIGHTS`, one :class:`WeightSpec` per parameter).

Everything else reads this table: the Flax module builds its parameters from it
(:mod:`phijax.model.phi3`), the loader finds, checks and fuses the GGUF tensors by it
(:mod:`phijax.gguf.weights`), the sharding rules take each weight's logical axes from it
(:mod:`phijax.sharding`) and the config checks a file's tensors against it
(:mod:`phijax.config`). Shapes are numpy layout ``[out, in]``, without the leading
``[layers]`` axis of a stacked weight. The module imports nothing from phijax when it runs
(the config only for type checking), so every module can read it, the config included.

GGUF layouts (docs/formats.md): a ``phi3`` file holds each weight as one tensor (``gguf``);
a ``llama`` file holds q, k, v and gate, up as separate tensors (``parts``) whose rows
concatenate, in order, to the weight, with q and k rows permuted for interleaved rope.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from phijax.config import Phi3Config

Shape = Callable[["Phi3Config"], tuple[int, ...]]


def _q_rows(c: Phi3Config) -> int:
    return c.num_heads * c.head_dim


def _kv_rows(c: Phi3Config) -> int:
    return c.num_kv_heads * c.head_dim


def _ffn_rows(c: Phi3Config) -> int:
    return c.intermediate_size


@dataclass(frozen=True)
class Part:
    """One GGUF tensor holding some rows of a weight stored in parts (``llama`` files).

    ``tensor`` is a name template (``{layer}``: the block index); ``rows(config)`` its row
    count; ``rope_heads(config)``, when set, the head count over which the converter
    permuted its rows for interleaved rope (the loader undoes it: Phi-3 rotates halves).
    """

    tensor: str
    rows: Callable[[Phi3Config], int]
    rope_heads: Callable[[Phi3Config], int] | None = None


@dataclass(frozen=True)
class WeightSpec:
    """One parameter of the Phi-3 module.

    ``shape(config)``: numpy layout, without the layer axis. ``axes``: each dimension's
    logical axis (:class:`phijax.sharding.ShardingRules`; ``None``: never split).
    ``gguf``: the tensor name template in a ``phi3`` file (``{layer}``: the block index;
    ``{kind}``: one of ``kinds``, among which the load chooses). ``parts``: a ``llama``
    file's tensors for it, in row order (empty: the ``gguf`` tensor there too).
    ``per_layer``: one per decoder layer. ``f32``: kept in f32 whatever the compute dtype
    (norms, rope factors). ``when``: ``None`` (always present), ``"untied"`` (only when the
    head is not the embedding) or ``"longrope"`` (only for a LongRoPE load).
    ``sized_by``: the config fields its shape follows, for error messages.
    """

    name: str
    shape: Shape
    axes: tuple[str | None, ...]
    gguf: str
    parts: tuple[Part, ...] = ()
    per_layer: bool = False
    f32: bool = False
    when: str | None = None
    kinds: tuple[str, ...] = ()
    sized_by: tuple[str, ...] = field(default=("hidden_size",))

    def present(self, config: Phi3Config, longrope: bool) -> bool:
        """Whether the module has this parameter (``longrope``: the load uses LongRoPE)."""
        return {None: True, "untied": not config.tie_word_embeddings, "longrope": longrope}[
            self.when
        ]

    def dtype(self, compute):
        """The parameter's dtype for compute dtype ``compute`` (f32 where the row says so)."""
        return np.dtype(np.float32) if self.f32 else compute

    def tensors(self, layer: int | None = None) -> tuple[str, ...]:
        """The GGUF names of every tensor this weight may come from (``layer`` for a
        per-layer weight; each kind for a chosen one): the phi3 tensor, then the parts."""
        names = [self.gguf, *(p.tensor for p in self.parts)]
        kinds = self.kinds or ("",)
        out = (n.format(layer=layer, kind=k) for n in names for k in kinds)
        return tuple(dict.fromkeys(out))

    def sources(self, names: Collection[str], layer: int | None = None) -> tuple[Source, ...]:
        """The tensors a file holding tensors ``names`` stores this weight in, rows in order:
        the parts when the file has the first of them, else the one ``gguf`` tensor."""
        if self.parts and self.parts[0].tensor.format(layer=layer) in names:
            return tuple(
                Source(p.tensor.format(layer=layer), p.rows, p.rope_heads) for p in self.parts
            )
        return (Source(self.gguf.format(layer=layer), None, None),)


@dataclass(frozen=True)
class Source:
    """A weight's GGUF tensor in one file: its name, its rows (``None``: the whole weight)
    and the rope permutation's head count (``None``: stored as used)."""

    tensor: str
    rows: Callable[[Phi3Config], int] | None
    rope_heads: Callable[[Phi3Config], int] | None

    def shape(self, spec: WeightSpec, config: Phi3Config) -> tuple[int, ...]:
        """This tensor's expected shape: the weight's, or its rows of it."""
        full = spec.shape(config)
        return full if self.rows is None else (self.rows(config), *full[1:])


_HEADS = ("num_heads", "num_kv_heads", "head_dim", "hidden_size")
_FFN = ("intermediate_size", "hidden_size")

# The table. Order: the module's attributes in the order it creates them.
WEIGHTS: tuple[WeightSpec, ...] = (
    WeightSpec(
        "embed", lambda c: (c.vocab_size, c.hidden_size), ("vocab", "embed"), "token_embd.weight"
    ),
    WeightSpec(
        "attn_norm",
        lambda c: (c.hidden_size,),
        ("embed",),
        "blk.{layer}.attn_norm.weight",
        per_layer=True,
        f32=True,
    ),
    WeightSpec(
        "qkv",
        lambda c: (_q_rows(c) + 2 * _kv_rows(c), c.hidden_size),
        ("qkv_out", "embed"),
        "blk.{layer}.attn_qkv.weight",
        parts=(
            Part("blk.{layer}.attn_q.weight", _q_rows, lambda c: c.num_heads),
            Part("blk.{layer}.attn_k.weight", _kv_rows, lambda c: c.num_kv_heads),
            Part("blk.{layer}.attn_v.weight", _kv_rows),
        ),
        per_layer=True,
        sized_by=_HEADS,
    ),
    WeightSpec(
        "o_proj",
        lambda c: (c.hidden_size, _q_rows(c)),
        ("embed", "q_heads"),
        "blk.{layer}.attn_output.weight",
        per_layer=True,
        sized_by=_HEADS,
    ),
    WeightSpec(
        "ffn_norm",
        lambda c: (c.hidden_size,),
        ("embed",),
        "blk.{layer}.ffn_norm.weight",
        per_layer=True,
        f32=True,
    ),
    WeightSpec(
        "gate_up",
        lambda c: (2 * c.intermediate_size, c.hidden_size),
        ("ffn_out", "embed"),
        "blk.{layer}.ffn_up.weight",
        parts=(
            Part("blk.{layer}.ffn_gate.weight", _ffn_rows),
            Part("blk.{layer}.ffn_up.weight", _ffn_rows),
        ),
        per_layer=True,
        sized_by=_FFN,
    ),
    WeightSpec(
        "down",
        lambda c: (c.hidden_size, c.intermediate_size),
        ("embed", "ffn_in"),
        "blk.{layer}.ffn_down.weight",
        per_layer=True,
        sized_by=_FFN,
    ),
    WeightSpec(
        "final_norm", lambda c: (c.hidden_size,), ("embed",), "output_norm.weight", f32=True
    ),
    WeightSpec(
        "lm_head",
        lambda c: (c.vocab_size, c.hidden_size),
        ("vocab", "embed"),
        "output.weight",
        when="untied",
    ),
    WeightSpec(
        "rope_factors",
        lambda c: (c.rotary_dim // 2,),
        (None,),
        "rope_factors_{kind}.weight",
        f32=True,
        when="longrope",
        kinds=("long", "short"),
        sized_by=("rotary_dim",),
    ),
)

BY_NAME: dict[str, WeightSpec] = {w.name: w for w in WEIGHTS}
LAYER_WEIGHTS: tuple[WeightSpec, ...] = tuple(w for w in WEIGHTS if w.per_layer)
LAYER_MATRICES: tuple[str, ...] = tuple(w.name for w in LAYER_WEIGHTS if not w.f32)
"""The per-layer matrices (``linear``'s weights): every per-layer weight but the norms."""
GLOBAL_WEIGHTS: tuple[WeightSpec, ...] = tuple(w for w in WEIGHTS if not w.per_layer)


def shape_matches(stored: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Whether a GGUF tensor of shape ``stored`` holds a weight of shape ``expected``: the same
    shape, or a vector stored as one row ``[1, n]``."""
    return stored == expected or (len(expected) == 1 and stored == (1, *expected))


def axis_sizes(config: Phi3Config) -> dict[str, int]:
    """Each logical axis's size in the weights of ``config`` (the first weight that has it)."""
    out: dict[str, int] = {}
    for w in WEIGHTS:
        for axis, dim in zip(w.axes, w.shape(config), strict=True):
            if axis is not None:
                out.setdefault(axis, dim)
    return out


__all__ = [
    "BY_NAME",
    "GLOBAL_WEIGHTS",
    "LAYER_MATRICES",
    "LAYER_WEIGHTS",
    "WEIGHTS",
    "Part",
    "Source",
    "WeightSpec",
    "axis_sizes",
    "shape_matches",
]
