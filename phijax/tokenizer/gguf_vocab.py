"""Build a Hugging Face ``tokenizers.Tokenizer`` from the vocabulary a GGUF file carries.

Two GGUF tokenizer models (``tokenizer.ggml.model``), built to behave like
llama.cpp's tokenizer on the same file:

- ``llama``, SentencePiece-style: tokens with scores, byte-fallback
  ``<0xXX>`` tokens, spaces escaped to U+2581 and optionally a space prefix.
  llama.cpp merges the adjacent pair whose concatenation is the
  highest-scoring vocabulary token; that is BPE whose merge ranks follow the
  merged token's score, which is what we build.
- ``gpt2``, byte-level BPE: explicit merges, and a pre-tokenizer regex chosen
  by ``tokenizer.ggml.pre`` (the same regex lists llama.cpp uses).

Control and user-defined tokens become added tokens (control ones "special",
so ``parse_special=False`` treats their text as plain text, as llama.cpp does).
Like llama.cpp, a token spelled as an end-of-generation marker (``</s>``,
``<|im_end|>``, ...) counts as a control token whatever type the file gives it;
HF tokenizers would keep a user-defined ``</s>`` (Gemma-3) matchable as text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from phijax.errors import TokenizerError, short_repr

# gguf.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Spellings llama.cpp's vocabulary loader turns into control (end-of-generation)
# tokens whatever their declared type (llama-vocab.cpp, as in llama-cpp-python 0.3.36).
EOG_SPELLINGS = frozenset(
    {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
        "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>",
    }
)  # fmt: skip

# tokenizer.ggml.pre -> (regexes applied in turn, ignore_merges)
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((_GPT2,), False),
    "gpt2": ((_GPT2,), False),
    "gpt-2": ((_GPT2,), False),
    "phi-2": ((_GPT2,), False),
    "llama-bpe": ((_LLAMA3,), True),
    "llama3": ((_LLAMA3,), True),
    "dbrx": ((_LLAMA3,), False),
    "smollm": ((r"\p{N}", _GPT2), False),
    "qwen2": ((_QWEN2,), False),
    "gpt-4o": ((_GPT4O,), False),
}


@dataclass(frozen=True)
class GGUFVocab:
    """What the GGUF metadata says about the vocabulary, validated."""

    model: str
    pre: str | None
    tokens: list[str]
    types: list[int] | None  # None: read from a prepared vocabulary (its pieces are built)
    scores: list[float] | None
    merges: list[str] | None
    add_space_prefix: bool
    special_ids: dict[str, int]
    add_bos: bool
    add_eos: bool
    model_name: str = ""
    where: str = ""  # the file, for error messages

    @classmethod
    def from_metadata(
        cls, meta: Mapping[str, Any], where: str, tokens: list[str] | None = None
    ) -> GGUFVocab:
        """The vocabulary ``meta`` describes, validated. ``tokens``: the tokens of a prepared
        vocabulary of this file (:mod:`phijax.tokenizer.vocab_cache`, validated when it was
        written); then the per-token arrays are not read, and ``types``, ``scores`` and
        ``merges`` are ``None``."""
        model = meta.get("tokenizer.ggml.model")
        if model not in ("llama", "gpt2"):
            raise TokenizerError(
                f"{where}: tokenizer.ggml.model = {model!r} is not supported "
                "(supported: 'llama' SentencePiece-style, 'gpt2' byte-level BPE)."
            )
        if tokens is None:
            tokens, types, scores, merges = _per_token_arrays(meta, model, where)
        else:
            types = scores = merges = None
        n = len(tokens)
        pre = meta.get("tokenizer.ggml.pre")
        if pre is not None and not isinstance(pre, str):
            raise TokenizerError(
                f"{where}: tokenizer.ggml.pre = {short_repr(pre)} must be a string ({_FIX})."
            )
        if model == "gpt2" and (pre or "default") not in PRE_TOKENIZERS:
            raise TokenizerError(
                f"{where}: tokenizer.ggml.pre = {pre!r} is not supported; "
                f"known: {', '.join(sorted(PRE_TOKENIZERS))}."
            )
        special_ids = {}
        for kind in ("bos", "eos", "eot", "eom", "unknown", "padding"):
            tid = meta.get(f"tokenizer.ggml.{kind}_token_id")
            if tid is None:
                continue
            if not isinstance(tid, int) or isinstance(tid, bool) or not 0 <= tid < n:
                raise TokenizerError(
                    f"{where}: tokenizer.ggml.{kind}_token_id = {tid!r} is not a token id (0..{n - 1})."
                )
            special_ids[kind] = tid
        flags = {}
        for key, default in (
            ("add_space_prefix", model == "llama"),
            ("add_bos_token", model == "llama"),
            ("add_eos_token", False),
        ):
            value = meta.get(f"tokenizer.ggml.{key}", default)
            if not isinstance(value, (bool, int)):
                raise TokenizerError(
                    f"{where}: tokenizer.ggml.{key} = {short_repr(value)} must be a boolean ({_FIX})."
                )
            flags[key] = bool(value)
        return cls(
            model=model,
            pre=pre,
            tokens=tokens,
            types=types,
            scores=scores,
            merges=merges,
            add_space_prefix=flags["add_space_prefix"],
            special_ids=special_ids,
            add_bos=flags["add_bos_token"],
            add_eos=flags["add_eos_token"],
            model_name=str(meta.get("general.name", "")),
            where=where,
        )

    def rstrip_tokens(self) -> set[str]:
        """Added tokens that swallow the whitespace after them.

        GGUF stores no such flag; llama.cpp sets it by model name, as Phi-3's
        tokenizer.json does: every token of its special-token cache (control,
        user-defined and unknown types: Microsoft's April 2024 q4 file types its added
        tokens user-defined) plus ``</s>``, except ``<unk>``, ``<s>`` and
        ``<|endoftext|>``.
        """
        name = self.model_name.lower()
        if "phi-3" not in name and "phi3" not in name:
            return set()
        cached = (CONTROL, USER_DEFINED, UNKNOWN)
        special = {t for t, kind in zip(self.tokens, self.types, strict=True) if kind in cached}
        return (special | {"</s>"}) - {"<unk>", "<s>", "<|endoftext|>"}


_FIX = "the vocabulary is corrupt: download or re-convert the model"


def _per_token_arrays(
    meta: Mapping[str, Any], model: str, where: str
) -> tuple[list[str], list[int], list[float] | None, list[str] | None]:
    """``tokenizer.ggml.{tokens, token_type, scores, merges}``, validated."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError(
            f"{where}: tokenizer.ggml.tokens is missing or empty, or not an array of strings "
            f"({_FIX})."
        )
    if not all(isinstance(t, str) for t in tokens):
        raise TokenizerError(
            f"{where}: tokenizer.ggml.tokens must be an array of strings ({_FIX})."
        )
    n = len(tokens)
    types = _numbers(meta.get("tokenizer.ggml.token_type"), n, "token_type", where, np.integer)
    types = [NORMAL] * n if types is None else types.tolist()
    scores = _numbers(meta.get("tokenizer.ggml.scores"), n, "scores", where, np.number)
    if scores is not None:
        if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
            raise TokenizerError(f"{where}: tokenizer.ggml.scores contains NaN ({_FIX}).")
        scores = scores.astype(np.float64).tolist()
    merges = meta.get("tokenizer.ggml.merges")
    if model == "gpt2" and not isinstance(merges, list):
        raise TokenizerError(
            f"{where}: a gpt2 tokenizer needs tokenizer.ggml.merges, an array of strings ({_FIX})."
        )
    if model == "gpt2":
        bad = next((m for m in merges if not isinstance(m, str) or " " not in m), None)
        if bad is not None:
            raise TokenizerError(
                f"{where}: tokenizer.ggml.merges has the entry {bad!r}; each must be two "
                f"tokens separated by a space ({_FIX})."
            )
    return tokens, types, scores, merges


