"""phijax.load → Model: jit-compiled prefill and decode over a static, preallocated KV cache.

Shapes are static so compiled steps are reused: prompts pad to bucket lengths
(powers of two up to ``PREFILL_CHUNK``; longer prompts prefill in chunks of
it), batches pad to powers of two, the cache length is a power-of-two bucket
of what the request needs (capped by ``max_seq_len`` and the model context),
and attention reads only a power-of-two bucket of the filled cache, so decode
cost follows the tokens present, not the cache size. Decode runs
``DECODE_STEPS`` steps per call in a ``lax.fori_loop``, returning to Python
only to stream text and check stops.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phijax import hub, sampling
from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.errors import ConfigError, ContextLengthError, ResourceError
from phijax.generation import Generation, RowOutput
from phijax.gguf.reader import GGUFFile
from phijax.gguf.weights import load_weights
from phijax.model.phi3 import LAYOUTS, Phi3
from phijax.model.rope import inverse_frequencies
from phijax.pypi_models import cache_dir
from phijax.sampling import Sampler
from phijax.tokenizer import Tokenizer

PREFILL_CHUNK = 256
DECODE_STEPS = 16
MIN_BUCKET = 16


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two ≥ max(n, minimum)."""
    return 1 << max(int(n) - 1, minimum - 1).bit_length()


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


