"""The user-facing :class:`Model`: a loaded model's weights, tokenizer and the calls that run them.

Generation goes through :mod:`phijax.driver` (prefill and the compiled decode loop),
research calls through :mod:`phijax.steps` and scoring through :mod:`phijax.scoring`;
:func:`phijax.load` (:mod:`phijax.loading`) builds the Model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from phijax import batching, collector, decode_padding, driver, scoring, steps
from phijax import request as requests
from phijax.backend import Backend
from phijax.batching import Padded, bucket
from phijax.config import Phi3Config
from phijax.errors import ConfigError, ContextLengthError
from phijax.generation import Generation, RowOutput
from phijax.model.forward import embed
from phijax.model.hooks import all_names, check_broadcast, check_name, split_edits
from phijax.model.phi3 import Phi3
from phijax.sampling import Sampler
from phijax.sharding import on_mesh, put_batch
from phijax.tokenizer import Tokenizer


class Model:
    """A loaded Phi-3-family model: weights (``params``), tokenizer, and the calls that run them.

    A thin wrapper: the math is :func:`phijax.forward` and the compiled steps in
    :mod:`phijax.steps`, functions of ``params``; nothing compiled holds this object,
    so ``del model`` frees its weights.
    """

    def __init__(
        self,
        params: Phi3,
        tokenizer: Tokenizer,
        *,
        path: Path,
        max_seq_len: int | None,
        mesh: jax.sharding.Mesh | None = None,
        load_summary: str = "",
        prefill_chunk: int = driver.PREFILL_CHUNK,
    ):
        self.params = params
        self.tokenizer = tokenizer
        self.path = path
        self.max_seq_len = max_seq_len
        self.mesh = mesh  # a ("data", "model") jax.sharding.Mesh, or None: one device
        self.load_summary = load_summary  # what load() chose: shape, backend, window, and why
        self.prefill_chunk = prefill_chunk
        self._breakers: dict[tuple[str, ...], np.ndarray] = {}

    @property
    def config(self) -> Phi3Config:
        """The effective config: the file's, with the sliding window in force."""
        return self.params.config

    @property
    def dtype(self) -> Any:
        return self.params.dtype

    @property
    def backend(self) -> Backend:
        """The per-device choices this model was loaded with (:mod:`phijax.backend`)."""
        return self.params.backend

    @property
    def sliding_window(self) -> int | None:
        return self.config.sliding_window

    # -- shapes -------------------------------------------------------------

    @property
    def sequence_limit(self) -> int:
        """The most tokens (prompt + new) one sequence may have: ``max_seq_len``, at most
        the model's context."""
        return min(self.max_seq_len or self.config.context_length, self.config.context_length)

    def cache_len_for(self, needed: int, rows: int = 1) -> int:
        """Static cache length for ``rows`` sequences of up to ``needed`` tokens, or
        ContextLengthError."""
        limit = self.sequence_limit
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
        return min(driver.cache_len(needed, rows), limit)

    # -- prefill ------------------------------------------------------------

    @on_mesh
    def _prefill(self, prompts: Sequence[Sequence[int]], cache_len: int, **edits: Any):
        """:func:`phijax.driver.prefill` with this model's chunk length and mesh."""
        return driver.prefill(
            self.params, prompts, cache_len, chunk_len=self.prefill_chunk, mesh=self.mesh, **edits
        )

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
            with collector.paused():  # a bucket's first call traces and lowers its program
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
        batching.check_vocab(rows, self.config.vocab_size, f"{method}(inputs)")
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
                batching.check_vocab(np.asarray(inputs), self.config.vocab_size, "embed(inputs)")
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
        return Model(
            params, self.tokenizer, path=self.path, max_seq_len=self.max_seq_len,
            mesh=self.mesh, load_summary=self.load_summary, prefill_chunk=self.prefill_chunk,
        )  # fmt: skip

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
        request = requests.build(
            self.tokenizer, self.config, self.cache_len_for, prompts, sampler=sampler,
            max_new_tokens=max_new_tokens, seed=seed, num_samples=num_samples, chat=chat,
            stop=stop, top_logprobs=top_logprobs, edits=edits,
        )  # fmt: skip
        outputs = request.outputs(self.tokenizer)
        for row, text in self._texts(request, outputs):
            if stream is not None:
                stream(row, text)
        return request.result(outputs)

    def stream(self, prompt: str | Sequence[int], **options: Any) -> Iterator[str]:
        """Text of one continuation of ``prompt`` as it decodes (``generate``'s options);
        ``for piece in model.stream("Hi", chat=True): print(piece, end="")``."""
        bound = inspect.signature(Model.generate).bind(self, prompt, **options)
        bound.apply_defaults()  # generate's defaults, written once
        args = dict(bound.arguments)
        del args["self"], args["prompts"]
        if (
            args.pop("stream") is not None
            or args["num_samples"] != 1
            or not (isinstance(prompt, str) or requests.is_ids(prompt))
        ):
            raise ConfigError(
                "stream() takes one prompt and one sample; use generate(stream=...) for more."
            )
        request = requests.build(self.tokenizer, self.config, self.cache_len_for, prompt, **args)
        for _row, text in self._texts(request, request.outputs(self.tokenizer)):
            yield text

    @on_mesh
    def _texts(
        self, request: requests.Request, outputs: list[RowOutput]
    ) -> Iterator[tuple[int, str]]:
        """The request through :mod:`phijax.driver`, fed to ``outputs``: yields ``(row, new
        text)`` as it decodes."""
        chunks = driver.decode_chunks(
            self.params, request, batch=self.decode_batch(len(request.rows)),
            breaker_mask=self._breaker_mask, chunk_len=self.prefill_chunk, mesh=self.mesh,
        )  # fmt: skip
        yield from driver.stream_texts(request, outputs, chunks)

    @cached_property
    def _decode_plan(self) -> dict[int, int]:
        """Rows to pad a small decode batch to (measured per machine: :mod:`phijax.decode_padding`)."""
        c = self.config
        return decode_padding.decode_rows(self.backend, (2 * c.intermediate_size, c.hidden_size))

    def decode_batch(self, n: int) -> int:
        """The compiled batch size for ``n`` decode rows: a power of two, padded further
        where this machine's plan measured more rows to be faster (bf16 on CPU)."""
        b = bucket(n, 1)
        return max(b, self._decode_plan.get(b, b))

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
        limit = scoring.resolve_max_length(max_length, self.sequence_limit)
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
        limit = scoring.resolve_max_length(max_length, self.sequence_limit)
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

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model({str(self.path)!r}, {c.architecture}, {c.num_layers} layers, hidden {c.hidden_size}, "
            f"dtype={jnp.dtype(self.dtype).name})"
        )
