"""A ``generate()`` call, validated: :class:`Request` and :func:`build`.

Every argument is checked here, before anything compiles, with an error that names it;
the result is what :mod:`phijax.driver` runs: prompt ids, one row per (prompt, sample),
per-row samplers, stop ids and strings, the cache length and the edits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from phijax import batching
from phijax.config import Phi3Config
from phijax.errors import ConfigError
from phijax.generation import Generation, RowOutput
from phijax.model.hooks import EditFns, check_broadcast, split_edits
from phijax.sampling import Sampler
from phijax.tokenizer import Tokenizer

MAX_TOP_LOGPROBS = 20


@dataclass
class Request:
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

    def outputs(self, tokenizer: Tokenizer) -> list[RowOutput]:
        """Fresh per-row text bookkeeping (stops, streaming) for this request's rows."""
        return [
            RowOutput(tokenizer, self.stop_ids, self.stop_strings, self.max_new_tokens)
            for _ in self.rows
        ]

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


def build(
    tokenizer: Tokenizer,
    config: Phi3Config,
    cache_len_for: Callable[[int, int], int],
    prompts: Any,
    *,
    sampler: Sampler | Sequence[Sampler] | None,
    max_new_tokens: int,
    seed: int,
    num_samples: int,
    chat: bool,
    stop: Sequence[str | int],
    top_logprobs: int,
    edits: Mapping[str, Any] | None,
) -> Request:
    """Validate a generate() call (its arguments, and their defaults, as ``Model.generate``
    documents them) and prepare its rows, samplers, stops and sizes; ``cache_len_for(tokens, rows)``
    sizes the cache (or raises ContextLengthError)."""
    if not _is_count(max_new_tokens):
        raise ConfigError(f"max_new_tokens = {max_new_tokens!r} must be a positive integer.")
    if not _is_count(num_samples):
        raise ConfigError(f"num_samples = {num_samples!r} must be a positive integer.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed = {seed!r} must be an integer.")
    if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise ConfigError(
            f"top_logprobs = {top_logprobs!r} must be an integer from 0 to {MAX_TOP_LOGPROBS}."
        )
    batch = prompt_ids(tokenizer, config.vocab_size, prompts, chat)
    samplers = _samplers(sampler, len(batch))
    stop_ids, stop_strings = _stops(tokenizer, config.vocab_size, stop)
    arrays, fns = split_edits(edits, config.num_layers)
    check_broadcast(arrays, (1, config.hidden_size))
    rows = [(i, s) for i in range(len(batch)) for s in range(num_samples)]
    return Request(
        prompts=batch,
        rows=rows,
        samplers=[samplers[i] for i, _ in rows],
        stop_ids=stop_ids,
        stop_strings=stop_strings,
        seed=seed,
        max_new_tokens=max_new_tokens,
        top_logprobs=top_logprobs,
        cache_len=cache_len_for(max(len(p) for p in batch) + max_new_tokens, len(rows)),
        edit_arrays=arrays,
        edit_fns=fns,
    )


def is_ids(x: Any) -> bool:
    """A non-empty sequence of token ids (one prompt), as opposed to a list of prompts."""
    return not isinstance(x, str) and len(x) > 0 and isinstance(x[0], (int, np.integer))


def prompt_ids(tokenizer: Tokenizer, vocab: int, prompts: Any, chat: bool) -> list[list[int]]:
    """One prompt or a list (strings, wrapped in the chat template as a user turn with
    ``chat``, or token ids) as checked id rows."""
    if isinstance(prompts, str) or is_ids(prompts):
        prompts = [prompts]
    if not prompts:
        raise ConfigError("generate() needs at least one prompt.")
    out = []
    for p in prompts:
        if isinstance(p, str):
            messages = [{"role": "user", "content": p}]
            out.append(tokenizer.encode_chat(messages) if chat else tokenizer.encode(p))
        else:
            out.append(batching.ids_of(p, f"prompts[{len(out)}]"))
        if not out[-1]:
            raise ConfigError("a prompt encodes to no tokens; give some text or token ids.")
    batching.check_vocab(out, vocab, "prompts")
    return out


def _samplers(sampler: Any, n_prompts: int) -> list[Sampler]:
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


def _stops(tokenizer: Tokenizer, vocab: int, stop: Any) -> tuple[frozenset[int], tuple[str, ...]]:
    stop = [stop] if isinstance(stop, (str, int)) else list(stop)
    ids = [s for s in stop if isinstance(s, (int, np.integer)) and not isinstance(s, bool)]
    strings = [s for s in stop if isinstance(s, str) and s]
    if len(ids) + len(strings) != len(stop):
        raise ConfigError(f"stop = {stop!r}: give non-empty strings and/or token ids.")
    batching.check_vocab([ids], vocab, "stop")
    return frozenset(tokenizer.stop_ids) | frozenset(int(i) for i in ids), tuple(strings)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1
