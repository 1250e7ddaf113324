"""Generation results and the per-row bookkeeping behind them (stops, streaming text).

The compiled decode loop hands back token ids in chunks; :class:`RowOutput`
turns one row's ids into text as they arrive (through the tokenizer's
:class:`~phijax.tokenizer.StreamDecoder`, so multi-byte characters never break),
watches for stop strings, holds back text that might be the start of one, and
records why the row finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from phijax.tokenizer import Tokenizer


@dataclass
class Generation:
    """Results of ``Model.generate``: row ``i * num_samples + s`` is sample ``s`` of prompt ``i``.

    ``tokens`` are the new tokens (a stop token is not included; the token that
    completed a stop string is); ``texts`` their text (cut before a stop string);
    ``logprobs`` each token's log-probability under the model (the raw softmax,
    whatever the sampler did); ``top_logprobs`` per token the ``(id, logprob)`` of
    the model's most likely alternatives when asked for; ``finish_reasons``
    ``"stop"`` or ``"length"``. ``timings``: seconds and tokens per second of
    prefill and decode.
    """

    tokens: list[list[int]]
    texts: list[str]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    prompt_tokens: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[list[tuple[int, float]]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class RowOutput:
    """One row's tokens and text so far; ``add`` returns the text that may be streamed now."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        stop_ids: frozenset[int],
        stop_strings: Sequence[str],
        max_new_tokens: int,
    ):
        self.stop_ids = stop_ids
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.max_new_tokens = max_new_tokens
        self.decoder = tokenizer.stream(skip_special=True)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []
        self.finish_reason: str | None = None
        self._text = ""  # decoded so far
        self._streamed = 0  # characters of _text already handed out
        self._holdback = max((len(s) for s in self.stop_strings), default=1) - 1

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        return self._text

    def add(self, token: int, logprob: float, top: list[tuple[int, float]] | None = None) -> str:
        """Record one sampled token; returns newly final text (possibly "")."""
        if self.done:
            return ""
        if token in self.stop_ids:
            self.finish_reason = "stop"
            self._text += self.decoder.flush()
            return self._release(final=True)
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if top is not None:
            self.top_logprobs.append(top)
        self._text += self.decoder.push(token)
        if self.stop_strings:
            # Text stays held back while it could begin a stop string, so a match is new.
            cut = min((i for i in map(self._text.find, self.stop_strings) if i >= 0), default=-1)
            if cut >= 0:
                self._text = self._text[:cut]
                self.finish_reason = "stop"
                return self._release(final=True)
        if len(self.tokens) >= self.max_new_tokens:
            self.finish_reason = "length"
            self._text += self.decoder.flush()
            return self._release(final=True)
        return self._release(final=False)

    def _release(self, final: bool) -> str:
        end = len(self._text) if final else max(self._streamed, len(self._text) - self._holdback)
        out = self._text[self._streamed : end]
        self._streamed = end
        return out
