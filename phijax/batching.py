"""Ragged inputs to padded batches and back: normalising, bucketing, padding, trimming.

The research calls (``Model.logits``, ``activations``, ``embed``, ``score``) take a string,
token ids, or a list of either. They become ragged id rows (:func:`as_rows`), grouped by
padded length and batch size (:func:`groups`: powers of two, capped so one call's memory
stays bounded), right-padded (:func:`pack`), run through one compiled step per group, and
trimmed back to each row's length (:func:`trim`). Right padding is harmless under the causal
mask: a position never attends to a later one, and keys past a row's length are masked, so
a row's outputs do not depend on its padding or on the other rows.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phijax.config import Phi3Config
from phijax.errors import ConfigError

MIN_BUCKET = 16
ROW_CAP = 64  # rows per compiled research call
BATCH_BYTES = 1 << 30  # what one research call may hold, by the estimate of row_bytes()

ACCEPTED = "a string, token ids (a sequence of ints), or a list of either"


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two ≥ max(n, minimum)."""
    return 1 << max(int(n) - 1, minimum - 1).bit_length()


def research_bucket(n: int) -> int:
    """The padded length of a research row: a multiple of :data:`MIN_BUCKET` up to 64, then
    :func:`bucket`. Sentences are short, and padding 33-token rows to 64 doubled their work
    (``benchmarks/bench_research.py``: 48% of the computed positions were real, 200
    sentences of 8-46 tokens); the extra shape costs one more compile of one layer."""
    return -(-max(int(n), 1) // MIN_BUCKET) * MIN_BUCKET if n <= 64 else bucket(n)


class Padded(NamedTuple):
    """Right-padded results: ``values`` (an array ``[batch, seq, ...]``, or a dict of them)
    and ``lengths [batch]``; row ``i`` is valid up to ``lengths[i]`` along its seq axes."""

    values: Any
    lengths: np.ndarray


class Group(NamedTuple):
    """Rows (indices into the input) run together, padded to ``batch`` rows of ``length``."""

    rows: list[int]
    batch: int
    length: int


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def ids_of(x: Any, arg: str) -> list[int]:
    """``x`` (a sequence of ints, or a 1-D integer array) as a non-empty list of ints, or a
    ConfigError naming ``arg`` and the accepted forms."""
    if _is_tracer(x):
        raise ConfigError(
            f"{arg} is a traced JAX value, but the Model methods run on concrete ids; inside "
            "jax.jit/vmap/grad use phijax.forward(params, tokens, lengths=...)."
        )
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):  # ragged nesting, objects numpy cannot hold
        a = np.asarray(None)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        what = (
            f"{reprlib.repr(x)} ({type(x).__name__})"
            if a.ndim == 0 or a.dtype.kind not in "biufc"
            else f"{a.dtype.name} values of shape {list(a.shape)}"
        )
        raise ConfigError(f"{arg}: got {what}; give {ACCEPTED}.")
    if a.size == 0:
        raise ConfigError(f"{arg} is empty; give at least one token id, or non-empty text.")
    return a.astype(np.int64).tolist()


def as_rows(
    inputs: Any, encode: Callable[[list[str]], list[list[int]]], arg: str
) -> tuple[list[list[int]], bool]:
    """``inputs`` (:data:`ACCEPTED`, or a 2-D integer array of rows) as ragged id rows, and
    whether it was one sequence. Strings are encoded with ``encode`` (a batch at once)."""
    if isinstance(inputs, str):
        return [ids_of(encode([inputs])[0], f"{arg} (the encoded text)")], True
    if isinstance(inputs, (np.ndarray, jax.Array)) and np.ndim(inputs) == 2:
        if _is_tracer(inputs):
            ids_of(inputs, arg)  # raises: traced
        return [ids_of(row, f"{arg}[{i}]") for i, row in enumerate(np.asarray(inputs))], False
    if not isinstance(inputs, Sequence) or not inputs or all(is_id(t) for t in inputs):
        return [ids_of(inputs, arg)], True
    texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
    encoded = dict(zip(texts, encode([inputs[i] for i in texts]) if texts else [], strict=True))
    rows = []
    for i, x in enumerate(inputs):
        if is_id(x):
            raise ConfigError(
                f"{arg} mixes token ids and sequences ({arg}[{i}] = {x!r}); give {ACCEPTED}."
            )
        rows.append(ids_of(encoded.get(i, x), f"{arg}[{i}]"))
    return rows, False


def is_id(x: Any) -> bool:
    """Whether ``x`` is one token id (a Python or numpy integer, not a bool)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_vocab(rows: Any, vocab: int, where: str = "tokens") -> None:
    """ConfigError naming the first concrete id of ``rows`` (id rows, or an int array of any
    shape) outside ``0..vocab-1``; traced ids cannot be read and pass."""
    if _is_tracer(rows):
        return
    for i, row in enumerate([rows] if isinstance(rows, (np.ndarray, jax.Array)) else rows):
        ids = np.asarray(row, np.int64).reshape(-1)
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            at = "" if isinstance(rows, (np.ndarray, jax.Array)) else f" (row {i})"
            raise ConfigError(
                f"{where}{at}: token id {int(bad[0])} is outside the vocabulary (0..{vocab - 1})."
            )


def row_bytes(config: Phi3Config, length: int, names: Sequence[str], head: bool) -> int:
    """Estimated f32 bytes one row of ``length`` holds in a research pass: its outputs
    (logits if ``head``, and the captures ``names``) and one layer's temporaries."""
    c = config
    qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
    work = qkv + 2 * c.intermediate_size + 4 * c.hidden_size + 2 * c.num_heads * length
    kept = sum(c.num_heads * length if n.endswith("attn_weights") else c.hidden_size for n in names)
    return 4 * length * (work + kept + (c.vocab_size if head else 0))


