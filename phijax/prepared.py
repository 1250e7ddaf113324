"""Prepared weights: a packed CPU load's parameters kept on disk and mapped by the next load.

A packed load re-lays the file's blocks out for the kernel (:mod:`phijax.gguf.relayout`):
for Phi-3-mini that is most of a 5-10 s load, repeated by every process. The first load of
a file under a policy writes the finished parameters to ``$PHIJAX_CACHE/prepared/<key>/``
(``weights.bin`` plus a JSON ``manifest.json``); later loads map ``weights.bin``
copy-on-write, and XLA:CPU uses the mapping in place: no copy at all, the page cache's own
pages (:attr:`~phijax.backend.Backend.maps_prepared_weights`; Phi-3-mini then loads in a
quarter of the time of a read into fresh memory and decodes as fast,
``docs/benchmarks.md``). The load option ``map_prepared=False`` reads the file into one
fresh buffer instead. A mapped entry must not be truncated in place while a model uses it
(phijax never does: entries are written whole, renamed, and deleted), as llama.cpp's file
must not.

The key is the GGUF file's identity (path, size, modification time, inode), the
:class:`~phijax.backend.Backend`, the load's other parameter choices, and a hash of the
modules whose code decides the parameters' bytes, so a changed file, policy or re-layout
never gives stale weights. A missing, partial or damaged entry is rebuilt (a warning says
why); it never fails a load. Written to a temporary folder and renamed, an entry is whole
or absent. Only files of at least :data:`MIN_BYTES` are kept, and the entries together stay
within :data:`KEEP_BYTES` (the least recently used go first; the newest is kept whatever its
size). ``PHIJAX_NO_CACHE=1`` turns this off with phijax's other caches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import mmap
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from phijax import quant, weight_schema
from phijax.backend import Backend
from phijax.gguf import blocks, dequant, relayout, weights
from phijax.gguf.weights import aligned, byte_bar, read_aligned
from phijax.paths import cache_dir, caches_enabled, entry_name, file_identity, source_hash
from phijax.quant import QuantArray

MIN_BYTES = 32 << 20
"""Files below this load in a fraction of a second without an entry (tests' fixtures);
SmolLM2-135M (93 MB) loads in 0.15 s from its entry against 0.35-0.45 s re-laid out."""
NONE_KEPT = (
    "this load keeps no prepared weights (they are kept for packed loads on one CPU device, "
    f"with caches on, of files from {MIN_BYTES >> 20} MiB)"
)
"""Why a load has no entry to map (its summary's words where ``map_prepared`` was asked for)."""
KEEP_BYTES = 8 << 30
"""Disk for all entries: Phi-3-mini's default and int8 entries (3.2 and 2.4 GB) and small
models' beside them."""
ALIGN = 4096  # each array's offset (XLA:CPU needs 64) and O_DIRECT's unit
STAGE = 16 << 20  # bytes per write
MADV_POPULATE_READ = 22  # Linux 5.14; Python 3.11's mmap module does not name it
_QUANT_STATIC = tuple(f.name for f in dataclasses.fields(QuantArray) if f.metadata.get("static"))
_QUANT_ARRAYS = tuple(f.name for f in dataclasses.fields(QuantArray) if f.name not in _QUANT_STATIC)


@functools.cache
def _code_hash() -> str:
    """A hash of the modules that decide the loaded parameters' bytes (once per process)."""
    return source_hash(
        m.__file__ for m in (quant, weight_schema, blocks, dequant, relayout, weights)
    )


def key_for(path: str | os.PathLike, backend: Backend, choices: dict[str, Any]) -> dict | None:
    """What identifies the prepared weights of ``path`` under ``backend`` and the load's
    other parameter ``choices`` (JSON values), or ``None`` where none are kept: caches off,
    not a packed CPU load on one device, or a file under :data:`MIN_BYTES`."""
    if not (caches_enabled() and backend.keeps_prepared_weights):
        return None
    size, mtime_ns, inode = file_identity(os.stat(path))
    if size < MIN_BYTES:
        return None
    return {
        "file": str(Path(path).resolve()),
        "size": size,
        "mtime_ns": mtime_ns,
        "inode": inode,
        "backend": {k: v for k, v in dataclasses.asdict(backend).items() if k != "why"},
        "interleaves": backend.interleaves,  # decided from the fields by backend.py's code
        "f32_interleaved": sorted(int(t) for t in backend.f32_interleaved),
        "choices": choices,
        "code": _code_hash(),
    }


def _folder(key: dict) -> Path:
    return cache_dir() / "prepared" / entry_name(key)


def _leaves(value: jax.Array | QuantArray) -> dict[str, jax.Array | None]:
    if isinstance(value, QuantArray):
        return {name: getattr(value, name) for name in _QUANT_ARRAYS}
    return {"array": value}


def save(key: dict, module: nnx.Module, progress: bool = True) -> Path | None:
    """Write ``module``'s parameters as the entry for ``key`` (``progress``: a bar);
    returns its folder, or ``None`` (with a warning) when the disk refuses: the load itself
    has succeeded."""
    final = _folder(key)
    root = final.parent
    entries, offset = [], 0
    arrays = []
    for path, variable in nnx.to_flat_state(nnx.state(module)):
        value = variable.get_value()
        leaves = {}
        for name, leaf in _leaves(value).items():
            if leaf is None:
                leaves[name] = None
                continue
            host = np.asarray(leaf)  # XLA:CPU's buffer itself, not a copy
            offset = -(-offset // ALIGN) * ALIGN
            leaves[name] = {"offset": offset, "shape": list(host.shape), "dtype": host.dtype.name}
            arrays.append((offset, host))
            offset += host.nbytes
        entry = {"path": list(path), "leaves": leaves}
        if isinstance(value, QuantArray):
            entry["quant"] = {name: getattr(value, name) for name in _QUANT_STATIC}
        entries.append(entry)
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        _evict(root, room=offset)
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
        with byte_bar("writing prepared weights", offset, progress) as bar:
            _write(tmp / "weights.bin", arrays, offset, bar)
        manifest = {"key": key, "bytes": offset, "params": entries}
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(
            f"phijax: could not keep prepared weights in {root} ({e}); the next load will "
            "re-lay the file out again. Free disk space, or set PHIJAX_NO_CACHE=1.",
            stacklevel=3,
        )
        return None
    return final


def _write(path: Path, arrays: list[tuple[int, np.ndarray]], size: int, bar: tqdm) -> None:
    """``arrays`` at their offsets in a new file of ``size`` bytes, through a page-aligned
    staging buffer with ``O_DIRECT`` where the file system takes it: the page cache is
    bypassed (this VM: 1.6 GB/s against 0.4 GB/s buffered, 3.1 GB in ~2 s instead of 10)."""
    stage = aligned(STAGE, ALIGN)
    direct = getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | direct, 0o644)
    except OSError:  # e.g. tmpfs refuses O_DIRECT
        direct, fd = 0, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        filled = written = 0
        for start, host in arrays:
            data = np.ascontiguousarray(host).reshape(-1).view(np.uint8)
            gap = start - (written + filled)  # to the next page: never past the stage's end
            stage[filled : filled + gap] = 0
            filled += gap
            while data.size:
                n = min(data.size, STAGE - filled)
                stage[filled : filled + n] = data[:n]
                filled, data = filled + n, data[n:]
                if filled == STAGE:
                    written += _flush(fd, stage, STAGE)
                    bar.update(STAGE)
                    filled = 0
        if filled:
            padded = -(-filled // ALIGN) * ALIGN if direct else filled
            stage[filled:padded] = 0
            written += _flush(fd, stage, padded)
            bar.update(filled)
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _flush(fd: int, stage: np.ndarray, n: int) -> int:
    view = memoryview(stage[:n])
    done = 0
    while done < n:
        done += os.write(fd, view[done:])
    return n


def _evict(root: Path, room: int) -> None:
    """Keep the most recently used entries that fit in :data:`KEEP_BYTES` beside ``room``
    more bytes, delete the rest (and partial writes left for an hour: a process killed while
    writing)."""
    entries = sorted(
        (p for p in root.iterdir() if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    kept = room
    for p in entries:
        if p.name.startswith(".partial-"):  # another process's write, unless long abandoned
            if time.time() - p.stat().st_mtime > 3600:
                shutil.rmtree(p, ignore_errors=True)
            continue
        size = _entry_bytes(p)
        if kept + size > KEEP_BYTES:
            shutil.rmtree(p, ignore_errors=True)
        else:
            kept += size


def _entry_bytes(folder: Path) -> int:
    try:
        return (folder / "weights.bin").stat().st_size
    except OSError:
        return 0


def load(key: dict, module: nnx.Module, progress: bool = True, mapped: bool = False) -> Path | None:
    """Fill ``module``'s (abstract) parameters from the entry for ``key`` (``progress``: a
    bar); returns its folder, or ``None`` if there is none or it is unusable (a warning says
    why; the caller then loads the file as usual). ``mapped``: the parameters are a mapping of
    ``weights.bin`` (:func:`map_file`) instead of a copy of it."""
    folder = _folder(key)
    if not (folder / "manifest.json").exists():
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["key"] != key:
            raise ValueError("its key differs from this load's")
        size = (folder / "weights.bin").stat().st_size
        if size != manifest["bytes"]:
            raise ValueError(f"weights.bin has {size} bytes, the manifest says {manifest['bytes']}")
        if mapped:
            stored = map_file(folder / "weights.bin", size)
        else:
            with byte_bar("reading prepared weights", size, progress) as bar:
                stored = read_aligned(folder / "weights.bin", 0, size, bar)
        views = [_views(e, stored) for e in manifest["params"]]
        placed = jax.device_put(views)  # one batched call: 2-6x faster than one per array
        values = [
            (e["path"], QuantArray(**leaves, **e["quant"]) if "quant" in e else leaves["array"])
            for e, leaves in zip(manifest["params"], placed, strict=True)
        ]
        targets = dict(nnx.to_flat_state(nnx.state(module)))
        if sorted(tuple(p) for p, _ in values) != sorted(targets):
            raise ValueError("its parameters are not this model's")
        for path, value in values:
            _check(targets[tuple(path)].get_value(), value, path)
        for path, value in values:
            _variable(module, path).set_value(value)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        warnings.warn(
            f"phijax: prepared weights in {folder} are unusable ({e}); loading the file "
            "instead and writing them again.",
            stacklevel=3,
        )
        shutil.rmtree(folder, ignore_errors=True)
        return None
    with contextlib.suppress(OSError):  # most recently used (a read-only cache stays as it is)
        os.utime(folder)
    return folder


def map_file(path: Path, nbytes: int) -> np.ndarray:
    """The first ``nbytes`` of ``path`` (which has them) as a private copy-on-write mapping of
    the page cache's own pages: nothing is copied or allocated, and a write (XLA writes no
    parameter) would change a private copy, never the file. The pages are mapped at once where
    the kernel can (``MADV_POPULATE_READ``), else at first touch. An entry replaced or evicted
    meanwhile leaves the mapping as it was; it is unmapped when the last array using it goes."""
    with open(path, "rb") as f:
        region = mmap.mmap(
            f.fileno(), nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
        )
    with contextlib.suppress(OSError):  # an older kernel: the pages fault in as they are read
        region.madvise(MADV_POPULATE_READ)
    return np.frombuffer(region, np.uint8)


def _views(entry: dict, stored: np.ndarray) -> dict[str, np.ndarray | None]:
    """One parameter's arrays from its manifest entry, each a view of ``stored`` (the whole
    ``weights.bin``), which XLA:CPU then uses in place."""
    leaves: dict[str, np.ndarray | None] = {}
    for name, spec in entry["leaves"].items():
        if spec is None:
            leaves[name] = None
            continue
        dtype = jnp.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        start, stop = spec["offset"], spec["offset"] + count * dtype.itemsize
        if start < 0 or start % ALIGN or stop > stored.size:
            raise ValueError(f"array {name} of {entry['path']} lies outside weights.bin")
        leaves[name] = stored[start:stop].view(dtype).reshape(spec["shape"])
    return leaves


def _check(expected: jax.ShapeDtypeStruct, value: jax.Array | QuantArray, path: list) -> None:
    """The stored parameter has the abstract one's shape, and its dtype unless packed."""
    name = "/".join(map(str, path))
    if tuple(expected.shape) != tuple(value.shape):
        raise ValueError(f"{name} has shape {value.shape}, expected {expected.shape}")
    if not isinstance(value, QuantArray) and value.dtype != expected.dtype:
        raise ValueError(f"{name} is {value.dtype}, expected {expected.dtype}")


def _variable(module: nnx.Module, path: list) -> nnx.Variable:
    obj = module
    for part in path:
        obj = obj[part] if isinstance(part, int) else getattr(obj, part)
    return obj


def describe(folder: Path, how: str) -> str:
    """The load summary's words for an entry ``how`` ("saved to", "read from", "mapped from")."""
    where = str(folder).replace(str(Path.home()), "~", 1)
    return f"prepared weights {how} {where}"
