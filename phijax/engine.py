"""phijax.load → Model: jit-compiled prefill and decode over a static, preallocated KV cache.

Shapes are static so compiled steps are reused: prompts pad to bucket lengths
(powers of two up to ``PREFILL_CHUNK``; longer prompts prefill in chunks of
it), batches pad to powers of two, the cache length is a power-of-two bucket
of what the request needs (capped by ``max_seq_len`` and the model context),
and attention reads only a power-of-two bucket of the filled cache, so decode
cost follows the tokens present, not the cache size. Decode runs
up to ``DECODE_STEPS`` steps per call in a ``lax.while_loop`` that ends once every
row is done, returning to Python only to stream text and check stop strings.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phijax import batching, hub, kernels, plan, sampling, scoring, steps
from phijax.batching import Padded, bucket
from phijax.cache import KVCache
from phijax.config import Phi3Config, resolve_sliding_window
from phijax.errors import ConfigError, ContextLengthError, ResourceError
from phijax.generation import Generation, RowOutput
from phijax.gguf.reader import GGUFFile
from phijax.gguf.relayout import QUANTIZED_TYPES
from phijax.gguf.weights import load_weights
from phijax.model.attention import kv_dtype
from phijax.model.forward import embed
from phijax.model.hooks import EditFns, all_names, check_broadcast, check_name, split_edits
from phijax.model.phi3 import LAYOUTS, Phi3
from phijax.model.rope import longrope_factors
from phijax.paths import cache_dir
from phijax.sampling import Sampler
from phijax.sharding import (
    check_mesh,
    create_cache,
    describe,
    on_mesh,
    place,
    put_batch,
    put_cache,
)
from phijax.tokenizer import Tokenizer

PREFILL_CHUNK = 256
DECODE_STEPS = 16


def default_dtype() -> Any:
    """f32 on CPU (XLA:CPU is far slower in bf16), bf16 on accelerators."""
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in phijax's cache folder, unless PHIJAX_NO_CACHE=1."""
    if os.environ.get("PHIJAX_NO_CACHE", "").strip() not in ("", "0"):
        return
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@dataclass
class _Request:
    """A validated generate() call: prompt ids, one row per (prompt, sample), stops, sizes."""

    prompts: list[list[int]]
    rows: list[tuple[int, int]]  # (prompt index, sample index), row r = i * num_samples + s
    samplers: list[Sampler]  # per row
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    seed: int
    max_new_tokens: int
    top_logprobs: int
    cache_len: int
    edit_arrays: dict[str, jax.Array]
    edit_fns: EditFns
    timings: dict[str, float] = field(default_factory=dict)

    def result(self, outputs: list[RowOutput]) -> Generation:
        new_tokens = sum(len(o.tokens) for o in outputs)
        prefill_s, decode_s = self.timings["prefill_s"], self.timings["decode_s"]
        return Generation(
            tokens=[o.tokens for o in outputs],
            texts=[o.text for o in outputs],
            logprobs=[o.logprobs for o in outputs],
            finish_reasons=[o.finish_reason for o in outputs],
            prompt_tokens=[self.prompts[i] for i, _ in self.rows],
            top_logprobs=[o.top_logprobs for o in outputs] if self.top_logprobs else [],
            seeds=[self.seed] * len(self.rows),
            timings={
                "prefill_s": prefill_s,
                "decode_s": decode_s,
                "prefill_tok_s": sum(map(len, self.prompts)) / prefill_s,
                "decode_tok_s": max(new_tokens - len(outputs), 0) / max(decode_s, 1e-9),
            },
        )


def _attend_len(filled: int, cache_len: int) -> int:
    """The cache positions a decode call attends to: a bucket of what the next
    ``DECODE_STEPS`` steps can fill, so decode cost follows the tokens present."""
    return min(bucket(filled + DECODE_STEPS, 128), cache_len)


