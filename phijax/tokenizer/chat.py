"""Chat templates, rendered as untrusted code.

A template comes from a model file, so it runs in Jinja's
``ImmutableSandboxedEnvironment`` (no attribute walks to ``__class__`` /
``__globals__``, no mutation of the objects we pass in; see CVE-2024-34359 for
what happens without it). The variables and helpers follow the HF
``transformers`` conventions so templates written for it render the same:
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``,
``raise_exception``, ``strftime_now`` and the ``tojson`` filter.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from phijax.errors import TokenizerError

# Phi-3's turn format, used when a phi3 file carries no template.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
MAX_OUTPUT_CHARS = 1 << 22


class _TemplateRaised(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(
            f"chat template has a syntax error on line {e.lineno}: {e.message}"
        ) from None


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as plain dicts, each with a string ``role`` and ``content``."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TokenizerError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}."
        )
    out = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise TokenizerError(
                f"messages[{i}] = {m!r} needs a string 'role' and a string 'content'."
            )
        out.append(dict(m))
    return out


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``template`` for ``messages`` in the sandbox; any failure is a TokenizerError."""
    compiled = _compile(template)
    try:
        text = compiled.render(
            messages=validate_messages(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except jinja2.exceptions.SecurityError as e:
        raise TokenizerError(
            f"chat template refused by the sandbox ({e}); the template tried to reach "
            "Python internals. Pass a trusted template= instead."
        ) from None
    except _TemplateRaised as e:
        raise TokenizerError(f"chat template rejected the messages: {e}") from None
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise TokenizerError(f"chat template failed to render: {type(e).__name__}: {e}") from None
    if len(text) > MAX_OUTPUT_CHARS:
        raise TokenizerError(
            f"chat template produced {len(text)} characters; refusing more than {MAX_OUTPUT_CHARS}."
        )
    return text
