"""Tokenizer: a GGUF file's own vocabulary (or a ``tokenizer.json``) behind one small API.

Built on Hugging Face ``tokenizers`` (Rust); see :mod:`phijax.tokenizer.gguf_vocab`
for how GGUF vocabularies become one. Adds what a generation engine needs on
top: BOS handling as the file specifies, stop ids (eos plus end-of-turn
tokens), sandboxed chat templates, and a streaming decoder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import tokenizers

from phijax.errors import TokenizerError
from phijax.gguf import GGUFFile
from phijax.tokenizer import chat, gguf_vocab, vocab_cache
from phijax.tokenizer.stream import StreamDecoder

# Texts that end a turn or a document in the families we run; a vocabulary
# containing one makes it a stop token.
END_OF_TURN_TOKENS = (
    "<|end|>",
    "<|endoftext|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
)
_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>")
_EOS_NAMES = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>")

__all__ = ["StreamDecoder", "Tokenizer"]


class Tokenizer:
    """Text ⇄ token ids for one model, plus its chat template and stop tokens."""

    def __init__(
        self,
        hf: tokenizers.Tokenizer,
        *,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        chat_template: str | None = None,
        extra_stop_ids: Sequence[int] = (),
        name: str = "tokenizer",
    ):
        self.hf = hf
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.name = name
        stops = [eos_id, *extra_stop_ids]
        stops += [hf.token_to_id(t) for t in END_OF_TURN_TOKENS]
        self.stop_ids: tuple[int, ...] = tuple(sorted({t for t in stops if t is not None}))

    # -- construction -------------------------------------------------------

    @classmethod
    def from_gguf(
        cls, source: str | os.PathLike | GGUFFile, *, prepared: vocab_cache.Entry | None = None
    ) -> Tokenizer:
        """The vocabulary embedded in a GGUF file (a path or a :class:`~phijax.gguf.GGUFFile`).

        With caches on, the first build of a model file's vocabulary keeps what it derived
        (:mod:`phijax.tokenizer.vocab_cache`) and builds from a path start from it. A
        :class:`~phijax.gguf.GGUFFile` is built from its metadata as it stands (its owner may
        have edited it), unless ``prepared``, the entry looked up for its file before it was
        opened with the entry's spans deferred (as ``phijax.load`` does), is given."""
        if isinstance(source, GGUFFile):
            f = source
        else:
            prepared = prepared or vocab_cache.lookup(source)
            f = GGUFFile(source, deferred=prepared.spans if prepared else None)
        if prepared is not None and prepared.spans.identity != f.identity:
            prepared = None  # the file changed between the lookup and the parse
        where = str(f.path)
        if prepared is None:
            vocab = gguf_vocab.GGUFVocab.from_metadata(f.metadata, where)
            pieces = gguf_vocab.pieces(vocab)
        else:
            pieces = prepared.pieces
            vocab = gguf_vocab.GGUFVocab.from_metadata(f.metadata, where, tokens=pieces.tokens)
        hf = gguf_vocab.build(vocab, pieces)
        if prepared is None:
            vocab_cache.save(f, pieces)
        template = f.metadata.get("tokenizer.chat_template")
        if not isinstance(template, str):
            template = chat.PHI3_TEMPLATE if f.architecture == "phi3" else None
        ids = vocab.special_ids
        return cls(
            hf,
            bos_id=ids.get("bos"),
            eos_id=ids.get("eos"),
            add_bos=vocab.add_bos,
            chat_template=template,
            extra_stop_ids=[ids[k] for k in ("eot", "eom") if k in ids],
            name=str(f.path),
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos: bool | None = None,
    ) -> Tokenizer:
        """A ``tokenizer.json``. A ``tokenizer_config.json`` beside it supplies the
        bos/eos tokens and chat template (HF convention); arguments override it."""
        path = Path(path)
        try:
            hf = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for bad files
            raise TokenizerError(f"{path}: not a valid tokenizer.json ({e}).") from None
        cfg = _read_tokenizer_config(path.with_name("tokenizer_config.json"))
        bos = _token_text(bos_token or cfg.get("bos_token")) or _first_present(hf, _BOS_NAMES)
        eos = _token_text(eos_token or cfg.get("eos_token")) or _first_present(hf, _EOS_NAMES)
        bos_id = hf.token_to_id(bos) if bos else None
        if add_bos is None:
            add_bos = cfg.get("add_bos_token")
        if add_bos is None:  # what the file's own post-processor does
            add_bos = bos_id is not None and hf.encode("", add_special_tokens=True).ids[:1] == [
                bos_id
            ]
        return cls(
            hf,
            bos_id=bos_id,
            eos_id=hf.token_to_id(eos) if eos else None,
            add_bos=bool(add_bos),
            chat_template=chat_template or cfg.get("chat_template"),
            name=str(path),
        )

    # -- text <-> ids -------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)

    def encode(
        self, text: str, *, add_bos: bool | None = None, parse_special: bool = True
    ) -> list[int]:
        """Token ids of ``text``. ``add_bos=None`` follows the file; ``parse_special=False``
        reads control-token text such as ``<|end|>`` as plain characters."""
        return self.encode_batch([text], add_bos=add_bos, parse_special=parse_special)[0]

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool | None = None, parse_special: bool = True
    ) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TokenizerError("encode_batch takes a list of strings.")
        self.hf.encode_special_tokens = not parse_special
        try:
            encodings = self.hf.encode_batch(list(texts), add_special_tokens=False)
        finally:
            self.hf.encode_special_tokens = False
        prefix = (
            [self.bos_id]
            if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None
            else []
        )
        return [prefix + e.ids for e in encodings]

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``; ``skip_special`` drops control tokens (bos, eos, turn markers)."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def decode_batch(
        self, batch: Sequence[Sequence[int]], *, skip_special: bool = False
    ) -> list[str]:
        return self.hf.decode_batch(
            [[int(i) for i in ids] for ids in batch], skip_special_tokens=skip_special
        )

    def stream(self, *, skip_special: bool = False) -> StreamDecoder:
        """A :class:`StreamDecoder` emitting only complete new text as ids arrive."""
        skipped = self._special_ids if skip_special else frozenset()
        return StreamDecoder(
            partial(self.decode, skip_special=skip_special), self._byte_ids, skipped
        )

    @cached_property
    def token_texts(self) -> list[str]:
        """Each token's own text (``decode([id])``), indexed by id; built once, on first use."""
        return self.decode_batch([[i] for i in range(self.vocab_size)])

    @cached_property
    def _byte_ids(self) -> frozenset[int]:
        """Ids of byte-fallback tokens (``<0xXX>``)."""
        pattern = re.compile(r"<0x[0-9A-Fa-f]{2}>")
        return frozenset(i for t, i in self.hf.get_vocab().items() if pattern.fullmatch(t))

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        """Ids that ``decode(..., skip_special=True)`` drops: the special added tokens."""
        added = self.hf.get_added_tokens_decoder()
        return frozenset(i for i, token in added.items() if token.special)

    # -- chat ---------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        template: str | None = None,
    ) -> str:
        """The prompt text for ``messages``, rendered by the file's template in a sandbox."""
        source = template or self.chat_template
        if source is None:
            raise TokenizerError(
                f"{self.name} has no chat template; pass template=... (a Jinja string) "
                "or use raw prompts (chat=False)."
            )
        return chat.render(
            source,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._text_of(self.bos_id),
            eos_token=self._text_of(self.eos_id),
        )

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered chat: special tokens parsed, BOS as the file says, and
        once only when the template writes it too (as llama.cpp avoids a double BOS)."""
        ids = self.encode(
            self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        )
        if self.bos_id is not None and ids[:2] == [self.bos_id, self.bos_id]:
            ids = ids[1:]
        return ids

    def _text_of(self, token_id: int | None) -> str:
        return "" if token_id is None else self.hf.id_to_token(token_id) or ""

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab={self.vocab_size}, bos={self.bos_id}, stop={list(self.stop_ids)})"


def _read_tokenizer_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: cannot read ({e}).") from None
    return cfg if isinstance(cfg, dict) else {}


def _token_text(token: Any) -> str | None:
    """HF configs give special tokens as strings or as {"content": ...} dicts."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) and token else None


def _first_present(hf: tokenizers.Tokenizer, names: Sequence[str]) -> str | None:
    return next((n for n in names if hf.token_to_id(n) is not None), None)