def _numbers(value: Any, n: int, key: str, where: str, kind: type) -> np.ndarray | None:
    """``tokenizer.ggml.<key>``: None if absent, else a numeric array of one entry per token."""
    if value is None:
        return None
    given = value
    if isinstance(value, list):  # a GGUF array of strings or arrays; numbers arrive as numpy
        try:
            value = np.asarray(value)
        except ValueError:  # ragged nesting
            value = None
    if not isinstance(value, np.ndarray) or value.ndim != 1 or not np.issubdtype(value.dtype, kind):
        raise TokenizerError(
            f"{where}: tokenizer.ggml.{key} = {short_repr(given)} must be an array of "
            f"{'integers' if kind is np.integer else 'numbers'}, one per token ({_FIX})."
        )
    if len(value) != n:
        raise TokenizerError(
            f"{where}: tokenizer.ggml.{key} has {len(value)} entries for {n} tokens ({_FIX})."
        )
    return value


def token_ids(tokens: list[str]) -> dict[str, int]:
    """Token -> id, the first id of a token spelled twice (the later entries overwrite)."""
    return dict(zip(reversed(tokens), range(len(tokens) - 1, -1, -1), strict=True))


def spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Merges for SentencePiece-style BPE: every split of a token into two tokens,
    ranked by the merged token's score (highest first), ties by the parts' ids."""
    ranked = []
    for piece, pid in vocab.items():
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            lid, rid = vocab.get(left), vocab.get(right)
            if lid is not None and rid is not None:
                ranked.append((-scores[pid], lid, rid, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


@dataclass(frozen=True)
class BPEPieces:
    """What a vocabulary's ``tokenizers`` BPE is built from, derived from the per-token
    arrays: the part of the build a prepared vocabulary keeps (:mod:`.vocab_cache`)."""

    tokens: list[str]
    merges: list[tuple[str, str]]
    added: list[tuple[str, bool, bool]]  # text, special, rstrip: in token order


def pieces(vocab: GGUFVocab) -> BPEPieces:
    """The BPE pieces of ``vocab`` (from :meth:`GGUFVocab.from_metadata` without ``tokens``)."""
    if vocab.model == "llama":
        scores = vocab.scores or [-float(i) for i in range(len(vocab.tokens))]
        merges = spm_merges(token_ids(vocab.tokens), scores)
    else:
        merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    rstrip = vocab.rstrip_tokens()
    kinds = [
        CONTROL if tok in EOG_SPELLINGS else kind
        for tok, kind in zip(vocab.tokens, vocab.types, strict=True)
    ]
    added = [
        (tok, kind != USER_DEFINED, tok in rstrip)
        for tok, kind in zip(vocab.tokens, kinds, strict=True)
        if kind in (CONTROL, USER_DEFINED, UNKNOWN) and tok
    ]
    return BPEPieces(vocab.tokens, merges, added)


def build(vocab: GGUFVocab, built: BPEPieces | None = None) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` equivalent of llama.cpp's tokenizer for ``vocab``, from
    ``built`` (its :func:`pieces`, computed if not given)."""
    built = built or pieces(vocab)
    ids = token_ids(built.tokens)
    if vocab.model == "llama":
        unk = vocab.special_ids.get("unknown")
        tk = _bpe(
            vocab,
            vocab=ids,
            merges=built.merges,
            unk_token=built.tokens[unk] if unk is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
        escape = [normalizers.Replace(" ", "▁")]
        if vocab.add_space_prefix:
            escape.insert(0, normalizers.Prepend("▁"))
        tk.normalizer = normalizers.Sequence(escape)
        unescape = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if vocab.add_space_prefix:
            unescape.append(decoders.Strip(" ", 1, 0))
        tk.decoder = decoders.Sequence(unescape)
    else:
        regexes, ignore_merges = PRE_TOKENIZERS[vocab.pre or "default"]
        tk = _bpe(vocab, vocab=ids, merges=built.merges, ignore_merges=ignore_merges)
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tk.decoder = decoders.ByteLevel()
    tk.add_tokens(
        [
            AddedToken(tok, special=special, normalized=False, rstrip=rstrip)
            for tok, special, rstrip in built.added
        ]
    )
    return tk


def _bpe(source: GGUFVocab, **kwargs: Any) -> Tokenizer:
    """``Tokenizer(models.BPE(**kwargs))``; its bare Exception (e.g. a merge of tokens
    missing from the vocabulary) becomes a TokenizerError naming the file."""
    try:
        return Tokenizer(models.BPE(**kwargs))
    except Exception as e:
        raise TokenizerError(
            f"{source.where}: cannot build the {source.model} tokenizer from tokenizer.ggml.* ({e}); "
            f"{_FIX}."
        ) from None