class Model:
    """A loaded Phi-3-family model: weights (``params``), tokenizer, and the calls that run them.

    A thin wrapper: the math is :func:`phijax.forward` and the compiled steps in
    :mod:`phijax.steps`, functions of ``params``; nothing compiled holds this object,
    so ``del model`` frees its weights.
    """

    def __init__(self, params: Phi3, tokenizer: Tokenizer, *, path: Path, max_seq_len: int | None):
        self.params = params
        self.tokenizer = tokenizer
        self.path = path
        self.max_seq_len = max_seq_len
        self.prefill_chunk = PREFILL_CHUNK
        self.load_summary = ""  # what load() found: shape, dtype, layout, the window and why
        self._breakers: dict[tuple[str, ...], np.ndarray] = {}
        self.mesh = None  # a ("data", "model") jax.sharding.Mesh, or None: one device

    @property
    def config(self) -> Phi3Config:
        """The effective config: the file's, with the sliding window in force."""
        return self.params.config

    @property
    def dtype(self) -> Any:
        return self.params.dtype

    @property
    def sliding_window(self) -> int | None:
        return self.config.sliding_window

    # -- shapes -------------------------------------------------------------

    def _limit(self) -> int:
        return min(self.max_seq_len or self.config.context_length, self.config.context_length)

    def cache_len_for(self, needed: int) -> int:
        """Static cache length for sequences of up to ``needed`` tokens, or ContextLengthError."""
        limit = self._limit()
        if needed > limit:
            which = (
                "max_seq_len"
                if self.max_seq_len and self.max_seq_len < self.config.context_length
                else "the model's context"
            )
            raise ContextLengthError(
                f"{needed} tokens (prompt + new tokens) do not fit {which} of {limit}. "
                "Shorten the prompt, lower max_new_tokens"
                + (", or load with a larger max_seq_len." if which == "max_seq_len" else ".")
            )
        return min(bucket(needed, 128), limit)

    # -- prefill ------------------------------------------------------------

    @on_mesh
    def _prefill(
        self,
        prompts: Sequence[Sequence[int]],
        cache_len: int,
        *,
        edit_arrays: dict[str, jax.Array] | None = None,
        edit_fns: EditFns = (),
    ):
        """Run the prompts (a batch padded to a power of two) in chunks; returns each row's
        last-position logits ``[batch, vocab]`` and the filled cache."""
        n = len(prompts)
        b = bucket(n, 1)
        lengths = np.array([len(p) for p in prompts] + [1] * (b - n), np.int32)
        longest = int(lengths.max())
        limit = self.prefill_chunk
        width = bucket(longest) if longest <= limit else -(-longest // limit) * limit
        chunk = min(width, limit)
        tokens = np.zeros((b, width), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
        cache = create_cache(self.config, b, cache_len, kv_dtype(self.dtype), self.mesh)
        outputs = []
        for start in range(0, width, chunk):
            positions = np.broadcast_to(np.arange(start, start + chunk, dtype=np.int32), (b, chunk))
            kv_len = np.minimum(lengths, start + chunk).astype(np.int32)
            last = np.clip(lengths - 1 - start, 0, chunk - 1).astype(np.int32)[:, None]
            logits, cache = steps.prefill(
                self.params,
                put_batch(tokens[:, start : start + chunk], self.mesh),
                put_batch(positions, self.mesh),
                cache,
                put_batch(kv_len, self.mesh),
                put_batch(last, self.mesh),
                edit_arrays or {},
                attend_len=min(bucket(start + chunk, 128), cache_len),
                edit_fns=edit_fns,
            )
            outputs.append(logits)
        last_chunk = (lengths - 1) // chunk
        stacked = np.stack([np.asarray(o)[:, 0] for o in outputs])  # [chunks, b, vocab]
        return stacked[last_chunk, np.arange(b)], cache

    # -- research API -------------------------------------------------------

    def logits(
        self,
        inputs: str | Sequence[int] | Sequence[str | Sequence[int]],
        *,
        edits: Mapping[str, Any] | None = None,
        padded: bool = False,
    ) -> np.ndarray | list[np.ndarray] | Padded:
        """f32 logits ``[seq, vocab]`` of one sequence (a string or token ids), or a list of
        them for a list (ragged: each row trimmed to its length); ``padded=True`` returns
        :class:`~phijax.batching.Padded` (``values [batch, longest, vocab]``, ``lengths``).

        Rows run together in buckets of padded length and batch size (one compiled step per
        bucket). ``edits``: ``{name: array | fn}`` (see :meth:`activations` for the names);
        an array is added (``[hidden]``, or ``[seq, hidden]`` when every row has ``seq``
        tokens), a function ``fn(x [seq, hidden], positions [seq])`` replaces the value, row
        by row (with a function, rows are grouped by their exact length, so it sees no
        padding).
        """
        rows, single = self._rows(inputs, "logits")
        out = self._run(rows, (), True, edits)
        if padded:
            stacked = batching.stack(out, [len(r) for r in rows])
            return Padded(stacked.values["logits"], stacked.lengths)
        return out[0]["logits"] if single else [r["logits"] for r in out]

    def activations(
        self,
        inputs: str | Sequence[int] | Sequence[str | Sequence[int]],
        names: str | Sequence[str] | None = None,
        *,
        edits: Mapping[str, Any] | None = None,
        padded: bool = False,
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]] | Padded:
        """Activations at the named points (all when ``names`` is None) of one sequence (a
        string or token ids): a dict; of a list of them: a list of dicts, one per row, each
        trimmed to its length; ``padded=True``: :class:`~phijax.batching.Padded` (``values``
        a dict of ``[batch, longest, ...]`` arrays, ``lengths``).

        ``embed``, ``layers.{i}.resid_pre|attn_out|mlp_out|resid_post`` and ``final`` are
        ``[seq, hidden]``; ``layers.{i}.attn_weights`` ``[heads, seq, seq]``; ``logits``
        ``[seq, vocab]`` (see :mod:`phijax.model.hooks`). Only the named points are kept,
        only the layers they need run, and a list runs in batches (as in :meth:`logits`).
        ``edits`` as in :meth:`logits`; captures show edited values.
        """
        rows, single = self._rows(inputs, "activations")
        n_layers = self.config.num_layers
        names = (names,) if isinstance(names, str) else names
        wanted = all_names(n_layers) if names is None else tuple(names)
        for name in wanted:
            check_name(name, n_layers)
        captures = tuple(dict.fromkeys(n for n in wanted if n != "logits"))
        out = self._run(rows, captures, "logits" in wanted, edits)
        out = [{name: r[name] for name in wanted} for r in out]
        if padded:
            return batching.stack(out, [len(r) for r in rows])
        return out[0] if single else out

    @on_mesh
    def _run(self, rows, names, head, edits) -> list[dict[str, np.ndarray]]:
        """Id rows through :func:`phijax.steps.activations` in (length, batch) buckets →
        per row, its captures ``names`` (and ``"logits"`` if ``head``), trimmed."""
        arrays, fns = split_edits(edits, self.config.num_layers)
        for n in sorted(set(map(len, rows))):
            check_broadcast(arrays, (n, self.config.hidden_size))
        out: list[dict[str, np.ndarray]] = [{} for _ in rows]
        if not names and not head:
            return out
        per_row = partial(batching.row_bytes, self.config, names=names, head=head)
        for group in batching.groups(list(map(len, rows)), per_row, exact=bool(fns)):
            tokens, lengths = batching.pack(rows, group)
            logits, captured = steps.activations(
                self.params,
                put_batch(tokens, self.mesh),
                edit_arrays=batching.pad_edits(arrays, group.length),
                lengths=put_batch(lengths, self.mesh),
                edit_fns=fns,
                names=names,
                head=head,
            )
            if head:
                captured = {**captured, "logits": logits}
            trimmed = batching.trim(captured, [len(rows[i]) for i in group.rows])
            for i, values in zip(group.rows, trimmed, strict=True):
                out[i] = values
        return out

    def _rows(self, inputs, method: str) -> tuple[list[list[int]], bool]:
        """``inputs`` (a string, ids, or a list of either) as checked id rows that fit."""
        rows, single = batching.as_rows(inputs, self.tokenizer.encode_batch, f"{method}(inputs)")
        self._check_ids(rows)
        self.cache_len_for(max(map(len, rows)))
        return rows, single

    def embed(
        self, inputs: str | Sequence[int] | Sequence[str | Sequence[int]], *, padded: bool = False
    ) -> jax.Array | list[jax.Array] | Padded:
        """Token embeddings ``[seq, hidden]`` (a JAX array: the input of
        ``phijax.forward(params, embeds=...)``, e.g. for gradients) of one sequence, a list
        of them for a list, or with ``padded=True`` :class:`~phijax.batching.Padded`
        (``values [batch, bucket, hidden]``, ``lengths``: ``forward``'s ``embeds`` and
        ``lengths``). An integer JAX array (``[seq]`` or ``[batch, seq]``, traced too:
        ``jax.vmap(m.embed)``) is looked up as it is."""
        if isinstance(inputs, jax.Array) and jnp.issubdtype(inputs.dtype, jnp.integer):
            if inputs.ndim not in (1, 2):
                raise ConfigError(
                    f"embed(inputs): got an int array of shape {list(inputs.shape)}; "
                    "give [seq] or [batch, seq] ids."
                )
            if not isinstance(inputs, jax.core.Tracer):
                self._check_ids(np.asarray(inputs).reshape(-1, inputs.shape[-1]).tolist())
            return embed(self.params, inputs)
        rows, single = self._rows(inputs, "embed")
        if padded:
            tokens, lengths = batching.pad(rows)
            return Padded(embed(self.params, tokens), np.asarray(lengths))
        out = [embed(self.params, jnp.asarray(r, jnp.int32)) for r in rows]
        return out[0] if single else out

    def unembed(self, x: Any) -> jax.Array:
        """The final norm and head: a residual-stream value ``x [..., hidden]`` (e.g. each
        layer's ``resid_post``) → f32 logits ``[..., vocab]``, for the logit lens."""
        return steps.unembed(self.params, x)

    def with_params(self, params: Phi3) -> Model:
        """A Model running ``params`` (e.g. trained or edited weights) with this one's
        tokenizer, limits and mesh. ``params`` must have this model's tree structure, leaf
        shapes and dtypes (``jax.tree.map`` over ``m.params`` keeps them), so every compiled
        step is reused: new values never recompile. Neither model is copied."""
        old_leaves, old_def = jax.tree.flatten_with_path(self.params)
        new_leaves, new_def = jax.tree.flatten_with_path(params)
        if new_def != old_def:
            raise ConfigError(
                f"with_params(params): got {type(params).__name__} of another structure; "
                "give this model's parameter tree with new values, e.g. "
                "jax.tree.map(lambda w: w, m.params) (docs/research.md lists its leaves)."
            )
        for (path, old), (_, new) in zip(old_leaves, new_leaves, strict=True):
            if np.shape(new) != old.shape or jnp.result_type(new) != old.dtype:
                raise ConfigError(
                    f"with_params(params): leaf {jax.tree_util.keystr(path)} is "
                    f"{jnp.result_type(new).name} {list(np.shape(new))}; this model's is "
                    f"{old.dtype.name} {list(old.shape)} (cast or reshape it: another shape "
                    "or dtype would need other compiled steps)."
                )
        if self.mesh is not None:  # onto the old weights' shards
            params = jax.tree.map(lambda a, b: jax.device_put(a, b.sharding), params, self.params)
        model = Model(params, self.tokenizer, path=self.path, max_seq_len=self.max_seq_len)
        model.mesh, model.load_summary = self.mesh, self.load_summary
        model.prefill_chunk = self.prefill_chunk
        return model

    # -- generation ---------------------------------------------------------

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        *,
        sampler: Sampler | Sequence[Sampler] | None = None,
        max_new_tokens: int = 100,
        seed: int = 0,
        num_samples: int = 1,
        chat: bool = False,
        stop: Sequence[str | int] = (),
        stream: Callable[[int, str], None] | None = None,
        top_logprobs: int = 0,
        edits: Mapping[str, Any] | None = None,
    ) -> Generation:
        """Continue each prompt (a string or token ids) ``num_samples`` times.

        ``sampler``: one :class:`~phijax.Sampler` for every prompt or one per prompt
        (default: ``Sampler()``, the plain softmax at temperature 1). Sample ``s`` of every
        prompt draws its step-``t`` token with key ``fold_in(fold_in(PRNGKey(seed), s), t)``,
        so its tokens depend on nothing else in the batch. Rows stop at the tokenizer's stop
        ids, at ``stop`` (strings, or token ids), or after ``max_new_tokens``. ``chat`` wraps
        string prompts in the chat template as a user turn. ``stream(row, text)`` receives
        text as it decodes (row ``i * num_samples + s``). ``top_logprobs``: also return that
        many most likely alternatives per token (at most 20). ``edits``: as in
        :meth:`logits`, applied at every prompt and new position; added arrays must be
        ``[hidden]`` vectors here (functions see each prefill chunk, padding included).
        """
        request = self._request(
            prompts, sampler, max_new_tokens, seed, num_samples, chat, stop, top_logprobs, edits
        )
        outputs = self._outputs(request)
        for row, text in self._texts(request, outputs):
            if stream is not None:
                stream(row, text)
        return request.result(outputs)

    def stream(self, prompt: str | Sequence[int], **options: Any) -> Iterator[str]:
        """Text of one continuation of ``prompt`` as it decodes (``generate``'s options);
        ``for piece in model.stream("Hi", chat=True): print(piece, end="")``."""
        bound = inspect.signature(Model.generate).bind(self, prompt, **options)
        bound.apply_defaults()
        args = bound.arguments
        if (
            args["num_samples"] != 1
            or args["stream"] is not None
            or not (isinstance(prompt, str) or _is_ids(prompt))
        ):
            raise ConfigError(
                "stream() takes one prompt and one sample; use generate(stream=...) for more."
            )
        request = self._request(
            prompt, args["sampler"], args["max_new_tokens"], args["seed"], 1, args["chat"],
            args["stop"], args["top_logprobs"], args["edits"],
        )  # fmt: skip
        for _row, text in self._texts(request, self._outputs(request)):
            yield text

    def _request(
        self, prompts, sampler, max_new_tokens, seed, num_samples, chat, stop, top_logprobs, edits
    ) -> _Request:
        """Validate a generate() call and prepare its rows, samplers, stops and sizes."""
        if not _is_count(max_new_tokens):
            raise ConfigError(f"max_new_tokens = {max_new_tokens!r} must be a positive integer.")
        if not _is_count(num_samples):
            raise ConfigError(f"num_samples = {num_samples!r} must be a positive integer.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed = {seed!r} must be an integer.")
        if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise ConfigError(f"top_logprobs = {top_logprobs!r} must be an integer from 0 to 20.")
        batch = self._prompt_ids(prompts, chat)
        samplers = self._samplers(sampler, len(batch))
        stop_ids, stop_strings = self._stops(stop)
        arrays, fns = split_edits(edits, self.config.num_layers)
        check_broadcast(arrays, (1, self.config.hidden_size))
        rows = [(i, s) for i in range(len(batch)) for s in range(num_samples)]
        return _Request(
            prompts=batch,
            rows=rows,
            samplers=[samplers[i] for i, _ in rows],
            stop_ids=stop_ids,
            stop_strings=stop_strings,
            seed=seed,
            max_new_tokens=max_new_tokens,
            top_logprobs=top_logprobs,
            cache_len=self.cache_len_for(max(len(p) for p in batch) + max_new_tokens),
            edit_arrays=arrays,
            edit_fns=fns,
        )

    def _outputs(self, request: _Request) -> list[RowOutput]:
        """Per-row text bookkeeping (stops, streaming) for a request."""
        return [
            RowOutput(
                self.tokenizer, request.stop_ids, request.stop_strings, request.max_new_tokens
            )
            for _ in request.rows
        ]

    def _texts(self, request: _Request, outputs: list[RowOutput]) -> Iterator[tuple[int, str]]:
        """Feed the device loop's chunks to the rows' bookkeeping; yields ``(row, new text)``."""
        k = request.top_logprobs
        for chunk in self._device_loop(request, outputs):
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

    @cached_property
    def _decode_plan(self) -> dict[int, int]:
        """Rows to pad a small decode batch to (measured per machine: :mod:`phijax.plan`)."""
        c = self.config
        return plan.decode_rows(self.dtype, (2 * c.intermediate_size, c.hidden_size))

    def decode_batch(self, n: int) -> int:
        """The compiled batch size for ``n`` decode rows: a power of two, padded further
        where this machine's plan measured more rows to be faster (bf16 on CPU)."""
        b = bucket(n, 1)
        return max(b, self._decode_plan.get(b, b))

    def _compile_decode(
        self, b: int, cache_len: int, sstate, base, stop_ids, sparams, edit_arrays, **static
    ) -> Future | None:
        """Start compiling the decode step for a request's shapes (``b`` rows, a
        ``cache_len`` cache) on a background thread, so it compiles while the prefill
        compiles and runs; the first decode call then finds it compiled. On a mesh (where
        the arrays' shardings are part of the type) the step compiles at its first call."""
        if self.mesh is not None:
            return None
        kv = jax.ShapeDtypeStruct(
            KVCache.shape_for(self.config, b, cache_len), kv_dtype(self.dtype)
        )
        rows = jax.ShapeDtypeStruct((b,), jnp.int32)
        # the types steps.start_decode gives (a mismatch compiles decode twice, which
        # tests/test_compile_counts.py's first-generate test fails on); jax.eval_shape of it
        # would trace once per call
        state = steps.DecodeState(
            KVCache(kv, kv, rows), rows, jax.ShapeDtypeStruct((b, self.config.vocab_size), jnp.float32),
            jax.ShapeDtypeStruct((), jnp.bool_), sstate, jax.ShapeDtypeStruct((b,), jnp.bool_),
            jax.ShapeDtypeStruct((), jnp.int32),
        )  # fmt: skip
        return steps.compile_later(
            steps.decode, self.params, state, jax.ShapeDtypeStruct((), jnp.int32), rows,
            stop_ids, base, sparams, edit_arrays, **static,
        )  # fmt: skip

    @on_mesh
    def _device_loop(
        self, request: _Request, outputs: list[RowOutput]
    ) -> Iterator[steps.DecodeOut]:
        """Prefill, the first sampled token, then ``DECODE_STEPS`` tokens per compiled call
        until every row is done (read from ``outputs``, which the caller keeps)."""
        t0 = time.perf_counter()
        n = len(request.rows)
        b = self.decode_batch(n)
        padding = [request.samplers[0].replace(temperature=0.0)] * (b - n)
        row_samplers = request.samplers + padding
        sparams = sampling.stack(row_samplers, self.config.vocab_size, self._breaker_mask)
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
            "order": row_samplers[0].order,
            "top_n": request.top_logprobs,
            "edit_fns": request.edit_fns,
        }
        first_attend = _attend_len(int(prompt_len.max()), request.cache_len)
        compiled = self._compile_decode(
            b, request.cache_len, sstate, base, stop_dev, sparams, request.edit_arrays,
            attend_len=first_attend, **static,
        )  # fmt: skip
        last_logits, prompt_cache = self._prefill(
            request.prompts,
            request.cache_len,
            edit_arrays=request.edit_arrays,
            edit_fns=request.edit_fns,
        )
        take = jnp.asarray([i for i, _ in request.rows] + [0] * (b - n), jnp.int32)
        cache = KVCache(
            jnp.take(prompt_cache.k, take, axis=1),
            jnp.take(prompt_cache.v, take, axis=1),
            jnp.take(prompt_cache.lengths, take),
        )
        del prompt_cache
        cache = put_cache(cache, self.mesh)  # rows over "data" again after the gather
        first = jnp.take(jnp.asarray(last_logits), take, axis=0)
        state = steps.start_decode(cache, first, sstate, np.arange(b) >= n)
        if compiled is not None:
            compiled.result()  # its errors are the step's own: raised here, as the call would
        count = 1  # the first token alone, so it streams before the next ones are computed
        while not all(o.done for o in outputs):
            done = np.array([o.done for o in outputs] + [True] * (b - n))
            budget = [request.max_new_tokens - len(o.tokens) for o in outputs] + [0] * (b - n)
            filled = int(np.asarray(state.cache.lengths).max())
            attend = _attend_len(filled, request.cache_len)
            out, state = steps.decode(
                self.params, state._replace(done=jnp.asarray(done)), jnp.int32(count),
                jnp.asarray(budget, jnp.int32), stop_dev, base, sparams, request.edit_arrays,
                attend_len=attend, **static,
            )  # fmt: skip
            chunk = jax.tree.map(np.asarray, out)  # the same fields, on the host
            if count == 1:
                request.timings["prefill_s"] = time.perf_counter() - t0
            count = DECODE_STEPS
            yield chunk
        request.timings["decode_s"] = time.perf_counter() - t0 - request.timings["prefill_s"]

    @on_mesh
    def loglikelihood(
        self,
        contexts: str | Sequence[int] | Sequence[str | Sequence[int]],
        continuations: str | Sequence[int] | Sequence[str | Sequence[int]],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> list[tuple[float, bool]]:
        """``(log-probability of the continuation after its context, whether every token is
        the model's argmax)`` per pair, as lm_eval's ``loglikelihood`` defines them.

        Text pairs are split as lm_eval splits them: the continuation is what it adds to the
        context's tokens inside ``context + continuation`` (a SentencePiece vocabulary's
        dummy prefix adds a token to text encoded alone); token ids are used as given; an
        empty context is the BOS token (else EOS). Each sequence keeps its last
        ``max_length`` input tokens (default: the model's context); rows run in batches of
        at most ``batch_size``, with the log-softmax on the device (:mod:`phijax.scoring`).
        """
        pairs = scoring.as_pairs(self.tokenizer, contexts, continuations, method="loglikelihood")
        limit = scoring.resolve_max_length(max_length, self._limit())
        return scoring.loglikelihood(
            self.params, pairs, max_length=limit, batch_size=batch_size, mesh=self.mesh
        )

    @on_mesh
    def score(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        continuations: str | Sequence[int] | Sequence[str | Sequence[int]],
        *,
        max_length: int | None = None,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """Log-probabilities ``[len(continuation)]`` of each continuation's tokens after its
        prompt (perplexity: ``exp(-mean)``); pairs and options as in :meth:`loglikelihood`,
        whose sums these are."""
        pairs = scoring.as_pairs(
            self.tokenizer, prompts, continuations, method="score",
            names=("prompts", "continuations"),
        )  # fmt: skip
        limit = scoring.resolve_max_length(max_length, self._limit())
        scores = scoring.score_pairs(
            self.params, pairs, max_length=limit, batch_size=batch_size, mesh=self.mesh
        )
        return [s.logprobs for s in scores]

    def _breaker_mask(self, strings: tuple[str, ...]) -> np.ndarray:
        """bool ``[vocab]``: the tokens whose text contains a DRY sequence breaker."""
        if strings not in self._breakers:
            mask = np.zeros(self.config.vocab_size, np.bool_)
            for i, text in enumerate(self.tokenizer.token_texts[: self.config.vocab_size]):
                mask[i] = any(s in text for s in strings)
            self._breakers[strings] = mask
        return self._breakers[strings]

    def _samplers(self, sampler, n_prompts: int) -> list[Sampler]:
        if sampler is None:
            return [Sampler()] * n_prompts
        if isinstance(sampler, Sampler):
            return [sampler] * n_prompts
        samplers = list(sampler)
        if len(samplers) != n_prompts or not all(isinstance(s, Sampler) for s in samplers):
            raise ConfigError(
                f"sampler: give one phijax.Sampler or a list of one per prompt ({n_prompts})."
            )
        return samplers

    def _stops(self, stop) -> tuple[frozenset[int], tuple[str, ...]]:
        stop = [stop] if isinstance(stop, (str, int)) else list(stop)
        ids = [s for s in stop if isinstance(s, (int, np.integer)) and not isinstance(s, bool)]
        strings = [s for s in stop if isinstance(s, str) and s]
        if len(ids) + len(strings) != len(stop):
            raise ConfigError(f"stop = {stop!r}: give non-empty strings and/or token ids.")
        self._check_ids([ids])
        return frozenset(self.tokenizer.stop_ids) | frozenset(int(i) for i in ids), tuple(strings)

    def _prompt_ids(self, prompts, chat: bool) -> list[list[int]]:
        if isinstance(prompts, str) or _is_ids(prompts):
            prompts = [prompts]
        if not prompts:
            raise ConfigError("generate() needs at least one prompt.")
        out = []
        for p in prompts:
            if isinstance(p, str):
                messages = [{"role": "user", "content": p}]
                out.append(
                    self.tokenizer.encode_chat(messages) if chat else self.tokenizer.encode(p)
                )
            else:
                out.append(batching.ids_of(p, f"prompts[{len(out)}]"))
            if not out[-1]:
                raise ConfigError("a prompt encodes to no tokens; give some text or token ids.")
        self._check_ids(out)
        return out

    def _check_ids(self, batch: Sequence[Sequence[int]]) -> None:
        vocab = self.config.vocab_size
        for row in batch:
            bad = [t for t in row if not 0 <= t < vocab]
            if bad:
                raise ConfigError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1}).")

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model({str(self.path)!r}, {c.architecture}, {c.num_layers} layers, hidden {c.hidden_size}, "
            f"dtype={jnp.dtype(self.dtype).name})"
        )


