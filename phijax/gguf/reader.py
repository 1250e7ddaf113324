"""A GGUF reader that trusts nothing in the file.

The file is memory-mapped; the header (metadata and tensor infos) is parsed
eagerly with every count and length checked against the bytes that remain, so
a lying header can neither make us read past the end nor allocate more than
the file's own size. Tensor data stays on disk until asked for. Metadata values whose
byte spans an earlier parse of this very file recorded (:mod:`phijax.gguf.metadata`, e.g.
a vocabulary's 10^5 strings kept by :mod:`phijax.tokenizer.vocab_cache`) can be skipped:
they are parsed, with the same checks, when first read.

Why not ``gguf.GGUFReader``: it builds several numpy views per array element
(9 s and ~1M objects for Gemma-3's 262k-token vocabulary, measured), does not
bound counts before looping on them, and reports malformed input as raw
IndexError/ValueError. We use the ``gguf`` package for what it defines well:
the value and quantization type tables and block sizes (``gguf.constants``).
Layout facts: the GGUF spec in ggml's docs and ``gguf/constants.py``.
"""

from __future__ import annotations

import difflib
import math
import mmap
import os
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from phijax.errors import GGUFFormatError, HubError, UnsupportedError
from phijax.gguf.dequant import dequantize
from phijax.gguf.metadata import DeferredValue, Metadata, ValueSpans
from phijax.paths import file_identity

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 4
HEADER_BYTES = 24  # magic, version, tensor count, kv count
# Smallest possible encodings, used to bound counts before looping on them.
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, 1-byte value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_LEGACY_MAGICS = (b"lmgg", b"fmgg", b"tjgg", b"algg", b"ggml", b"ggmf", b"ggjt", b"ggla")

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file and how it is encoded.

    ``shape`` is in numpy (row-major) layout: the last axis is ggml's ``ne[0]``,
    the axis quantization blocks run along. ``offset`` is absolute in the file.
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def type_name(self) -> str:
        return self.ggml_type.name