class Model:
    """A loaded Phi-3-family model: config, tokenizer, Flax module and compiled steps."""

    def __init__(
        self,
        module: Phi3,
        tokenizer: Tokenizer,
        *,
        path: Path,
        max_seq_len: int | None,
        sliding_window: int | None,
        rope_factors: dict[str, np.ndarray],
    ):
        self.module = module
        self.config: Phi3Config = module.config
        self.tokenizer = tokenizer
        self.path = path
        self.max_seq_len = max_seq_len
        self.sliding_window = sliding_window
        self._rope_factors = rope_factors
        self.prefill_chunk = PREFILL_CHUNK
        self._breakers: dict[tuple[str, ...], np.ndarray] = {}
        self._graphdef, self._state = nnx.split(module)

    @property
    def dtype(self) -> Any:
        return self.module.dtype

    # -- shapes -------------------------------------------------------------

    def _limit(self) -> int:
        return min(self.max_seq_len or self.config.context_length, self.config.context_length)

    def cache_len_for(self, needed: int) -> int:
        """Static cache length for sequences of up to ``needed`` tokens, or ContextLengthError."""
        limit = self._limit()
        if needed > limit:
            which = "max_seq_len" if self.max_seq_len and self.max_seq_len < self.config.context_length else "the model's context"
            raise ContextLengthError(
                f"{needed} tokens (prompt + new tokens) do not fit {which} of {limit}. "
                "Shorten the prompt, lower max_new_tokens"
                + (", or load with a larger max_seq_len." if which == "max_seq_len" else ".")
            )
        return min(bucket(needed, 128), limit)

    @cached_property
    def _rope(self) -> tuple[jax.Array, float]:
        """Rope frequencies and cos/sin scale. LongRoPE's short or long factors are chosen once,
        from the model's sequence limit (``max_seq_len``, else the context), so a loaded model
        gives a prompt the same logits whatever the request's length."""
        inv_freq, scale = inverse_frequencies(
            self.config, self._limit(), self._rope_factors.get("long"), self._rope_factors.get("short")
        )
        return jnp.asarray(inv_freq), scale

    # -- compiled steps -----------------------------------------------------

    @partial(jax.jit, static_argnums=(0,), static_argnames=("attend_len", "scale", "all_logits"), donate_argnames=("cache",))
    def _forward(self, state, tokens, positions, cache, kv_len, inv_freq, logit_index, *, attend_len, scale, all_logits):
        module = nnx.merge(self._graphdef, state)
        return module(
            tokens,
            positions,
            cache,
            kv_len,
            (inv_freq, scale),
            attend_len=attend_len,
            window=self.sliding_window,
            logit_index=None if all_logits else logit_index,
        )

    @partial(jax.jit, static_argnums=(0,), static_argnames=("order", "top_n"))
    def _sample(self, logits, base_keys, step, sstate, params, *, order, top_n):
        """Sample one token per row from ``logits [batch, vocab]`` with step ``step``'s keys;
        also the top ``top_n`` alternatives' ids and logprobs ``[batch, top_n]``."""
        keys = sampling.step_keys(base_keys, step)
        tokens, logprobs, sstate = sampling.sample(keys, logits, sstate, params, order)
        if top_n:
            alt_lp, alt_ids = jax.lax.top_k(jax.nn.log_softmax(logits, axis=-1), top_n)
        else:
            alt_lp, alt_ids = jnp.zeros((logits.shape[0], 0)), jnp.zeros((logits.shape[0], 0), jnp.int32)
        return tokens, logprobs, alt_ids, alt_lp, sstate

    @partial(
        jax.jit,
        static_argnums=(0,),
        static_argnames=("attend_len", "scale", "steps", "order", "top_n"),
        donate_argnames=("cache", "sstate"),
    )
    def _decode(
        self, state, cache, tokens, done, budget, stop_ids, inv_freq, base_keys, step0, sstate, params,
        *, attend_len, scale, steps, order, top_n,
    ):  # fmt: skip
        """``steps`` sampled steps from the last tokens ``[batch]``. A row stops at a stop id or
        after ``budget [batch]`` more tokens. Returns tokens (-1 once done), logprobs, top
        alternatives ``[batch, steps(, top_n)]``, stop flags, the cache and the sampler state."""
        module = nnx.merge(self._graphdef, state)
        b = tokens.shape[0]

        def step(t, carry):
            cache, sstate, tok, done, out = carry
            pos = cache.lengths
            live = ~done
            kv_len = jnp.where(live, pos + 1, pos)
            logits, cache = module(
                tok[:, None], pos[:, None], cache, kv_len, (inv_freq, scale), attend_len=attend_len, window=self.sliding_window
            )
            nxt, lp, alt_ids, alt_lp, new_sstate = self._sample(
                logits[:, 0], base_keys, step0 + t, sstate, params, order=order, top_n=top_n
            )
            sstate = jax.tree.map(lambda new, old: jnp.where(live.reshape(-1, *[1] * (new.ndim - 1)), new, old), new_sstate, sstate)
            nxt = jnp.where(live, nxt, tok)
            out = (
                out[0].at[:, t].set(jnp.where(live, nxt, -1)),
                out[1].at[:, t].set(jnp.where(live, lp, 0.0)),
                out[2].at[:, t].set(alt_ids),
                out[3].at[:, t].set(alt_lp),
            )
            done = done | jnp.isin(nxt, stop_ids) | (t + 1 >= budget)
            return KVCache(cache.k, cache.v, kv_len), sstate, nxt, done, out

        out = (
            jnp.full((b, steps), -1, jnp.int32),
            jnp.zeros((b, steps), jnp.float32),
            jnp.zeros((b, steps, top_n), jnp.int32),
            jnp.zeros((b, steps, top_n), jnp.float32),
        )
        cache, sstate, _, done, out = jax.lax.fori_loop(0, steps, step, (cache, sstate, tokens, done, out))
        return (*out, done, cache, sstate)

    # -- prefill ------------------------------------------------------------

    def _prefill(self, prompts: Sequence[Sequence[int]], cache_len: int, *, all_logits: bool):
        """Run the prompts (a batch padded to a power of two); returns per-row logits
        (last position, or all positions) and the filled cache."""
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
        cache = KVCache.create(self.config, b, cache_len, self.dtype)
        inv_freq, scale = self._rope
        outputs = []
        for start in range(0, width, chunk):
            positions = np.broadcast_to(np.arange(start, start + chunk, dtype=np.int32), (b, chunk))
            kv_len = np.minimum(lengths, start + chunk).astype(np.int32)
            last = np.clip(lengths - 1 - start, 0, chunk - 1).astype(np.int32)[:, None]
            logits, cache = self._forward(
                self._state,
                jnp.asarray(tokens[:, start : start + chunk]),
                jnp.asarray(positions),
                cache,
                jnp.asarray(kv_len),
                inv_freq,
                jnp.asarray(last),
                attend_len=min(bucket(start + chunk, 128), cache_len),
                scale=scale,
                all_logits=all_logits,
            )
            outputs.append(logits)
        if all_logits:
            full = np.concatenate([np.asarray(o) for o in outputs], axis=1)
            return [full[i, : lengths[i]] for i in range(n)], cache
        last_chunk = (lengths - 1) // chunk
        stacked = np.stack([np.asarray(o)[:, 0] for o in outputs])  # [chunks, b, vocab]
        return stacked[last_chunk, np.arange(b)], cache

    # -- public API ---------------------------------------------------------

    def logits(self, ids: Sequence[int] | Sequence[Sequence[int]]) -> np.ndarray | list[np.ndarray]:
        """f32 logits ``[seq, vocab]`` for one token-id sequence, or a list of them for a list."""
        single = len(ids) > 0 and isinstance(ids[0], (int, np.integer))
        batch = [list(map(int, ids))] if single else [list(map(int, s)) for s in ids]
        if any(len(s) == 0 for s in batch):
            raise ConfigError("logits() needs non-empty token sequences.")
        self._check_ids(batch)
        cache_len = self.cache_len_for(max(len(s) for s in batch))
        rows, _ = self._prefill(batch, cache_len, all_logits=True)
        return rows[0] if single else rows

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
    ) -> Generation:
        """Continue each prompt (a string or token ids) ``num_samples`` times.

        ``sampler``: one :class:`~phijax.Sampler` for every prompt or one per prompt
        (default: ``Sampler()``, the plain softmax at temperature 1). Sample ``s`` of every
        prompt draws its step-``t`` token with key ``fold_in(fold_in(PRNGKey(seed), s), t)``,
        so its tokens depend on nothing else in the batch. Rows stop at the tokenizer's stop
        ids, at ``stop`` (strings, or token ids), or after ``max_new_tokens``. ``chat`` wraps
        string prompts in the chat template as a user turn. ``stream(row, text)`` receives
        text as it decodes (row ``i * num_samples + s``). ``top_logprobs``: also return that
        many most likely alternatives per token (at most 20).
        """
        events = self._run(prompts, sampler, max_new_tokens, seed, num_samples, chat, stop, top_logprobs)
        while True:
            try:
                row, text = next(events)
            except StopIteration as end:
                return end.value
            if stream is not None:
                stream(row, text)

    def stream(self, prompt: str | Sequence[int], **kwargs: Any) -> Iterator[str]:
        """Text of one continuation of ``prompt`` as it decodes (``generate``'s options);
        ``for piece in model.stream("Hi", chat=True): print(piece, end="")``."""
        if kwargs.get("num_samples", 1) != 1 or not (isinstance(prompt, str) or _is_ids(prompt)):
            raise ConfigError("stream() takes one prompt and one sample; use generate(stream=...) for more.")
        for _row, text in self._run(prompt, **{**_GENERATE_DEFAULTS, **kwargs}):
            yield text

    def _run(self, prompts, sampler, max_new_tokens, seed, num_samples, chat, stop, top_logprobs):
        """Generation as a Python generator of ``(row, text)``; returns the :class:`Generation`."""
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens = {max_new_tokens!r} must be a positive integer.")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples = {num_samples!r} must be a positive integer.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed = {seed!r} must be an integer.")
        if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            raise ConfigError(f"top_logprobs = {top_logprobs!r} must be an integer from 0 to 20.")
        batch = self._prompt_ids(prompts, chat)
        samplers = self._samplers(sampler, len(batch))
        stop_ids, stop_strings = self._stops(stop)
        t0 = time.perf_counter()
        cache_len = self.cache_len_for(max(len(p) for p in batch) + max_new_tokens)
        last_logits, prompt_cache = self._prefill(batch, cache_len, all_logits=False)
        rows = [(i, s) for i in range(len(batch)) for s in range(num_samples)]
        n, b = len(rows), bucket(len(rows), 1)
        take = jnp.asarray([i for i, _ in rows] + [0] * (b - n), jnp.int32)
        cache = KVCache(
            jnp.take(prompt_cache.k, take, axis=1), jnp.take(prompt_cache.v, take, axis=1), jnp.take(prompt_cache.lengths, take)
        )
        del prompt_cache
        row_samplers = [samplers[i] for i, _ in rows]
        row_samplers += [row_samplers[0].replace(temperature=0.0)] * (b - n)  # padding rows
        params = sampling.stack(row_samplers, self.config.vocab_size, self._breaker_mask)
        order = row_samplers[0].order
        history = np.zeros((b, cache_len), np.int32)
        prompt_len = np.ones(b, np.int32)
        for r, (i, _) in enumerate(rows):
            history[r, : len(batch[i])] = batch[i]
            prompt_len[r] = len(batch[i])
        sstate = sampling.init_state(jnp.asarray(history), jnp.asarray(prompt_len), params)
        base = sampling.base_keys(seed, [s for _, s in rows] + [0] * (b - n))
        top_n = top_logprobs
        first, first_lp, alt_ids, alt_lp, sstate = self._sample(
            jnp.take(last_logits, take, axis=0), base, jnp.int32(0), sstate, params, order=order, top_n=top_n
        )
        outputs = [RowOutput(self.tokenizer, stop_ids, stop_strings, max_new_tokens) for _ in rows]
        first, first_lp, alt_ids, alt_lp = map(np.asarray, (first, first_lp, alt_ids, alt_lp))
        t_prefill = time.perf_counter() - t0
        for r, out in enumerate(outputs):
            top = list(zip(alt_ids[r].tolist(), alt_lp[r].tolist(), strict=True)) if top_logprobs else None
            text = out.add(int(first[r]), float(first_lp[r]), top and top[:top_logprobs])
            if text:
                yield r, text
        inv_freq, scale = self._rope
        stop_dev = jnp.asarray(sorted(stop_ids) or [-1], jnp.int32)
        step = 1
        last = jnp.asarray(first)
        while not all(o.done for o in outputs):
            done = np.array([o.done for o in outputs] + [True] * (b - n))
            budget = np.array([max_new_tokens - len(o.tokens) for o in outputs] + [0] * (b - n), np.int32)
            attend = min(bucket(int(np.asarray(cache.lengths).max()) + DECODE_STEPS, 128), cache_len)
            toks, lps, alt_ids, alt_lp, _, cache, sstate = self._decode(
                self._state, cache, last, jnp.asarray(done), jnp.asarray(budget), stop_dev, inv_freq, base,
                jnp.int32(step), sstate, params,
                attend_len=attend, scale=scale, steps=DECODE_STEPS, order=order, top_n=top_n,
            )  # fmt: skip
            toks, lps, alt_ids, alt_lp = map(np.asarray, (toks, lps, alt_ids, alt_lp))
            last = jnp.asarray(np.maximum(toks[:, -1], 0))  # rows still live hold their last token
            step += DECODE_STEPS
            for r, out in enumerate(outputs):
                for t in range(DECODE_STEPS):
                    if out.done or toks[r, t] < 0:
                        break
                    top = list(zip(alt_ids[r, t].tolist(), alt_lp[r, t].tolist(), strict=True))[:top_logprobs] if top_logprobs else None
                    text = out.add(int(toks[r, t]), float(lps[r, t]), top)
                    if text:
                        yield r, text
        t_total = time.perf_counter() - t0
        new_tokens = sum(len(o.tokens) for o in outputs)
        return Generation(
            tokens=[o.tokens for o in outputs],
            texts=[o.text for o in outputs],
            logprobs=[o.logprobs for o in outputs],
            finish_reasons=[o.finish_reason for o in outputs],
            prompt_tokens=[batch[i] for i, _ in rows],
            top_logprobs=[o.top_logprobs for o in outputs] if top_logprobs else [],
            seeds=[seed] * n,
            timings={
                "prefill_s": t_prefill,
                "decode_s": t_total - t_prefill,
                "prefill_tok_s": sum(map(len, batch)) / t_prefill,
                "decode_tok_s": max(new_tokens - n, 0) / max(t_total - t_prefill, 1e-9),
            },
        )

    def score(
        self, prompts: str | Sequence[int] | Sequence[str | Sequence[int]], continuations: str | Sequence[int] | Sequence[str | Sequence[int]]
    ) -> list[np.ndarray]:
        """Log-probabilities ``[len(continuation)]`` of each continuation's tokens after its
        prompt, under the model (perplexity: ``exp(-mean)``). Strings are encoded (the
        continuation without BOS); lists pair up prompt ``i`` with continuation ``i``."""
        prompts = self._prompt_ids(prompts, chat=False)
        single = isinstance(continuations, str) or _is_ids(continuations)
        conts = [continuations] if single else list(continuations)
        if len(conts) != len(prompts):
            raise ConfigError(f"score() got {len(prompts)} prompts but {len(conts)} continuations.")
        cont_ids = [self.tokenizer.encode(c, add_bos=False) if isinstance(c, str) else [int(t) for t in c] for c in conts]
        if any(not c for c in cont_ids):
            raise ConfigError("score() needs non-empty continuations.")
        seqs = [p + c for p, c in zip(prompts, cont_ids, strict=True)]
        self._check_ids(seqs)
        logits = self.logits(seqs)
        out = []
        for p, c, lg in zip(prompts, cont_ids, logits, strict=True):
            logp = np.asarray(jax.nn.log_softmax(jnp.asarray(lg[len(p) - 1 : len(p) - 1 + len(c)]), axis=-1))
            out.append(logp[np.arange(len(c)), c])
        return out

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
            raise ConfigError(f"sampler: give one phijax.Sampler or a list of one per prompt ({n_prompts}).")
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
                out.append(self.tokenizer.encode_chat(messages) if chat else self.tokenizer.encode(p))
            else:
                out.append([int(t) for t in p])
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


