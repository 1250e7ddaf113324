"""Every failure a user can cause is a :class:`PhijaxError`, one subclass per family.

Messages name the file, key or value at fault and say what to do about it.
Where a family is also a familiar Python category (a bad value, a missing
key), it subclasses that builtin too, so generic handlers keep working.
:func:`short_repr` shows a value in a message, cut to a readable length.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PhijaxError(Exception):
    """Base class of every error phijax raises on purpose."""


class GGUFFormatError(PhijaxError, ValueError):
    """A GGUF file is truncated, corrupt, or breaks the format's rules."""


class UnsupportedError(PhijaxError):
    """Well-formed input that phijax does not handle (a ggml type, an architecture, a version)."""


class ConfigError(PhijaxError, ValueError):
    """A model or experiment configuration value is missing or out of range."""


class TokenizerError(PhijaxError, ValueError):
    """A tokenizer cannot be built, or a chat template is invalid or unsafe."""


class ContextLengthError(PhijaxError, ValueError):
    """A prompt (plus the tokens to generate) does not fit the context."""


class HubError(PhijaxError):
    """A model source could not be resolved to a local file (hub, PyPI or path)."""


class ResourceError(PhijaxError):
    """The request does not fit the machine (memory for weights and KV cache)."""


def short_repr(value: object) -> str:
    """``repr`` of a value for an error message, cut to a readable length.

    Numpy arrays and scalars show as Python values; a list longer than 8 shows its
    first 8 items, and the text stops at 80 characters (a GGUF array can hold a
    whole vocabulary).
    """
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, list) and len(value) > 8:
        value = [*value[:8], "..."]
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a misspelt ``word``, or ""."""
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""
