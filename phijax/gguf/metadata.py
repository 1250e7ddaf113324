"""A GGUF file's metadata as a mapping whose large values may wait in the file until read.

A parse given the byte spans an earlier parse of the same file version recorded
(:class:`ValueSpans`) skips those values (a vocabulary's 10^5 strings); the mapping parses
each, with the reader's checks, when it is first read (:class:`~phijax.gguf.reader.GGUFFile`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ValueSpans:
    """Where some metadata values lie in one version of a GGUF file: the file's identity
    (size, modification time in ns, inode) and each key's value as a byte span ``[start,
    end)`` from its array's element type on (:meth:`GGUFFile.value_spans`)."""

    identity: tuple[int, int, int]
    spans: Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class DeferredValue:
    """A value left in the file, at bytes ``[start, end)``: parsed when first read."""

    start: int
    end: int


class Metadata(MutableMapping[str, Any]):
    """A GGUF file's metadata by key, in file order, used as a dict. A value skipped at parse
    time (a :class:`ValueSpans` entry) is parsed, with every check, when first read; ``in``,
    ``len`` and iterating the keys parse nothing."""

    def __init__(self, parse: Callable[[str, DeferredValue], Any]):
        self._values: dict[str, Any] = {}
        self._parse = parse

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        if isinstance(value, DeferredValue):
            value = self._values[key] = self._parse(key, value)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value

    def __delitem__(self, key: str) -> None:
        del self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def deferred(self) -> list[str]:
        """The keys whose values have not been parsed yet."""
        return [k for k, v in self._values.items() if isinstance(v, DeferredValue)]