def _is_ids(x: Any) -> bool:
    """A non-empty sequence of token ids (one prompt), as opposed to a list of prompts."""
    return not isinstance(x, str) and len(x) > 0 and isinstance(x[0], (int, np.integer))


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _packed_products(mesh) -> str:
    """How packed weights will be multiplied, for the load summary (CPU only)."""
    if jax.default_backend() != "cpu":
        return ""
    if mesh is not None:
        return "; decoded by XLA on the mesh"
    return f"; CPU kernel: {kernels.status()}"


def _weight_bytes(info, dtype, quantized: bool) -> int:
    """Memory one tensor takes once loaded: packed (codes + f32 scales and mins, at most
    1.5 bytes per weight) or dense in ``dtype``."""
    if quantized and info.ggml_type in QUANTIZED_TYPES:
        return int(info.n_elements * 1.5)
    return info.n_elements * dtype.itemsize


def _available_memory() -> int | None:
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else limit - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def load(
    source: str | os.PathLike | None = None,
    *,
    dtype: Any = None,
    max_seq_len: int | None = None,
    sliding_window: str = "auto",
    tokenizer: Tokenizer | str | os.PathLike | None = None,
    progress: bool = True,
    layout: str | None = None,
    quantized: bool = False,
    mesh: Any = None,
) -> Model:
    """Load a Phi-3-family GGUF into a ready-to-run :class:`Model`.

    ``source``: a path, ``org/repo/file.gguf``, ``hf://...`` or ``pypi:NAME``
    (default: the Phi-3-mini-4k-instruct q4 GGUF). ``dtype``: weight/compute
    dtype (default f32 on CPU, bf16 elsewhere). ``max_seq_len``: a cap on
    prompt + new tokens (default: the model's context; caches are sized per
    request). ``sliding_window``: ``"auto"`` follows the file, or uses 2047 for a 4k
    Phi-3 file that does not declare it (as HF does); ``"on"`` requires a window;
    ``"off"`` attends to the whole context (:func:`phijax.config.resolve_sliding_window`;
    the reason is in ``model.load_summary``). ``tokenizer``: a Tokenizer or a tokenizer.json path
    overriding the file's vocabulary. ``layout``: ``"layers"`` (one array per layer,
    the CPU default: fastest decode there) or ``"stacked"`` (``[layers, ...]`` arrays
    under a scan, the accelerator default); see :func:`phijax.model.phi3.default_layout`.
    ``progress``: a progress bar while loading, and the load summary on stderr.
    ``quantized``: keep every quantized matrix as its integers and block scales
    (:class:`~phijax.quant.QuantArray`, a lossless re-layout, 0.75-1.25 bytes per
    weight), decoded inside each compiled step: under a quarter of the f32 memory.
    ``mesh``: a ``jax.make_mesh((d, m), ("data", "model"))`` mesh: weights split over
    "model" (heads, ffn, vocabulary), batch and KV cache over "data", by the rules of
    :mod:`phijax.sharding` (docs/scale.md); same logits and seeded samples as one device.
    """
    enable_compilation_cache()
    path = hub.resolve(source or hub.DEFAULT_SOURCE)
    f = GGUFFile(path)
    config = Phi3Config.from_gguf(f)
    window, window_reason = resolve_sliding_window(config, sliding_window, path)
    if max_seq_len is not None and (not isinstance(max_seq_len, int) or max_seq_len < 1):
        raise ConfigError(f"max_seq_len = {max_seq_len!r} must be a positive integer.")
    dtype = jnp.dtype(dtype or default_dtype())
    mesh = check_mesh(mesh)
    weight_bytes = sum(_weight_bytes(t, dtype, quantized) for t in f.tensors.values())
    if mesh is not None:  # per device, roughly: axes that do not divide stay whole
        weight_bytes //= mesh.shape["model"]
    cache_bytes = KVCache.bytes_for(
        config, 1, min(max_seq_len or 2048, config.context_length), kv_dtype(dtype)
    )
    available = _available_memory()
    if available is not None and weight_bytes + cache_bytes > available:
        raise ResourceError(
            f"{path}: the weights need {weight_bytes / 1e9:.1f} GB as {dtype.name} plus "
            f"{cache_bytes / 1e9:.1f} GB of KV cache, but {available / 1e9:.1f} GB are free. "
            "Use a smaller dtype (dtype='bfloat16'), a lower max_seq_len, or a smaller model."
        )
    if tokenizer is None:
        tok = Tokenizer.from_gguf(f)
    elif isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    else:
        tok = Tokenizer.from_file(tokenizer)
    if layout not in (None, *LAYOUTS):
        raise ConfigError(
            f"layout = {layout!r}; use one of {LAYOUTS} (or None for the device's default)."
        )
    # Abstract parameters (shapes only): the loader puts each tensor in as it arrives, so the
    # weights are never held twice (not even as zeros and then the real values).
    config = dataclasses.replace(config, sliding_window=window)
    longrope = config.rope_scaling == "longrope"
    params = Phi3(config, dtype=dtype, layout=layout, longrope=longrope, abstract=True)
    factors = load_weights(f, params, progress=progress, quantized=quantized, mesh=mesh)
    if longrope:
        # Chosen once, from the model's sequence limit, so a prompt's logits do not depend
        # on how many tokens a request asks for (HF switches per sequence length).
        limit = min(max_seq_len or config.context_length, config.context_length)
        chosen = longrope_factors(config, limit, factors.get("long"), factors.get("short"))
        params.rope_factors.set_value(place(jnp.asarray(chosen), (None,), mesh, config))
    model = Model(params, tok, path=path, max_seq_len=max_seq_len)
    model.mesh = mesh
    weights = f" (quantized weights{_packed_products(mesh)})" if quantized else ""
    model.load_summary = (
        f"{Path(path).name}: {config.architecture}, {config.num_layers} layers, hidden "
        f"{config.hidden_size}, {dtype.name}{weights}, "
        f"{params.layout} layout; sliding window {window_reason}"
    )
    if mesh is not None:
        model.load_summary += f"; {describe(mesh, config)}"
    if progress:
        print(f"phijax: {model.load_summary}", file=sys.stderr)
    return model
