"""The weight table (phijax.weight_schema) is what the files, the module and the sharding use.

Real files: SmolLM2 (a ``llama`` file: q/k/v and gate/up in parts, tied head) and a
synthetic ``phi3`` file (fused tensors, separate head, LongRoPE factors); between them every
template of the table is used. The module's parameter tree and the sharding plan are
compared with the table row by row.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

import phijax
from phijax import sharding
from phijax.cache import KVCache
from phijax.config import Phi3Config
from phijax.errors import ConfigError
from phijax.gguf import GGUFFile
from phijax.gguf.synthetic import PHI3_MINI, write_phi3
from phijax.model import phi3
from phijax.weight_schema import BY_NAME, WEIGHTS, shape_matches

# The tiny config with every optional weight: a separate head and LongRoPE factors.
LONGROPE = dict(rope_scaling="longrope", original_context_length=64, rope_attn_factor=1.1)


@pytest.fixture(scope="module")
def phi3_longrope(tmp_path_factory, tiny_config) -> tuple[Phi3Config, object]:
    config = tiny_config.replace(**LONGROPE)
    assert not config.tie_word_embeddings
    path = tmp_path_factory.mktemp("schema") / "longrope.gguf"
    write_phi3(path, config)
    return config, path


def _used(f: GGUFFile) -> list[str]:
    """The tensors of ``f`` that the table reads, each time a row reads one; shapes checked."""
    c = Phi3Config.from_gguf(f)
    used = []
    for w in WEIGHTS:
        if not w.present(c, longrope=c.rope_scaling == "longrope"):
            assert not set(w.tensors(0)) & set(f.tensors), w.name
        elif w.kinds:
            used += w.tensors()
        else:
            for layer in range(c.num_layers) if w.per_layer else [None]:
                for source in w.sources(f.tensors, layer):
                    stored = f.tensor(source.tensor).shape
                    assert shape_matches(stored, source.shape(w, c)), source.tensor
                    used.append(source.tensor)
    return used


def test_real_files_hold_exactly_the_tables_tensors(smollm2_gguf, phi3_longrope):
    """Each tensor of either file is read by exactly one row, and every template the table
    writes (each phi3 tensor, each llama part, each kind) is read in one of them."""
    templates = set()
    for path in (smollm2_gguf, phi3_longrope[1]):
        f = GGUFFile(path)
        used = _used(f)
        assert sorted(used) == sorted(f.tensors), path
        templates |= {re.sub(r"^blk\.\d+\.", "blk.{layer}.", name) for name in used}
    expected = {w.gguf.format(layer="{layer}", kind=k) for w in WEIGHTS for k in w.kinds or [""]}
    expected |= {p.tensor for w in WEIGHTS for p in w.parts}
    assert templates == expected


def _flat(params) -> dict[str, jax.ShapeDtypeStruct]:
    leaves = nnx.to_flat_state(nnx.state(params, nnx.Param))
    return {".".join(map(str, path)): var.get_value() for path, var in leaves}


@pytest.mark.parametrize("layout", ["stacked", "layers"])
def test_module_tree_is_the_table(phi3_longrope, layout):
    """Names, shapes and dtypes (bf16 compute: the norms and factors stay f32) of the
    loaded module's parameters are the table's, for both layouts."""
    config, path = phi3_longrope
    model = phijax.load(path, progress=False, layout=layout, dtype="bfloat16", quantized=False)
    expected = {}
    for w in WEIGHTS:
        dtype, shape = w.dtype(np.dtype("bfloat16")), w.shape(config)
        if not w.per_layer:
            expected[w.name] = (shape, dtype)
        elif layout == "stacked":
            expected[w.name] = ((config.num_layers, *shape), dtype)
        else:
            expected |= {f"layers.{i}.{w.name}": (shape, dtype) for i in range(config.num_layers)}
    got = {k: (v.shape, np.dtype(v.dtype)) for k, v in _flat(model.params).items()}
    assert got == expected


def test_a_tied_module_has_no_head(smollm2_model):
    names = {k.rsplit(".", 1)[-1] for k in _flat(smollm2_model.params)}
    assert model_rows(smollm2_model.config) == names


def model_rows(c: Phi3Config) -> set[str]:
    return {w.name for w in WEIGHTS if w.present(c, longrope=c.rope_scaling == "longrope")}


@pytest.mark.parametrize("layout", ["stacked", "layers"])
def test_sharding_covers_every_row(phi3_longrope, layout):
    """The plan has a spec per present row and the cache, each of the row's rank; the rules'
    axis table is the schema's, and every logical axis in it has a rule."""
    config = phi3_longrope[0]
    mesh = AbstractMesh((1, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 2)
    plan = phi3.sharding_plan(config, mesh, layout=layout)
    assert set(plan) == model_rows(config) | {"kv_cache"}
    for w in WEIGHTS:
        stacked = layout == "stacked" and w.per_layer
        assert len(plan[w.name]) == len(w.shape(config)) + stacked, w.name
    assert {w.name: w.axes for w in WEIGHTS} == sharding.WEIGHT_AXES
    assert plan["qkv"][-2] == "model" and plan["o_proj"][-1] == "model"  # 2 kv heads split 2
    logical = {a for w in WEIGHTS for a in w.axes if a} | set(KVCache.AXES)
    assert logical <= {f.name for f in dataclasses.fields(sharding.RULES)}


def test_cache_axes_are_written_once(tiny_config):
    """The cache's shape follows its AXES; sharding uses the same tuple."""
    cache = KVCache.create(tiny_config, 3, 8)
    c = tiny_config
    sizes = {"layers": c.num_layers, "batch": 3, "kv_heads": c.num_kv_heads, "seq": 8}
    sizes["head_dim"] = c.head_dim
    assert cache.k.shape == tuple(sizes[a] for a in KVCache.AXES)
    assert (cache.batch, cache.max_seq) == (3, 8)
    assert sharding.CACHE_AXES is KVCache.AXES


class _Retyped:
    """A GGUFFile whose tensor ``name`` claims ``shape``: for the config's shape check."""

    def __init__(self, f: GGUFFile, name: str, shape: tuple[int, ...]):
        self.path, self.metadata, self.architecture = f.path, f.metadata, f.architecture
        self.tensors = dict(f.tensors)
        self.tensors[name] = dataclasses.replace(f.tensors[name], shape=shape)

    def tensor(self, name):
        return self.tensors[name]


@pytest.mark.parametrize("row", ["o_proj", "gate_up", "attn_norm"])
def test_config_checks_every_layer_zero_tensor_against_the_table(phi3_longrope, row):
    """A layer-0 tensor of the wrong shape is a ConfigError naming it and the keys that size
    it, for each row (the check once listed four tensors by hand)."""
    f = GGUFFile(phi3_longrope[1])
    name = BY_NAME[row].gguf.format(layer=0)
    wrong = (*f.tensors[name].shape[:-1], f.tensors[name].shape[-1] + 1)
    sizes = {"o_proj": "phi3.attention.head_count (4)", "gate_up": "feed_forward_length (96)"}
    sizes["attn_norm"] = "phi3.embedding_length (64)"
    match = rf"{re.escape(repr(name))} has shape .* metadata \(.*{re.escape(sizes[row])}"
    with pytest.raises(ConfigError, match=match):
        Phi3Config.from_gguf(_Retyped(f, name, wrong))


def _doc_rows() -> list[str]:
    """The parameter table docs/architecture.md must hold: one line per row, shapes at
    Phi-3-mini's sizes."""
    lines = []
    for w in WEIGHTS:
        sources = " + ".join(f"`{p.tensor}`" for p in w.parts) or "same"
        kinds = f" ({', '.join(w.kinds)})" if w.kinds else ""
        axes = ", ".join(str(a) for a in w.axes)
        extra = ("per layer" if w.per_layer else "") + ("; f32" if w.f32 else "")
        extra += f"; only {w.when}" if w.when else ""
        lines.append(
            f"| `{w.name}` | {list(w.shape(PHI3_MINI))} | ({axes}) | `{w.gguf}`{kinds} "
            f"| {sources} | {extra.strip('; ')} |"
        )
    return lines


def test_architecture_doc_lists_every_row():
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    missing = [line for line in _doc_rows() if line not in doc.splitlines()]
    assert not missing, "docs/architecture.md lacks these table lines:\n" + "\n".join(_doc_rows())