def groups(
    lengths: Sequence[int], per_row_bytes: Callable[[int], int], *, exact: bool = False
) -> list[Group]:
    """Rows grouped by padded length (a :func:`research_bucket`, or the exact length when
    ``exact``), then split into batches of at most ``ROW_CAP`` rows and ``BATCH_BYTES`` (by
    ``per_row_bytes(length)``). Each batch pads its rows to a power of two, so a sweep
    compiles at most one shape per (length bucket, row bucket)."""
    by_length: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_length.setdefault(n if exact else research_bucket(n), []).append(i)
    out = []
    for length, rows in sorted(by_length.items()):
        fit = max(1, BATCH_BYTES // per_row_bytes(length))
        cap = min(ROW_CAP, 1 << (fit.bit_length() - 1))
        for s in range(0, len(rows), cap):
            part = rows[s : s + cap]
            out.append(Group(part, bucket(len(part), 1), length))
    return out


def pack(rows: Sequence[Sequence[int]], group: Group) -> tuple[np.ndarray, np.ndarray]:
    """The group's rows as int32 ``tokens [batch, length]`` (right-padded with 0) and
    ``lengths [batch]``; padding rows are one token long."""
    tokens = np.zeros((group.batch, group.length), np.int32)
    lengths = np.ones(group.batch, np.int32)
    for r, i in enumerate(group.rows):
        tokens[r, : len(rows[i])] = rows[i]
        lengths[r] = len(rows[i])
    return tokens, lengths


def pad(rows: Sequence[Any], *, length: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Ragged rows (token ids ``[seq_i]``, or embeddings ``[seq_i, hidden]``) → right-padded
    ``[batch, length(, hidden)]`` and int32 ``lengths [batch]``, the inputs of
    ``phijax.forward(params, tokens, lengths=...)``. ``length`` defaults to a power-of-two
    bucket of the longest row (at least 16), so nearby sizes share one compiled shape.
    Works on concrete rows and on traced ones (inside ``jax.jit``)."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise ConfigError(
            "pad() takes a non-empty list of rows: token ids or [seq, hidden] arrays."
        )
    traced = any(_is_tracer(leaf) for leaf in jax.tree.leaves(list(rows)))
    xp = jnp if traced else np
    arrays = [xp.asarray(r) for r in rows]
    ranks = {a.ndim for a in arrays}
    if ranks not in ({1}, {2}) or any(a.shape[0] == 0 for a in arrays):
        raise ConfigError(
            "pad(): every row must be non-empty token ids [seq] or embeddings [seq, hidden] "
            f"(got shapes {[list(a.shape) for a in arrays][:4]}...)."
        )
    longest = max(a.shape[0] for a in arrays)
    length = bucket(longest) if length is None else length
    if length < longest:
        raise ConfigError(f"pad(length={length}) is shorter than the longest row ({longest}).")
    widths = [[(0, length - a.shape[0])] + [(0, 0)] * (a.ndim - 1) for a in arrays]
    padded = xp.stack([xp.pad(a, w) for a, w in zip(arrays, widths, strict=True)])
    if padded.ndim == 2:
        padded = padded.astype(xp.int32)
    lengths = np.array([a.shape[0] for a in arrays], np.int32)
    return jnp.asarray(padded), jnp.asarray(lengths)


def pad_edits(arrays: Mapping[str, jax.Array], length: int) -> dict[str, jax.Array]:
    """Per-position edit arrays (``[seq, ...]``, every row that long) zero-padded to
    ``length`` positions; broadcast ones (``[hidden]``, ``[1, hidden]``) as they are."""
    out = {}
    for name, a in arrays.items():
        if a.ndim >= 2 and a.shape[-2] > 1 and a.shape[-2] != length:
            widths = [(0, 0)] * a.ndim
            widths[-2] = (0, length - a.shape[-2])
            a = jnp.pad(a, widths)
        out[name] = a
    return out


def _seq_slices(name: str, n: int | slice) -> tuple:
    """Index of a value's seq axes (keys too for attention weights) after its batch axis."""
    return (slice(None), n, n) if name.endswith("attn_weights") else (n,)


def trim(values: Mapping[str, jax.Array], lengths: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Step outputs ``[batch, seq, ...]`` → one dict per real row (``len(lengths)`` of them),
    each a view trimmed to its row's length. The outputs come back whole, once per group
    (on CPU without a copy): slicing them on the device would compile a program for every
    new (rows, longest) pair, 0.1-0.2 s each on 2 cores."""
    host = {name: np.asarray(v) for name, v in values.items()}
    return [
        {name: v[(i, *_seq_slices(name, slice(0, k)))] for name, v in host.items()}
        for i, k in enumerate(lengths)
    ]


def stack(rows: Sequence[Mapping[str, np.ndarray]], lengths: Sequence[int]) -> Padded:
    """Per-row results (from :func:`trim`) → :class:`Padded`, zero-padded to the longest row."""
    lengths = np.asarray(lengths, np.int32)
    longest = int(lengths.max())
    values = {}
    for name, first in rows[0].items():
        attn = name.endswith("attn_weights")
        shape = (first.shape[0], longest, longest) if attn else (longest, *first.shape[1:])
        v = np.zeros((len(rows), *shape), first.dtype)
        for i, r in enumerate(rows):
            v[(i, *_seq_slices(name, slice(0, lengths[i])))] = r[name]
        values[name] = v
    return Padded(values, lengths)