_GENERATE_DEFAULTS = {
    "sampler": None, "max_new_tokens": 100, "seed": 0, "num_samples": 1, "chat": False, "stop": (),
    "top_logprobs": 0,
}  # fmt: skip


def _available_memory() -> int | None:
    device = jax.devices()[0]
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
) -> Model:
    """Load a Phi-3-family GGUF into a ready-to-run :class:`Model`.

    ``source``: a path, ``org/repo/file.gguf``, ``hf://...`` or ``pypi:NAME``
    (default: the Phi-3-mini-4k-instruct q4 GGUF). ``dtype``: weight/compute
    dtype (default f32 on CPU, bf16 elsewhere). ``max_seq_len``: a cap on
    prompt + new tokens (default: the model's context; caches are sized per
    request). ``sliding_window``: ``"auto"`` follows the file, ``"on"``
    requires it, ``"off"`` attends to the whole context (llama.cpp ignores
    Phi-3's window). ``tokenizer``: a Tokenizer or a tokenizer.json path
    overriding the file's vocabulary. ``layout``: ``"layers"`` (one array per layer,
    the CPU default: fastest decode there) or ``"stacked"`` (``[layers, ...]`` arrays
    under a scan, the accelerator default); see :func:`phijax.model.phi3.default_layout`.
    """
    enable_compilation_cache()
    path = hub.resolve(source or hub.DEFAULT_SOURCE)
    f = GGUFFile(path)
    config = Phi3Config.from_gguf(f)
    if sliding_window not in ("auto", "on", "off"):
        raise ConfigError(f"sliding_window = {sliding_window!r}; use 'auto', 'on' or 'off'.")
    if sliding_window == "on" and config.sliding_window is None:
        raise ConfigError(f"{path} has no sliding window (phi3.attention.sliding_window); use 'auto' or 'off'.")
    window = None if sliding_window == "off" else config.sliding_window
    if max_seq_len is not None and (not isinstance(max_seq_len, int) or max_seq_len < 1):
        raise ConfigError(f"max_seq_len = {max_seq_len!r} must be a positive integer.")
    dtype = jnp.dtype(dtype or default_dtype())
    weight_bytes = sum(t.n_elements for t in f.tensors.values()) * dtype.itemsize
    cache_bytes = KVCache.bytes_for(config, 1, min(max_seq_len or 2048, config.context_length), dtype)
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
        raise ConfigError(f"layout = {layout!r}; use one of {LAYOUTS} (or None for the device's default).")
    # Abstract parameters (shapes only): the loader puts each tensor in as it arrives, so the
    # weights are never held twice (not even as zeros and then the real values).
    module = nnx.eval_shape(lambda: Phi3(config, dtype=dtype, layout=layout))
    rope_factors = load_weights(f, module, progress=progress)
    return Model(module, tok, path=path, max_seq_len=max_seq_len, sliding_window=window, rope_factors=rope_factors)
