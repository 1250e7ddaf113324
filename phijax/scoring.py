"""Log-likelihoods of continuations: lm_eval's context/continuation split and an on-device scorer.

A continuation must be scored as the tokens it becomes *inside* ``context + continuation``.
Encoding it alone is wrong on SentencePiece vocabularies (Phi-3's among them), whose dummy
prefix adds a token that is not there in context: on Phi-3, ``' Paris'`` alone is
``['▁', '▁Paris']`` but ``['▁Paris']`` after a context. :func:`encode_pair` therefore splits
as lm_eval's ``TemplateLM._encode_pair`` does: trailing spaces of the context move into the
continuation, ``context + continuation`` and the context are encoded, and the continuation
is the difference. Token-id inputs are used as given.

:func:`score_pairs` runs (context ids, continuation ids) pairs through
:func:`phijax.steps.activations` in batches grouped by padded length, left-truncated as lm_eval's
``hf`` model does (``(context + continuation)[-(max_length + 1):][:-1]``). Log-softmax,
the gather of each target's log-probability and the greedy check run on the device, so
only ``[batch, seq]`` log-probabilities and flags reach the host, never ``[seq, vocab]``
logits (525 MB a row at Phi-3's 4k context).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from phijax import steps
from phijax.batching import (
    BATCH_BYTES,
    ROW_CAP,
    Group,
    bucket,
    check_vocab,
    is_id,
    pack,
    research_bucket,
    row_bytes,
)
from phijax.errors import ConfigError, ContextLengthError
from phijax.model.phi3 import Phi3
from phijax.sharding import put_batch
from phijax.tokenizer import Tokenizer

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


class TokenScores(NamedTuple):
    """One continuation's per-token log-probabilities (f32 ``[n]``) and whether each token
    is the model's argmax there (bool ``[n]``)."""

    logprobs: np.ndarray
    greedy: np.ndarray


# -- tokenization -------------------------------------------------------------------------------


def prefix_id(tokenizer: Tokenizer) -> int:
    """The token an empty context stands for (lm_eval's ``prefix_token_id``): BOS, else EOS."""
    token = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if token is None:
        raise ConfigError(
            f"{tokenizer.name} has neither a BOS nor an EOS token, so an empty context has no "
            "token to stand for it; give a non-empty context."
        )
    return token


def encode(tokenizer: Tokenizer, text: str, *, add_special: bool | None = None) -> list[int]:
    """Token ids of ``text`` as lm_eval's ``hf`` model encodes them (HF's
    ``add_special_tokens``): BOS where the vocabulary adds one, none with
    ``add_special=False``, and with ``None`` none either when ``text`` already starts with
    the BOS token's text (a chat template that writes BOS itself)."""
    add = tokenizer.add_bos and add_special is not False
    if add and add_special is None and tokenizer.bos_id is not None:
        add = not text.startswith(tokenizer.decode([tokenizer.bos_id]))
    return tokenizer.encode(text, add_bos=add)


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Pair:
    """(context ids, continuation ids) as lm_eval splits them (``TemplateLM.loglikelihood``):
    the continuation is what ``context + continuation`` adds to the context's tokens, after
    the context's trailing spaces move into the continuation. An empty context is the
    prefix token (:func:`prefix_id`), with the continuation encoded alone and no BOS."""
    if context == "":
        cont = encode(tokenizer, continuation, add_special=False)
        p = prefix_id(tokenizer)
        return ([p], cont) if cont[:1] != [p] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx or [prefix_id(tokenizer)], whole[len(ctx) :]


