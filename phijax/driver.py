"""The generation driver: a validated request through prefill and the compiled decode loop.

Shapes are static so compiled steps are reused: prompts pad to bucket lengths (powers of
two up to the prefill chunk, :data:`PREFILL_CHUNK`; longer prompts prefill in chunks of it),
batches pad to powers of two, the cache is a power-of-two bucket of what the request needs
(at least :func:`min_cache`),
and attention reads only a bucket of the filled cache (:func:`attend_len`; on the CPU kernel,
which stops at the last filled slot itself, the whole cache in one program), so decode cost
follows the tokens present. Decode runs up to :data:`DECODE_STEPS` steps per call in a
``lax.while_loop`` that ends once every row is done.

:func:`decode_chunks` is a generator that hands each call's tokens to its consumer and
receives back, as a :class:`RowStatus` sent into it, which rows the consumer has finished
(stop strings are found on the host) and how many tokens each may still take: it reads
nothing the consumer owns, so the order in which they run cannot change a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phijax import sampling, steps
from phijax.batching import bucket
from phijax.cache import KVCache
from phijax.generation import RowOutput
from phijax.model.hooks import EditFns, Hooks
from phijax.model.phi3 import Phi3
from phijax.request import Request
from phijax.sharding import create_cache, put_batch, put_cache

PREFILL_CHUNK = 256
DECODE_STEPS = 16
# The smallest cache holds 128 positions per row, or this many over all its rows when that
# is fewer (at least 32 per row): 128 up to 8 rows, 32 from 32 rows. A cache is layers x 2 x
# rows x positions x kv width: Phi-3-mini's at 32 rows and 128 positions is 3.2 GB in f32,
# where a 37-token request needs 40 positions (cache_len). Small batches keep 128, so their
# generation lengths up to it share one compiled shape.
MIN_CACHE_ROW_POSITIONS = 1024
# From this many rows cache lengths step by eighths of a power of two, not quarters.
FINE_CACHE_ROWS = 16
# A request whose KV cache is larger than this lets its steps' first compiles finish before
# the cache exists: compiling Phi-3-mini's batch-32 decode step peaks at 0.36 GB, which the
# cache and the prefill's temporaries would otherwise add to. A smaller cache's request
# overlaps the decode step's compile with its prefill (its first token comes sooner).
OVERLAP_CACHE_BYTES = 256 << 20


def min_cache(rows: int) -> int:
    """The smallest cache length, in positions, for a batch of ``rows``."""
    return min(128, max(32, MIN_CACHE_ROW_POSITIONS // bucket(rows, 1)))


def cache_len(needed: int, rows: int) -> int:
    """The static cache length for ``rows`` sequences of up to ``needed`` tokens: the
    smallest power of two, or fraction of one, that holds them and :func:`min_cache`.
    Fractions keep a cache close to its tokens: three quarters below
    :data:`FINE_CACHE_ROWS` rows, and from there, where each position costs ``rows`` times
    as much (Phi-3-mini's f32 cache: 25 MB per position at 32 rows), five, six and seven
    eighths too (batch 32 x 37 tokens: 40 positions, 1.0 GB, not 64 and 1.6 GB). Each
    fraction is one more compiled shape per octave of request lengths."""
    floor = min_cache(rows)
    size = bucket(needed, floor)
    step = size // (8 if rows >= FINE_CACHE_ROWS else 4)
    return -(-max(needed, floor) // step) * step


class RowStatus(NamedTuple):
    """What the consumer of :func:`decode_chunks` sends back after each chunk, per request
    row: ``done [rows]`` bool and ``budget [rows]``, the new tokens each may still take."""

    done: np.ndarray
    budget: np.ndarray

    @classmethod
    def of(cls, outputs: Sequence[RowOutput]) -> RowStatus:
        return cls(
            np.array([o.done for o in outputs], np.bool_),
            np.array([o.max_new_tokens - len(o.tokens) for o in outputs], np.int32),
        )


def attend_len(filled: int, cache_len: int, whole: bool = False) -> int:
    """The cache positions a decode call attends to: a bucket of what the next
    :data:`DECODE_STEPS` steps can fill, so decode cost follows the tokens present; or, where
    the attention itself stops at the last filled slot (``whole``: :func:`attends_whole_cache`),
    the whole cache, so that one compiled decode program serves a generation of any length
    instead of one per bucket (each ~40 MB resident for SmolLM2, and compiled on the spot
    when a generation crosses into the next bucket)."""
    return cache_len if whole else min(bucket(filled + DECODE_STEPS, 128), cache_len)


def attends_whole_cache(params: Phi3, request: Request) -> bool:
    """Whether ``request``'s decode attention runs on the CPU kernel, reading the cache in place
    and only up to its last filled slot (:mod:`phijax.kernels.attention`): not where an edit
    needs the attention weights, which only the pure path computes."""
    backend = params.backend
    edits = Hooks(request.edit_arrays, request.edit_fns)
    in_place = backend.attends_in_place(params.config.head_dim, backend.kv_dtype)
    return in_place and not edits.reads_attention_weights


def prefill(
    params: Phi3,
    prompts: Sequence[Sequence[int]],
    cache_len: int,
    *,
    chunk_len: int = PREFILL_CHUNK,
    mesh: Any = None,
    edit_arrays: dict[str, jax.Array] | None = None,
    edit_fns: EditFns = (),
) -> tuple[jax.Array, KVCache]:
    """Run the prompts (a batch padded to a power of two) in chunks of at most
    ``chunk_len``; returns each row's last-position logits ``[batch, vocab]`` and the
    filled cache ``[layers, batch, kv_heads, cache_len, head_dim]``."""
    config = params.config
    b, lengths, width, chunk = _prefill_shape(prompts, chunk_len)
    tokens = np.zeros((b, width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    cache = create_cache(config, b, cache_len, params.backend.kv_dtype, mesh)
    last_chunk = (lengths - 1) // chunk
    last_logits = None
    for k, start in enumerate(range(0, width, chunk)):
        positions = np.broadcast_to(np.arange(start, start + chunk, dtype=np.int32), (b, chunk))
        kv_len = np.minimum(lengths, start + chunk).astype(np.int32)
        last = np.clip(lengths - 1 - start, 0, chunk - 1).astype(np.int32)[:, None]
        logits, cache = steps.prefill(
            params,
            put_batch(tokens[:, start : start + chunk], mesh),
            put_batch(positions, mesh),
            cache,
            put_batch(kv_len, mesh),
            put_batch(last, mesh),
            edit_arrays or {},
            attend_len=min(bucket(start + chunk, 128), cache_len),
            edit_fns=edit_fns,
        )
        mine = jnp.asarray(last_chunk == k)[:, None]  # rows whose last token is in this chunk
        last_logits = (
            logits[:, 0] if last_logits is None else jnp.where(mine, logits[:, 0], last_logits)
        )
    return last_logits, cache


def _prefill_shape(
    prompts: Sequence[Sequence[int]], chunk_len: int
) -> tuple[int, np.ndarray, int, int]:
    """A prefill's padded rows, each row's length ``[rows]``, padded width and chunk length."""
    b = bucket(len(prompts), 1)
    lengths = np.array([len(p) for p in prompts] + [1] * (b - len(prompts)), np.int32)
    longest = int(lengths.max())
    width = bucket(longest) if longest <= chunk_len else -(-longest // chunk_len) * chunk_len
    return b, lengths, width, min(width, chunk_len)


def _compile_prefill(params: Phi3, request: Request, chunk_len: int) -> None:
    """Compile the prefill step of ``request``'s first chunk now, before its cache exists
    (the call that follows finds it in JAX's caches, as :func:`phijax.steps.compile_later`'s
    callers do)."""
    b, _, _, chunk = _prefill_shape(request.prompts, chunk_len)
    rows = jax.ShapeDtypeStruct((b,), jnp.int32)
    tokens = jax.ShapeDtypeStruct((b, chunk), jnp.int32)
    cache = _cache_type(params.config, b, request.cache_len, params.backend.kv_dtype)
    steps.compile_now(
        steps.prefill, params, tokens, tokens, cache, rows,
        jax.ShapeDtypeStruct((b, 1), jnp.int32), request.edit_arrays or {},
        attend_len=min(bucket(chunk, 128), request.cache_len), edit_fns=request.edit_fns,
    )  # fmt: skip


def _cache_type(config, b: int, cache_len: int, kv_dtype) -> KVCache:
    """The type of a :class:`KVCache` of ``b`` rows and ``cache_len`` positions."""
    kv = jax.ShapeDtypeStruct(KVCache.shape_for(config, b, cache_len), kv_dtype)
    return KVCache(kv, kv, jax.ShapeDtypeStruct((b,), jnp.int32))


def _decode_types(config, b: int, cache_len: int, kv_dtype, sstate) -> steps.DecodeState:
    """The types :func:`phijax.steps.start_decode` gives a batch of ``b`` rows (a mismatch
    compiles decode twice, which ``tests/test_compile_counts.py`` fails on;
    ``jax.eval_shape`` of it would trace once per request)."""
    rows = jax.ShapeDtypeStruct((b,), jnp.int32)
    return steps.DecodeState(
        _cache_type(config, b, cache_len, kv_dtype), rows, jax.ShapeDtypeStruct((b, config.vocab_size), jnp.float32),
        jax.ShapeDtypeStruct((), jnp.bool_), sstate, jax.ShapeDtypeStruct((b,), jnp.bool_),
        jax.ShapeDtypeStruct((), jnp.int32),
    )  # fmt: skip


def decode_chunks(
    params: Phi3,
    request: Request,
    *,
    batch: int,
    breaker_mask: Callable[[tuple[str, ...]], np.ndarray],
    chunk_len: int = PREFILL_CHUNK,
    mesh: Any = None,
) -> Generator[steps.DecodeOut, RowStatus, None]:
    """Prefill, the first sampled token, then :data:`DECODE_STEPS` tokens per compiled call,
    as host copies (``DecodeOut`` of numpy arrays ``[batch, steps]``), until the
    :class:`RowStatus` sent back after a chunk says every row is done. ``batch``: the
    compiled batch size (``>=`` the request's rows; padding rows are greedy and done).
    Records ``prefill_s`` and ``decode_s`` in ``request.timings``."""
    t0 = time.perf_counter()
    config = params.config
    n, b = len(request.rows), batch
    padding = [request.samplers[0].replace(temperature=0.0)] * (b - n)
    row_samplers = request.samplers + padding
    sparams = sampling.stack(row_samplers, config.vocab_size, breaker_mask)
    history = np.zeros((b, request.cache_len), np.int32)
    prompt_len = np.ones(b, np.int32)
    for r, (i, _) in enumerate(request.rows):
        history[r, : len(request.prompts[i])] = request.prompts[i]
        prompt_len[r] = len(request.prompts[i])
    sstate = sampling.init_state(jnp.asarray(history), jnp.asarray(prompt_len), sparams)
    base = sampling.base_keys(request.seed, [s for _, s in request.rows] + [0] * (b - n))
    stop_dev = jnp.asarray(sorted(request.stop_ids) or [-1], jnp.int32)
    static = {
        "steps": DECODE_STEPS,
        "chain": sampling.compiled_chain(sparams, row_samplers[0].order),
        "top_n": request.top_logprobs,
        "edit_fns": request.edit_fns,
    }
    whole = attends_whole_cache(params, request)
    compiled: Future | None = None
    if mesh is None:  # on a mesh the arrays' shardings are part of the type: compile at the call
        types = _decode_types(config, b, request.cache_len, params.backend.kv_dtype, sstate)
        first_attend = attend_len(int(prompt_len.max()), request.cache_len, whole)
        compiled = steps.compile_later(
            steps.decode, params, types, jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((b,), jnp.int32), stop_dev, base, sparams,
            request.edit_arrays, attend_len=first_attend, **static,
        )  # fmt: skip
        cache_bytes = KVCache.bytes_for(config, b, request.cache_len, params.backend.kv_dtype)
        if compiled is not None and cache_bytes > OVERLAP_CACHE_BYTES:
            _compile_prefill(params, request, chunk_len)  # beside decode's compile
            compiled.result()
    last_logits, prompt_cache = prefill(
        params, request.prompts, request.cache_len, chunk_len=chunk_len, mesh=mesh,
        edit_arrays=request.edit_arrays, edit_fns=request.edit_fns,
    )  # fmt: skip
    sources = [i for i, _ in request.rows]
    if sources == list(range(n)) and prompt_cache.batch == b:
        # each row is its own prompt's row of the prefill (padding rows are done): no
        # gather, which would hold a second whole cache while it copies
        cache, first = prompt_cache, last_logits
    else:
        take = jnp.asarray(sources + [0] * (b - n), jnp.int32)
        cache = KVCache(
            jnp.take(prompt_cache.k, take, axis=1),
            jnp.take(prompt_cache.v, take, axis=1),
            jnp.take(prompt_cache.lengths, take),
        )
        cache = put_cache(cache, mesh)  # rows over "data" again after the gather
        first = jnp.take(last_logits, take, axis=0)
    del prompt_cache
    state = steps.start_decode(cache, first, sstate, np.arange(b) >= n)
    if compiled is not None:
        compiled.result()  # its errors are the step's own: raised here, as the call would
    status = RowStatus(np.zeros(n, np.bool_), np.full(n, request.max_new_tokens, np.int32))
    count = 1  # the first token alone, so it streams before the next ones are computed
    while not status.done.all():
        done = np.concatenate([status.done, np.ones(b - n, np.bool_)])
        budget = np.concatenate([status.budget, np.zeros(b - n, np.int32)])
        filled = int(np.asarray(state.cache.lengths).max())
        out, state = steps.decode(
            params, state._replace(done=jnp.asarray(done)), jnp.int32(count),
            jnp.asarray(budget), stop_dev, base, sparams, request.edit_arrays,
            attend_len=attend_len(filled, request.cache_len, whole), **static,
        )  # fmt: skip
        chunk = jax.tree.map(np.asarray, out)  # the same fields, on the host
        if count == 1:
            request.timings["prefill_s"] = time.perf_counter() - t0
        count = DECODE_STEPS
        status = yield chunk
    request.timings["decode_s"] = time.perf_counter() - t0 - request.timings["prefill_s"]


def stream_texts(
    request: Request, outputs: list[RowOutput], chunks: Generator[steps.DecodeOut, RowStatus, None]
) -> Iterator[tuple[int, str]]:
    """Feed ``chunks`` (:func:`decode_chunks`) to the rows' bookkeeping ``outputs``, sending
    back their status after each chunk; yields ``(row, new text)``."""
    k = request.top_logprobs
    try:
        chunk = next(chunks)
        while True:
            for r, out in enumerate(outputs):
                for t in range(chunk.tokens.shape[1]):
                    if out.done or chunk.tokens[r, t] < 0:
                        break
                    top = None
                    if k:
                        pairs = zip(
                            chunk.alt_ids[r, t].tolist(), chunk.alt_lp[r, t].tolist(), strict=True
                        )
                        top = list(pairs)[:k]
                    text = out.add(int(chunk.tokens[r, t]), float(chunk.logprobs[r, t]), top)
                    if text:
                        yield r, text
            chunk = chunks.send(RowStatus.of(outputs))
    except StopIteration:
        return
