"""Phi3Config: the static shape of a Phi-3-family model, read from GGUF metadata.

Two GGUF architectures map onto the Phi-3 module: ``phi3`` (fused qkv and
gate|up tensors) and ``llama`` (separate tensors, rewritten to the phi3 layout
on load; SmolLM2 and other small llama-family models run this way). Keys and
their meaning: ``gguf.constants`` and reference.md §2-3.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phijax.errors import ConfigError, UnsupportedError

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

        Raises UnsupportedError for other architectures and ConfigError naming
        the file and GGUF key for missing or inconsistent values.
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
            if not numeric or (kind is int and value != int(value)):
                raise ConfigError(f"{f.path}: {key} = {value!r} must be a {kind.__name__}.")
            return kind(value)

        embed = f.tensor("token_embd.weight")
        num_heads = get("num_heads")
        hidden = get("hidden_size")
        if num_heads <= 0 or hidden % num_heads:
            raise ConfigError(
                f"{f.path}: {arch}.attention.head_count = {num_heads} must divide "
                f"{arch}.embedding_length = {hidden}."
            )
        head_dim = get("head_dim", hidden // num_heads)
        longrope = "rope_factors_long.weight" in f.tensors
        linear = meta.get(f"{arch}.rope.scaling.type") == "linear"
        original_ctx = get("original_context_length", None)
        context_length = get("context_length")
        attn_factor = get("rope_attn_factor", None, float)
        if longrope and attn_factor is None and original_ctx:
            scale = context_length / original_ctx
            attn_factor = (
                math.sqrt(1 + math.log(scale) / math.log(original_ctx)) if scale > 1 else 1.0
            )
        try:
            return cls(
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
                rope_attn_factor=attn_factor or 1.0,
                tie_word_embeddings="output.weight" not in f.tensors,
            )
        except ConfigError as e:
            field = str(e).split(" ", 1)[0]
            key = f" (GGUF key {arch}.{_GGUF_KEYS[field]})" if field in _GGUF_KEYS else ""
            raise ConfigError(f"{f.path}: {e}{key}") from None


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