def as_pairs(
    tokenizer: Tokenizer,
    contexts: Any,
    continuations: Any,
    *,
    method: str,
    names: tuple[str, str] = ("contexts", "continuations"),
) -> list[Pair]:
    """User inputs (one string or id sequence each, or lists of them, paired by position)
    as (context ids, continuation ids) pairs.

    Text pairs split as :func:`encode_pair`; ids stay as given (an empty context becomes
    the prefix token); a text context before continuation ids is encoded on its own. Text
    after a token-id context cannot be split as it would be in context: ConfigError.
    """
    ctxs = _items(contexts, f"{method}({names[0]})")
    conts = _items(continuations, f"{method}({names[1]})")
    if len(ctxs) != len(conts):
        raise ConfigError(
            f"{method}() got {len(ctxs)} {names[0]} but {len(conts)} {names[1]}; "
            f"give one of the {names[1]} per item of the {names[0]}."
        )
    pairs = []
    for i, (ctx, cont) in enumerate(zip(ctxs, conts, strict=True)):
        if isinstance(cont, str) and not isinstance(ctx, str):
            raise ConfigError(
                f"{method}(): {names[1]}[{i}] is text but {names[0]}[{i}] is token ids, so the "
                "text cannot be encoded as it would be in context. Give both as text (split as "
                "lm_eval does), or the continuation as ids too."
            )
        if isinstance(cont, str):
            c_ids, k_ids = encode_pair(tokenizer, ctx, cont)
        else:
            c_ids = encode(tokenizer, ctx) if isinstance(ctx, str) else ctx
            c_ids, k_ids = c_ids or [prefix_id(tokenizer)], cont
        if not k_ids:
            raise ConfigError(
                f"{method}(): {names[1]}[{i}] = {cont!r} adds no tokens after its context; "
                "give a non-empty continuation."
            )
        pairs.append((c_ids, k_ids))
    return pairs


def _items(x: Any, arg: str) -> list[str | list[int]]:
    """One string or id sequence (→ one item), or a list of them, or a 2-D id array."""
    if isinstance(x, str):
        return [x]
    if (ids := _ids(x)) is not None:
        return [ids]
    if isinstance(x, (np.ndarray, jax.Array)) and x.ndim == 2 and _ids(x[0]) is not None:
        return [_ids(row) for row in x]
    if isinstance(x, (np.ndarray, jax.Array)) or not isinstance(x, Sequence) or not x:
        raise ConfigError(f"{arg}: give a string, token ids, or a non-empty list of either.")
    items = []
    for i, item in enumerate(x):
        ids = None if isinstance(item, str) else _ids(item, allow_empty=True)
        if ids is None and not isinstance(item, str):
            raise ConfigError(f"{arg}[{i}] = {item!r}: give a string or token ids.")
        items.append(item if ids is None else ids)
    return items


def _ids(x: Any, *, allow_empty: bool = False) -> list[int] | None:
    """``x`` as a list of ints if it is a 1-D integer sequence (non-empty unless allowed)."""
    if isinstance(x, (np.ndarray, jax.Array)):
        if x.ndim != 1 or (x.size and not jnp.issubdtype(x.dtype, jnp.integer)):
            return None
        ids = np.asarray(x).astype(np.int64).tolist()
    elif isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and all(map(is_id, x)):
        ids = [int(t) for t in x]
    else:
        return None
    return ids if ids or allow_empty else None


# -- scoring on the device ----------------------------------------------------------------------


@jax.jit
def _target_scores(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1), jnp.argmax(logits, axis=-1) == targets


