"""Phi3Config: the static shape of a Phi-3-family model, read from GGUF metadata.

Two GGUF architectures map onto the Phi-3 module: ``phi3`` (fused qkv and
gate|up tensors) and ``llama`` (separate tensors, rewritten to the phi3 layout
on load; SmolLM2 and other small llama-family models run this way). Keys and
their meaning: ``gguf.constants`` and docs/formats.md.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phijax.errors import ConfigError, UnsupportedError, short_repr
from phijax.weight_schema import BY_NAME, LAYER_WEIGHTS, shape_matches

if TYPE_CHECKING:
    from phijax.gguf import GGUFFile

SUPPORTED_ARCHITECTURES = ("phi3", "llama")
ROPE_SCALINGS = (None, "linear", "longrope")

# Phi3Config field -> GGUF key suffix (after "<arch>."), for reading and for error messages.
_GGUF_KEYS = {
    "context_length": "context_length",
    "hidden_size": "embedding_length",
    "intermediate_size": "feed_forward_length",
    "num_layers": "block_count",
    "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv",
    "head_dim": "attention.key_length",
    "rms_norm_eps": "attention.layer_norm_rms_epsilon",
    "rotary_dim": "rope.dimension_count",
    "rope_theta": "rope.freq_base",
    "sliding_window": "attention.sliding_window",
    "rope_scaling_factor": "rope.scaling.factor",
    "original_context_length": "rope.scaling.original_context_length",
    "rope_attn_factor": "rope.scaling.attn_factor",
}


@dataclass(frozen=True)
class Phi3Config:
    """Hyper-parameters of a Phi-3-family decoder. Frozen and hashable (a static jit argument).

    ``architecture`` is the GGUF layout the weights come from (``phi3`` or
    ``llama``); the math is Phi-3's either way. ``rotary_dim < head_dim`` means
    partial rotary. ``rope_scaling`` is ``None``, ``"linear"`` (positions
    divided by ``rope_scaling_factor``) or ``"longrope"`` (per-frequency
    factors stored as tensors, ``rope_attn_factor`` scaling cos and sin).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rotary_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    context_length: int = 4096
    sliding_window: int | None = None
    rope_scaling: str | None = None
    rope_scaling_factor: float = 1.0
    original_context_length: int | None = None
    rope_attn_factor: float = 1.0
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise _unsupported_architecture(self.architecture)
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "rotary_dim",
            "context_length",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} = {value!r} must be a positive integer.")
        for name in ("rope_theta", "rms_norm_eps", "rope_scaling_factor", "rope_attn_factor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} = {value!r} must be a positive finite number.")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_kv_heads = {self.num_kv_heads} must divide num_heads = {self.num_heads} "
                "(grouped-query attention shares each kv head among a whole number of q heads)."
            )
        if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
            raise ConfigError(
                f"rotary_dim = {self.rotary_dim} must be even and at most head_dim = {self.head_dim}."
            )
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or self.sliding_window <= 0
        ):
            raise ConfigError(
                f"sliding_window = {self.sliding_window!r} must be a positive integer or None."
            )
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ConfigError(
                f"rope_scaling = {self.rope_scaling!r} is not supported; use one of {ROPE_SCALINGS}."
            )
        if self.original_context_length is not None and (
            not isinstance(self.original_context_length, int) or self.original_context_length <= 0
        ):
            raise ConfigError(
                f"original_context_length = {self.original_context_length!r} must be a positive "
                "integer or None."
            )
        if self.rope_scaling == "longrope" and not self.original_context_length:
            raise ConfigError("rope_scaling = 'longrope' needs original_context_length.")

    @property
    def kv_groups(self) -> int:
        """Query heads per kv head."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes: Any) -> Phi3Config:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> Phi3Config:
        """Read the config from a GGUF file's metadata and tensor shapes.

        Raises UnsupportedError for other architectures or rope scalings and
        ConfigError naming the file, GGUF key and value for missing, mistyped or
        inconsistent values. The metadata is also checked against the tensors
        (layer count, embedding shape, vocabulary, LongRoPE factors), so a lying
        header fails here rather than deep inside loading or the model.
        """
        arch = f.architecture
        if arch not in SUPPORTED_ARCHITECTURES:
            raise _unsupported_architecture(arch, f.path)
        meta = f.metadata

        def get(field: str, default: Any = ..., kind: type = int) -> Any:
            key = f"{arch}.{_GGUF_KEYS[field]}"
            value = meta.get(key, default)
            if value is ...:
                raise ConfigError(
                    f"{f.path}: metadata key {key!r} is missing; the file is not a complete "
                    f"{arch} model. Re-convert it with a current llama.cpp."
                )
            if value is None:
                return None
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            # float(): NaN and inf are not integers (int() would raise on them).
            if not numeric or (kind is int and not float(value).is_integer()):
                raise ConfigError(
                    f"{f.path}: {key} = {short_repr(value)} must be a {kind.__name__}. {_FIX}"
                )
            return kind(value)

        embed = f.tensor(_EMBED)
        if len(embed.shape) != 2:
            raise ConfigError(
                f"{f.path}: tensor {_EMBED!r} has shape {list(embed.shape)}; a token "
                "embedding is [vocab, hidden]. The file is corrupt: download or convert it again."
            )
        num_heads = get("num_heads")
        hidden = get("hidden_size")
        if num_heads <= 0 or hidden % num_heads:
            raise ConfigError(
                f"{f.path}: {arch}.attention.head_count = {num_heads} must divide "
                f"{arch}.embedding_length = {hidden}. {_FIX}"
            )
        scaling_key = f"{arch}.rope.scaling.type"
        scaling = meta.get(scaling_key)
        if scaling is not None and not isinstance(scaling, str):
            raise ConfigError(
                f"{f.path}: {scaling_key} = {short_repr(scaling)} must be a string. {_FIX}"
            )
        if scaling not in _GGUF_ROPE_SCALINGS:
            raise UnsupportedError(
                f"{f.path}: {scaling_key} = {scaling!r} is not supported (supported: "
                f"{', '.join(s for s in _GGUF_ROPE_SCALINGS if s)}). Use a model without it."
            )
        factor_names = list(BY_NAME["rope_factors"].tensors())
        longrope = scaling == "longrope" or any(n in f.tensors for n in factor_names)
        linear = scaling == "linear"
        if longrope and linear:
            raise ConfigError(
                f"{f.path}: {scaling_key} = 'linear' but the file has LongRoPE factor tensors "
                f"({', '.join(factor_names)}). {_FIX}"
            )
        head_dim = get("head_dim", hidden // num_heads)
        original_ctx = get("original_context_length", None)
        context_length = get("context_length")
        attn_factor = get("rope_attn_factor", None, float)
        if longrope:
            orig_key = f"{arch}.{_GGUF_KEYS['original_context_length']}"
            if original_ctx is None or original_ctx < 2:
                raise ConfigError(
                    f"{f.path}: a LongRoPE model needs {orig_key} (the context it was trained "
                    f"with, at least 2), got {original_ctx!r}. {_FIX}"
                )
            if attn_factor is None:  # HF's default: sqrt(1 + ln(scale) / ln(original context))
                scale = context_length / original_ctx
                attn_factor = (
                    math.sqrt(1 + math.log(scale) / math.log(original_ctx)) if scale > 1 else 1.0
                )
        try:
            config = cls(
                architecture=arch,
                vocab_size=embed.shape[0],
                hidden_size=hidden,
                intermediate_size=get("intermediate_size"),
                num_layers=get("num_layers"),
                num_heads=num_heads,
                num_kv_heads=get("num_kv_heads", num_heads),
                head_dim=head_dim,
                rotary_dim=get("rotary_dim", head_dim),
                rope_theta=get("rope_theta", 10000.0, float),
                rms_norm_eps=get("rms_norm_eps", 1e-5, float),
                context_length=context_length,
                sliding_window=get("sliding_window", None),
                rope_scaling="longrope" if longrope else "linear" if linear else None,
                rope_scaling_factor=get("rope_scaling_factor", 1.0, float) if linear else 1.0,
                original_context_length=original_ctx,
                rope_attn_factor=1.0 if attn_factor is None else attn_factor,
                tie_word_embeddings=BY_NAME["lm_head"].gguf not in f.tensors,
            )
        except ConfigError as e:
            field = str(e).split(" ", 1)[0]
            key = f" (GGUF key {arch}.{_GGUF_KEYS[field]})" if field in _GGUF_KEYS else ""
            raise ConfigError(f"{f.path}: {e}{key} {_FIX}") from None
        _check_against_tensors(config, f)
        return config


SLIDING_WINDOW_MODES = ("auto", "on", "off")
# Phi-3-mini-4k and Phi-3-medium-4k were trained with a 2047-token window (HF config.json:
# "sliding_window": 2047), but GGUF files converted before llama.cpp PR 8627 (July 2024),
# Microsoft's own Phi-3-mini-4k-instruct-q4.gguf among them, carry no window key.
PHI3_4K_CONTEXT = 4096
PHI3_4K_WINDOW = 2047


def inferred_sliding_window(config: Phi3Config) -> int | None:
    """The window a file's model was trained with but its metadata omits: 2047 for a 4k
    ``phi3`` file without ``phi3.attention.sliding_window``, else None."""
    if (
        config.architecture == "phi3"
        and config.sliding_window is None
        and config.context_length == PHI3_4K_CONTEXT
    ):
        return PHI3_4K_WINDOW
    return None


def resolve_sliding_window(
    config: Phi3Config, mode: str = "auto", path: object = None
) -> tuple[int | None, str]:
    """The attention window to run ``config`` with, and a one-line reason for the load summary.

    ``mode``: ``"auto"`` uses the file's ``<arch>.attention.sliding_window``, or for a 4k
    ``phi3`` file without one the 2047 tokens the model was trained with
    (:func:`inferred_sliding_window`); ``"on"`` does the same but requires a window;
    ``"off"`` attends to the whole context. A window at least as long as the context
    masks nothing, so it resolves to None. Returns ``(window or None, reason)``; raises
    ConfigError for an unknown mode or ``"on"`` without a window.
    """
    where = f"{path}: " if path is not None else ""
    key = f"{config.architecture}.attention.sliding_window"
    if mode not in SLIDING_WINDOW_MODES:
        raise ConfigError(
            f"sliding_window = {mode!r} is not a mode; use one of "
            f"{', '.join(repr(m) for m in SLIDING_WINDOW_MODES)}."
        )
    declared, inferred = config.sliding_window, inferred_sliding_window(config)
    if mode == "off":
        trained = declared or inferred
        note = f"; the model's window is {trained}" if trained else ""
        return None, f"off (sliding_window='off': full causal attention{note})"
    if declared is not None:
        if declared >= config.context_length:
            return None, (
                f"none ({key} = {declared} is not shorter than the {config.context_length}-token "
                "context, so it masks nothing)"
            )
        return declared, f"{declared} (declared by {key})"
    if inferred is not None:
        return inferred, (
            f"{inferred} (inferred: 4k phi3 file without {key}; HF's config for the 4k "
            "Phi-3 models says 2047; sliding_window='off' for full attention)"
        )
    if mode == "on":
        raise ConfigError(
            f"{where}sliding_window='on' but the file has no sliding window: {key} is absent "
            "and none is inferred (only 4k-context phi3 files get 2047). Use 'auto' or 'off'."
        )
    return None, f"none ({key} absent; full causal attention)"


_FIX = "Fix the key (gguf-py's gguf_set_metadata.py) or re-convert the model."
# <arch>.rope.scaling.type values (llama.cpp's names; "" and "none" mean no scaling).
_GGUF_ROPE_SCALINGS = (None, "", "none", "linear", "longrope")
_BLOCK = re.compile(r"blk\.(\d+)\.")
_EMBED = BY_NAME["embed"].gguf  # the embedding tensor, which sizes the vocabulary and width


def _gguf_key(c: Phi3Config, field: str) -> str:
    return f"{c.architecture}.{_GGUF_KEYS[field]} ({getattr(c, field)})"


def _size_keys(c: Phi3Config, fields: tuple[str, ...]) -> str:
    """The metadata keys behind config ``fields``, with their values, for a shape error."""
    keys = [
        f"{c.architecture}.attention.key_length or embedding_length / head_count "
        f"(head_dim {c.head_dim})"
        if name == "head_dim"
        else _gguf_key(c, name)
        for name in fields
    ]
    return ", ".join(keys)


def _check_against_tensors(c: Phi3Config, f: GGUFFile) -> None:
    """ConfigError unless the metadata agrees with the tensors the file holds.

    Catches lying headers cheaply, before anything is sized from them: a layer
    count beyond the file's blocks (which would build billions of layers), an
    embedding width or vocabulary other than ``token_embd``'s, token ids that
    would index past the embedding rows, LongRoPE factors of the wrong length.
    """
    arch = c.architecture
    embed = f.tensor(_EMBED)
    if embed.shape[1] != c.hidden_size:
        raise ConfigError(
            f"{f.path}: {arch}.embedding_length = {c.hidden_size} but tensor {_EMBED!r} "
            f"has shape {list(embed.shape)} (rows of {embed.shape[1]}). {_FIX}"
        )
    layers = {int(m.group(1)) for name in f.tensors if (m := _BLOCK.match(name))}
    if len(layers) != c.num_layers or (layers and max(layers) != c.num_layers - 1):
        found = f"blk.0 to blk.{max(layers)} ({len(layers)} distinct)" if layers else "none"
        raise ConfigError(
            f"{f.path}: {arch}.block_count = {c.num_layers} but the file's layer tensors are "
            f"{found}. {_FIX}"
        )
    for spec in LAYER_WEIGHTS:  # layer 0 only: the loader checks every tensor anyway
        for source in spec.sources(f.tensors, 0):
            info, shape = f.tensors.get(source.tensor), source.shape(spec, c)
            if info is not None and not shape_matches(info.shape, shape):
                raise ConfigError(
                    f"{f.path}: tensor {source.tensor!r} has shape {list(info.shape)} but the "
                    f"metadata ({_size_keys(c, spec.sized_by)}) implies {list(shape)}. {_FIX}"
                )
    heads = _size_keys(c, ("num_heads", "num_kv_heads", "head_dim"))
    if arch == "llama" and c.head_dim % 2:
        raise ConfigError(
            f"{f.path}: head_dim = {c.head_dim} is odd, but llama files store q and k rows "
            f"permuted in pairs ({heads}). {_FIX}"
        )
    declared = f.metadata.get(f"{arch}.vocab_size")
    if declared is not None and declared != c.vocab_size:
        raise ConfigError(
            f"{f.path}: {arch}.vocab_size = {short_repr(declared)} but tensor {_EMBED!r} "
            f"has {c.vocab_size} rows. {_FIX}"
        )
    n_tokens = f.array_length("tokenizer.ggml.tokens")
    if n_tokens is not None and n_tokens > c.vocab_size:
        raise ConfigError(
            f"{f.path}: tokenizer.ggml.tokens has {n_tokens} tokens but tensor "
            f"{_EMBED!r} has only {c.vocab_size} rows, so token ids {c.vocab_size} and "
            "up would index past the embedding. The file is corrupt: download or convert it again."
        )
    if c.rope_scaling == "longrope":
        for name in BY_NAME["rope_factors"].tensors():
            info = f.tensors.get(name)
            if info is None or info.n_elements != c.rotary_dim // 2:
                got = "absent" if info is None else f"shape {list(info.shape)}"
                raise ConfigError(
                    f"{f.path}: a LongRoPE model needs tensor {name!r} with rotary_dim / 2 = "
                    f"{c.rotary_dim // 2} factors ({arch}.rope.dimension_count), got {got}. {_FIX}"
                )


def _unsupported_architecture(arch: object, path: object = None) -> UnsupportedError:
    where = f"{path}: " if path else ""
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if not isinstance(arch, str):
        return UnsupportedError(
            f"{where}no general.architecture in the metadata; supported: {supported}."
        )
    return UnsupportedError(
        f"{where}{arch} is not a Phi-3-family architecture; supported: {supported}."
    )
