"""Python's cyclic garbage collector, paused around work that allocates many objects.

A load (a vocabulary's 10^5 strings and merges) and a research call's first run (tracing
and lowering a program) each allocate enough objects to set off full collections, every
one a walk over all of JAX's and Flax's live objects: 65 ms of SmolLM2's 0.25 s warm load.
What they leave behind is freed by reference counting or collected later, so pausing the
collector for them frees nothing less; the user's setting comes back after.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off inside the block, then as it was (also when the block raises)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