class _Cursor:
    """Sequential, bounds-checked reads over the mapped file."""

    def __init__(self, buf: mmap.mmap, size: int, path: Path):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def fail(self, what: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: {what} (at byte {self.pos} of {self.size}).")

    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> int:
        if n > self.remaining():
            raise GGUFFormatError(
                f"{self.path}: truncated while reading {what}: needs {n} bytes at offset "
                f"{self.pos} but the file ends at {self.size}. Download the file again."
            )
        start = self.pos
        self.pos += n
        return start

    def scalar(self, fmt: str, what: str) -> Any:
        start = self.need(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", f"the length of {what}")
        start = self.need(n, what)
        try:
            return self.buf[start : start + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({e.reason})") from None

    def strings(self, count: int, what: str) -> list[str]:
        """``count`` strings in a row (a vocabulary: 10^5 of them), checked as :meth:`string`
        checks one, in one loop over local names (3x faster than ``count`` calls of it). The
        loop checks no bounds: a length field past the end raises ``struct.error`` (or, past
        2^63, ``OverflowError``), as every later one does; a string past the end is cut short
        and leaves ``pos`` past it."""
        buf, pos = self.buf, self.pos
        length = struct.Struct("<Q").unpack_from
        out: list = []
        append = out.append
        try:
            for _ in range(count):
                (n,) = length(buf, pos)
                start = pos + 8
                pos = start + n
                append(buf[start:pos])
        except (struct.error, OverflowError):
            pos = self.size + 1
        if pos > self.size:  # one ran past the end: the checked reads raise its error
            for _ in range(count):
                self.string(what)
        self.pos = pos
        try:
            return [raw.decode("utf-8") for raw in out]
        except UnicodeDecodeError as e:
            i = next(i for i, raw in enumerate(out) if not _is_utf8(raw))
            raise self.fail(f"{what} (number {i}) is not valid UTF-8 ({e.reason})") from None

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        start = self.need(count * dtype.itemsize, what)
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=start).copy()


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class GGUFFile:
    """A parsed, validated GGUF file.

    ``metadata`` (:class:`Metadata`) maps keys to Python values (numeric arrays as numpy
    arrays, string arrays as lists); ``tensors`` maps names to :class:`TensorInfo` in
    file order. Construction raises :class:`~phijax.errors.GGUFFormatError` for
    anything malformed and :class:`~phijax.errors.UnsupportedError` for valid
    files of a kind we do not read.

    ``identity`` is the file's (size, modification time in ns, inode) as opened, at
    ``opened_ns`` (wall clock). ``deferred``: array values to skip now and parse when read,
    where their spans came from this very file (its identity unchanged) and each starts
    where the parse finds its key's value; other spans are ignored, and a parse that fails
    with them is done again without.
    """

    def __init__(self, path: str | os.PathLike, deferred: ValueSpans | None = None):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                self.opened_ns = time.time_ns()
                self.size = st.st_size
                self.identity = file_identity(st)
                if self.size < HEADER_BYTES:
                    raise GGUFFormatError(
                        f"{self.path}: file is {self.size} bytes, shorter than a GGUF header "
                        f"({HEADER_BYTES}). It is empty or truncated: download it again."
                    )
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise HubError(f"{self.path}: no such file.") from None
        except IsADirectoryError:
            raise HubError(f"{self.path} is a directory, not a GGUF file.") from None
        except OSError as e:
            raise HubError(f"{self.path}: cannot read: {e.strerror or e}.") from None
        skip = deferred.spans if deferred is not None and deferred.identity == self.identity else {}
        try:
            self._parse(skip)
        except (GGUFFormatError, UnsupportedError):
            if not skip:
                raise
            self._parse({})  # a wrong span costs a second parse, never a wrong error

    def _parse(self, skip: Mapping[str, tuple[int, int]]) -> None:
        cur = _Cursor(self._mmap, self.size, self.path)
        self.version = self._read_preamble(cur)
        n_tensors = cur.scalar("<Q", "the tensor count")
        n_kv = cur.scalar("<Q", "the metadata count")
        if n_kv * _MIN_KV_BYTES > cur.remaining():
            raise cur.fail(f"header claims {n_kv} metadata entries, more than the file can hold")
        if n_tensors * _MIN_TENSOR_INFO_BYTES > cur.remaining():
            raise cur.fail(f"header claims {n_tensors} tensors, more than the file can hold")
        self.metadata = Metadata(self._read_deferred)
        self.metadata_types: dict[str, GGUFValueType] = {}
        self._spans: dict[str, tuple[int, int]] = {}
        values = self.metadata._values
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}")
            if not key:
                raise cur.fail(f"metadata key #{i} is empty")
            if key in values:
                raise cur.fail(f"metadata key {key!r} appears twice")
            vtype = self._value_type(cur, f"metadata {key!r}")
            start, end = skip.get(key, (-1, -1))
            if vtype == GGUFValueType.ARRAY and start == cur.pos and start + 12 <= end <= self.size:
                values[key] = DeferredValue(start, end)
                cur.pos = end
            else:
                start = cur.pos
                values[key] = self._read_value(cur, vtype, key, depth=0)
            self._spans[key] = (start, cur.pos)
            self.metadata_types[key] = vtype
        self.alignment = self._alignment()
        self.tensors = self._read_tensor_infos(cur, n_tensors)

    # -- header -------------------------------------------------------------

    def _read_preamble(self, cur: _Cursor) -> int:
        magic = self._mmap[0:4]
        if magic != GGUF_MAGIC:
            if magic in _LEGACY_MAGICS:
                raise UnsupportedError(
                    f"{self.path} is a legacy GGML/GGJT model file (magic {magic!r}), not GGUF. "
                    "Convert it to GGUF with llama.cpp's conversion scripts."
                )
            raise GGUFFormatError(
                f"{self.path} is not a GGUF file: it starts with {magic!r}, expected {GGUF_MAGIC!r}."
            )
        cur.pos = 4
        version = cur.scalar("<I", "the version")
        if version not in SUPPORTED_VERSIONS:
            if version and version & 0xFFFF == 0:
                raise UnsupportedError(
                    f"{self.path} is a big-endian GGUF file; phijax reads little-endian GGUF only."
                )
            if version == 1:
                raise UnsupportedError(
                    f"{self.path} is GGUF version 1, which is obsolete. Re-convert the model "
                    "with a current llama.cpp (GGUF v3)."
                )
            raise UnsupportedError(
                f"{self.path}: GGUF version {version} is not supported "
                f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})."
            )
        return version

    @staticmethod
    def _value_type(cur: _Cursor, what: str) -> GGUFValueType:
        raw = cur.scalar("<I", f"the value type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise cur.fail(f"{what} has unknown value type {raw}") from None

    def _read_value(self, cur: _Cursor, vtype: GGUFValueType, key: str, depth: int) -> Any:
        if vtype == GGUFValueType.STRING:
            return cur.string(f"the value of {key!r}")
        if vtype != GGUFValueType.ARRAY:
            return cur.scalar(_SCALAR_FORMATS[vtype], f"the value of {key!r}")
        if depth >= MAX_ARRAY_NESTING:
            raise cur.fail(f"metadata {key!r} nests arrays deeper than {MAX_ARRAY_NESTING}")
        etype = self._value_type(cur, f"the elements of {key!r}")
        count = cur.scalar("<Q", f"the length of {key!r}")
        min_elem = (
            8
            if etype == GGUFValueType.STRING
            else 12
            if etype == GGUFValueType.ARRAY
            else struct.calcsize(_SCALAR_FORMATS[etype])
        )
        if count * min_elem > cur.remaining():
            raise cur.fail(f"metadata {key!r} claims {count} elements, more than the file holds")
        if etype == GGUFValueType.STRING:
            what = f"an element of {key!r}"
            return cur.strings(count, what)
        if etype == GGUFValueType.ARRAY:
            return [self._read_value(cur, etype, f"{key}[{i}]", depth + 1) for i in range(count)]
        dtype = np.dtype(_SCALAR_FORMATS[etype].replace("?", "u1"))
        values = cur.array(dtype, count, f"the values of {key!r}")
        return values.astype(bool) if etype == GGUFValueType.BOOL else values

    def _read_deferred(self, key: str, span: DeferredValue) -> Any:
        cur = _Cursor(self._mmap, self.size, self.path)
        cur.pos = span.start
        value = self._read_value(cur, GGUFValueType.ARRAY, key, depth=0)
        if cur.pos != span.end:
            raise GGUFFormatError(
                f"{self.path}: metadata {key!r} ends at byte {cur.pos}, not at {span.end} as "
                "when its span was recorded: the file changed in place, keeping its size, time "
                "and inode. Open it again without recorded spans (PHIJAX_NO_CACHE=1)."
            )
        return value

    def array_length(self, key: str) -> int | None:
        """How many elements array ``key`` has (``None``: absent or not an array), without
        parsing a deferred value (its count follows its element type)."""
        value = self.metadata._values.get(key)
        if isinstance(value, DeferredValue):
            return struct.unpack_from("<Q", self._mmap, value.start + 4)[0]
        return len(value) if isinstance(value, (list, np.ndarray)) else None

    def value_spans(self, keys: Iterable[str]) -> ValueSpans:
        """Where ``keys``' values (those present) lie in this version of the file, for a later
        ``GGUFFile(path, deferred=...)`` of it."""
        return ValueSpans(self.identity, {k: self._spans[k] for k in keys if k in self._spans})

    def _alignment(self) -> int:
        value = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 24
        if not ok or value & (value - 1):
            raise GGUFFormatError(
                f"{self.path}: general.alignment = {value!r} must be a power of two "
                "between 1 and 2**24."
            )
        return value

    def _read_tensor_infos(self, cur: _Cursor, n_tensors: int) -> dict[str, TensorInfo]:
        infos: list[tuple[str, GGMLQuantizationType, tuple[int, ...], int, int]] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = cur.string(f"the name of tensor #{i}")
            if not name or name in seen:
                raise cur.fail(f"tensor #{i} has an empty or duplicate name {name!r}")
            seen.add(name)
            n_dims = cur.scalar("<I", f"the rank of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise cur.fail(f"tensor {name!r} has rank {n_dims}; GGUF allows 1 to {MAX_DIMS}")
            dims = tuple(cur.scalar("<Q", f"the dims of tensor {name!r}") for _ in range(n_dims))
            raw_type = cur.scalar("<I", f"the type of tensor {name!r}")
            offset = cur.scalar("<Q", f"the data offset of tensor {name!r}")
            qtype = self._tensor_type(cur, name, raw_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_elements = math.prod(dims)
            if min(dims) < 1 or n_elements >= 1 << 62:
                raise cur.fail(f"tensor {name!r} has invalid dims {list(dims)}")
            if dims[0] % block:
                raise cur.fail(
                    f"tensor {name!r}: row length {dims[0]} is not a multiple of the "
                    f"{qtype.name} block size {block}"
                )
            if offset % self.alignment:
                raise cur.fail(
                    f"tensor {name!r}: data offset {offset} is not a multiple of the "
                    f"alignment {self.alignment}"
                )
            nbytes = n_elements // block * type_size
            infos.append((name, qtype, tuple(reversed(dims)), offset, nbytes))
        data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.data_offset = data_offset
        tensors: dict[str, TensorInfo] = {}
        end_prev, name_prev = 0, None
        for name, qtype, shape, offset, nbytes in sorted(infos, key=lambda t: t[3]):
            start = data_offset + offset
            if start + nbytes > self.size:
                present = max(0, self.size - data_offset)
                raise GGUFFormatError(
                    f"{self.path}: tensor {name!r} ({qtype.name}, shape {list(shape)}) needs bytes "
                    f"[{start}, {start + nbytes}) but the file ends at {self.size}: the file is "
                    f"truncated ({present} bytes of tensor data present). Download it again."
                )
            if offset < end_prev:
                raise GGUFFormatError(
                    f"{self.path}: tensors {name_prev!r} and {name!r} overlap in the data section."
                )
            end_prev, name_prev = offset + nbytes, name
            tensors[name] = TensorInfo(name, qtype, shape, start, nbytes)
        return {name: tensors[name] for name, *_ in infos}

    def _tensor_type(self, cur: _Cursor, name: str, raw: int) -> GGMLQuantizationType:
        try:
            qtype = GGMLQuantizationType(raw)
        except ValueError:
            qtype = None
        if qtype is None or qtype not in GGML_QUANT_SIZES:
            raise UnsupportedError(
                f"{self.path}: tensor {name!r} has ggml type {raw}, unknown to this version of "
                "the gguf package. Upgrade gguf (pip install -U gguf) or use another quantization."
            )
        return qtype

    # -- access -------------------------------------------------------------

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def tensor(self, name: str) -> TensorInfo:
        """The info of tensor ``name``; a clear error (with near names) if absent."""
        try:
            return self.tensors[name]
        except KeyError:
            near = difflib.get_close_matches(name, self.tensors, n=3)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise GGUFFormatError(f"{self.path}: no tensor named {name!r}.{hint}") from None

    def raw(self, name: str) -> np.ndarray:
        """The tensor's encoded bytes, a read-only ``uint8 [nbytes]`` view of the mapped file."""
        info = self.tensor(name)
        return np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def dequantize(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        """Tensor ``name`` decoded to ``dtype`` (f32 default) in numpy layout, via the JAX kernels."""
        info = self.tensor(name)
        return np.asarray(
            dequantize(
                self.raw(name), info.ggml_type, info.shape, dtype, name=name, where=self.path
            )
        )

    def __repr__(self) -> str:
        return (
            f"GGUFFile({str(self.path)!r}, v{self.version}, arch={self.architecture!r}, "
            f"{len(self.metadata)} keys, {len(self.tensors)} tensors)"
        )
