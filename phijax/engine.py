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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phijax import hub
from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.errors import ConfigError, ContextLengthError, ResourceError
from phijax.gguf.reader import GGUFFile
from phijax.gguf.weights import load_weights
from phijax.model.phi3 import Phi3
from phijax.model.rope import inverse_frequencies
from phijax.pypi_models import cache_dir
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


@dataclass
class Generation:
    """Results of ``Model.generate``: row ``i * num_samples + s`` is sample ``s`` of prompt ``i``.

    ``tokens`` are new tokens only (stop tokens excluded); ``logprobs`` are the
    model's log-probabilities of those tokens; ``finish_reasons`` are
    ``"stop"`` or ``"length"``.
    """

    tokens: list[list[int]]
    texts: list[str]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    prompt_tokens: list[list[int]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


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

    @partial(jax.jit, static_argnums=(0,), static_argnames=("attend_len", "scale", "steps"), donate_argnames=("cache",))
    def _decode(self, state, cache, tokens, done, stop_ids, inv_freq, *, attend_len, scale, steps):
        """``steps`` greedy steps from the last tokens ``[batch]``: returns new tokens and their
        logprobs ``[batch, steps]``, stop flags and the cache."""
        module = nnx.merge(self._graphdef, state)
        b = tokens.shape[0]

        def step(t, carry):
            cache, tok, done, out_tok, out_lp = carry
            pos = cache.lengths
            live = ~done
            kv_len = jnp.where(live, pos + 1, pos)
            logits, cache = module(
                tok[:, None], pos[:, None], cache, kv_len, (inv_freq, scale), attend_len=attend_len, window=self.sliding_window
            )
            logp = jax.nn.log_softmax(logits[:, 0], axis=-1)
            nxt = jnp.argmax(logp, axis=-1).astype(jnp.int32)
            lp = jnp.take_along_axis(logp, nxt[:, None], axis=-1)[:, 0]
            nxt = jnp.where(live, nxt, tok)
            out_tok = out_tok.at[:, t].set(jnp.where(live, nxt, -1))
            out_lp = out_lp.at[:, t].set(jnp.where(live, lp, 0.0))
            done = done | jnp.isin(nxt, stop_ids)
            return KVCache(cache.k, cache.v, kv_len), nxt, done, out_tok, out_lp

        init = (cache, tokens, done, jnp.full((b, steps), -1, jnp.int32), jnp.zeros((b, steps), jnp.float32))
        cache, _, done, out_tok, out_lp = jax.lax.fori_loop(0, steps, step, init)
        return out_tok, out_lp, done, cache

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
        sampler: Any = None,
        max_new_tokens: int = 100,
        seed: int = 0,
        num_samples: int = 1,
        chat: bool = False,
        stream: Callable[[int, str], None] | None = None,
    ) -> Generation:
        """Greedy continuation of each prompt (a string or token ids), ``max_new_tokens`` at most,
        stopping at the tokenizer's stop ids. ``stream(row, text)`` receives text as it decodes.
        (Sampling strategies, seeds and several samples per prompt come with the sampler.)"""
        if sampler is not None or num_samples != 1:
            raise ConfigError("sampling strategies arrive with phijax.Sampler; for now generate() is greedy.")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens = {max_new_tokens!r} must be a positive integer.")
        batch = self._prompt_ids(prompts, chat)
        t0 = time.perf_counter()
        cache_len = self.cache_len_for(max(len(p) for p in batch) + max_new_tokens)
        last_logits, cache = self._prefill(batch, cache_len, all_logits=False)
        n, b = len(batch), cache.batch
        logp = jax.nn.log_softmax(jnp.asarray(last_logits), axis=-1)
        first = np.asarray(jnp.argmax(logp, axis=-1)).astype(np.int32)
        first_lp = np.asarray(jnp.take_along_axis(logp, jnp.asarray(first)[:, None], axis=-1)[:, 0])
        t_prefill = time.perf_counter() - t0
        stop_ids = jnp.asarray(self.tokenizer.stop_ids or (-1,), jnp.int32)
        tokens = [[int(first[i])] for i in range(n)]
        logprobs = [[float(first_lp[i])] for i in range(n)]
        done = np.array([first[i] in self.tokenizer.stop_ids for i in range(n)] + [True] * (b - n))
        streams = [self.tokenizer.stream(skip_special=True) for _ in range(n)] if stream else []
        self._emit(streams, stream, tokens, done)
        inv_freq, scale = self._rope
        last = jnp.asarray(first)  # [b]: padding rows are done and ignored
        done_dev = jnp.asarray(done)
        while not done[:n].all() and min(len(t) for t, d in zip(tokens, done, strict=False) if not d) < max_new_tokens:
            attend = min(bucket(int(np.asarray(cache.lengths).max()) + DECODE_STEPS, 128), cache_len)
            out_tok, out_lp, done_dev, cache = self._decode(
                self._state, cache, last, done_dev, stop_ids, inv_freq, attend_len=attend, scale=scale, steps=DECODE_STEPS
            )
            out_tok, out_lp = np.asarray(out_tok), np.asarray(out_lp)
            for i in range(n):
                for t, lp in zip(out_tok[i], out_lp[i], strict=True):
                    if t < 0 or len(tokens[i]) >= max_new_tokens or (tokens[i] and tokens[i][-1] in self.tokenizer.stop_ids):
                        break
                    tokens[i].append(int(t))
                    logprobs[i].append(float(lp))
            done = np.asarray(done_dev).copy()
            for i in range(n):
                done[i] |= len(tokens[i]) >= max_new_tokens
            last = jnp.asarray(np.array([t[-1] for t in tokens] + [0] * (b - n), np.int32))
            done_dev = jnp.asarray(done)
            self._emit(streams, stream, tokens, done)
        t_total = time.perf_counter() - t0
        reasons = []
        for i in range(n):
            stopped = tokens[i][-1] in self.tokenizer.stop_ids
            reasons.append("stop" if stopped else "length")
            if stopped:
                tokens[i].pop()
                logprobs[i].pop()
        new_tokens = sum(len(t) for t in tokens)
        return Generation(
            tokens=tokens,
            texts=self.tokenizer.decode_batch(tokens, skip_special=True),
            logprobs=logprobs,
            finish_reasons=reasons,
            prompt_tokens=batch,
            timings={
                "prefill_s": t_prefill,
                "decode_s": t_total - t_prefill,
                "prefill_tok_s": sum(map(len, batch)) / t_prefill,
                "decode_tok_s": new_tokens / max(t_total - t_prefill, 1e-9),
            },
        )

    def _emit(self, streams, stream, tokens, done) -> None:
        for i, s in enumerate(streams):
            new_ids = tokens[i][len(s.ids) :]
            text = "".join(s.push(t) for t in new_ids if t not in self.tokenizer.stop_ids)
            if done[i]:
                text += s.flush()
            if text:
                stream(i, text)

    def _prompt_ids(self, prompts, chat: bool) -> list[list[int]]:
        if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], (int, np.integer))):
            prompts = [prompts]
        if not prompts:
            raise ConfigError("generate() needs at least one prompt.")
        out = []
        for p in prompts:
            if isinstance(p, str):
                text = self.tokenizer.apply_chat_template([{"role": "user", "content": p}]) if chat else p
                out.append(self.tokenizer.encode(text))
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
) -> Model:
    """Load a Phi-3-family GGUF into a ready-to-run :class:`Model`.

    ``source``: a path, ``org/repo/file.gguf``, ``hf://...`` or ``pypi:NAME``
    (default: the Phi-3-mini-4k-instruct q4 GGUF). ``dtype``: weight/compute
    dtype (default f32 on CPU, bf16 elsewhere). ``max_seq_len``: a cap on
    prompt + new tokens (default: the model's context; caches are sized per
    request). ``sliding_window``: ``"auto"`` follows the file, ``"on"``
    requires it, ``"off"`` attends to the whole context (llama.cpp ignores
    Phi-3's window). ``tokenizer``: a Tokenizer or a tokenizer.json path
    overriding the file's vocabulary.
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
    module = Phi3(config, dtype=dtype)
    rope_factors = load_weights(f, module, progress=progress)
    return Model(module, tok, path=path, max_seq_len=max_seq_len, sliding_window=window, rope_factors=rope_factors)