def token_scores(
    params: Phi3, tokens: jax.Array, lengths: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``tokens [batch, seq]`` (right-padded, ``lengths [batch]`` valid) → the log-probability
    of ``targets [batch, seq]`` at each position (f32 ``[batch, seq]``) and whether each
    target is the argmax there (bool ``[batch, seq]``). Positions past a row's length hold
    values to be dropped. The forward pass runs one jitted layer at a time
    (:func:`phijax.steps.activations`: a new bucket compiles one layer, not all of them);
    the logits stay on the device."""
    logits, _ = steps.activations(params, tokens, lengths=lengths)
    return _target_scores(logits, targets)


def batches(
    lengths: Sequence[int],
    keys: Sequence[Any],
    batch_size: int | None,
    per_row_bytes: Any,
) -> list[Group]:
    """Batches (:class:`~phijax.batching.Group`: rows, batch, width): rows sorted longest first (ties by ``keys``, so the
    batches do not depend on the order of the input), grouped by padded width
    (:func:`~phijax.batching.research_bucket`), at most ``batch_size`` rows (default: what
    ``BATCH_BYTES`` holds by ``per_row_bytes(width)``, up to ``ROW_CAP``), every batch of a
    width padded to one power of two, so each width compiles one batch shape."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i]))
    out = []
    for width, members in itertools.groupby(order, key=lambda i: research_bucket(lengths[i])):
        members = list(members)
        fit = max(1, BATCH_BYTES // per_row_bytes(width))
        cap = min(batch_size or ROW_CAP, fit)
        batch = bucket(min(cap, len(members)), 1)  # a group's last batch pads to the same size
        out.extend(Group(members[s : s + cap], batch, width) for s in range(0, len(members), cap))
    return out


def score_pairs(
    params: Phi3,
    pairs: Sequence[Pair],
    *,
    max_length: int,
    batch_size: int | None = None,
    mesh: Any = None,
) -> list[TokenScores]:
    """Per-token scores of each pair's continuation after its context, left-truncated to
    ``max_length`` input tokens as lm_eval's ``hf`` model does; one jitted call per batch
    of :func:`batches`. A continuation longer than ``max_length`` is a ContextLengthError."""
    vocab = params.config.vocab_size
    seqs = []
    for i, (ctx, cont) in enumerate(pairs):
        if not ctx or not cont:
            raise ConfigError(f"pair {i}: context and continuation need a token each.")
        if len(cont) > max_length:
            raise ContextLengthError(
                f"continuation {i} has {len(cont)} tokens, more than max_length={max_length}; "
                "shorten it or raise max_length (up to the model's context)."
            )
        seq = (ctx + cont)[-(max_length + 1) :]
        check_vocab(np.asarray(seq), vocab, f"pair {i}")
        seqs.append(seq)
    lengths = [len(s) - 1 for s in seqs]
    out: list[TokenScores | None] = [None] * len(seqs)
    per_row = lambda width: row_bytes(params.config, width, (), True)  # noqa: E731
    inputs, shifted = [s[:-1] for s in seqs], [s[1:] for s in seqs]
    for group in batches(lengths, seqs, batch_size, per_row):
        (tokens, valid), (targets, _) = pack(inputs, group), pack(shifted, group)
        lp, greedy = token_scores(
            params, put_batch(tokens, mesh), put_batch(valid, mesh), put_batch(targets, mesh)
        )
        lp, greedy = np.asarray(lp), np.asarray(greedy)
        for r, i in enumerate(group.rows):
            n, k = lengths[i], len(pairs[i][1])
            out[i] = TokenScores(lp[r, n - k : n], greedy[r, n - k : n])
    return out


def loglikelihood(
    params: Phi3,
    pairs: Sequence[Pair],
    *,
    max_length: int,
    batch_size: int | None = None,
    mesh: Any = None,
) -> list[tuple[float, bool]]:
    """``(sum of the continuation's log-probabilities, whether every token is greedy)`` per
    pair: lm_eval's ``loglikelihood`` result (:func:`score_pairs` for the options)."""
    scores = score_pairs(params, pairs, max_length=max_length, batch_size=batch_size, mesh=mesh)
    return [(float(s.logprobs.sum(dtype=np.float64)), bool(s.greedy.all())) for s in scores]


def resolve_max_length(max_length: int | None, limit: int) -> int:
    """``max_length`` (default: ``limit``, the model's usable context), checked against it."""
    if max_length is None:
        return limit
    if not is_id(max_length) or not 1 <= max_length <= limit:
        raise ConfigError(
            f"max_length={max_length!r} is outside 1..{limit} (the model's context, or "
            "max_seq_len); give a length in that range."
        )
    return int(max_length)
