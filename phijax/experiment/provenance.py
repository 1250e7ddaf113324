"""Provenance of a results folder: what made these samples, to rerun or audit them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from phijax import kernels
from phijax.backend import Backend
from phijax.experiment.schema import ExperimentConfig
from phijax.paths import cache_dir


def file_sha256(path: Path) -> str:
    """sha256 of a (large) file, cached by path, size and mtime under ``$PHIJAX_CACHE/sha256``."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :32
    ]
    stamp = cache_dir() / "sha256" / key
    if stamp.exists():
        return stamp.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=st.st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}",
                                     disable=None, leave=False) as bar:  # fmt: skip
        while chunk := f.read(1 << 24):
            digest.update(chunk)
            bar.update(len(chunk))
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest.hexdigest())
    return digest.hexdigest()


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_kernel(platform_name: str) -> str | None:
    """Which build of the packed-weight kernel runs (it sums in its own order), on CPU."""
    return kernels.status() if platform_name == "cpu" else None


def backend_record(backend: Backend) -> dict[str, Any]:
    """The backend policy's fields (what the rows' numbers depend on; not its reasons)."""
    record = dataclasses.asdict(backend)
    del record["why"]
    return record


def provenance(model: Any, config: ExperimentConfig, seeds: list[int]) -> dict[str, Any]:
    import jax

    device = jax.local_devices()[0]
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_hash": config.config_hash(),
        "config": json.loads(config.model_dump_json()),
        "seeds": seeds,
        "model": {
            "path": str(model.path),
            "sha256": file_sha256(Path(model.path)),
            "architecture": model.config.architecture,
            "dtype": str(model.dtype.name if hasattr(model.dtype, "name") else model.dtype),
            "sliding_window": model.sliding_window,
            "backend": backend_record(model.backend),
        },
        "versions": {
            name: package_version(name)
            for name in ("phijax", "jax", "jaxlib", "flax", "tokenizers", "gguf", "numpy")
        },
        "device": {
            "platform": device.platform,
            "kind": device.device_kind,
            "count": jax.device_count(),
            "cpu_kernel": cpu_kernel(device.platform),
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
