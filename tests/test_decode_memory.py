"""The decode step writes its donated KV cache in place: its program holds no second cache.

A cache that flows through a ``lax.cond`` (one branch running the forward pass, one not)
is copied whole by XLA in every step: the decode call then needs twice the cache's memory
(3.2 GB more for Phi-3-mini at batch 32 over 128 positions) and copies it per token.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import phijax
from phijax import steps
from phijax.cache import KVCache

TINY = Path(__file__).parent / "fixtures" / "model" / "gqa.gguf"
ROWS, PROMPT, NEW = 8, 5, 3


def _compiled_decode(monkeypatch):
    """The decode program a generate call compiles (``steps.compile_later``'s executable)."""
    compiled = []
    original = steps.compile_later

    def keep(step, *args, **kwargs):
        compiled.append(original(step, *args, **kwargs))
        return compiled[-1]

    monkeypatch.setattr(steps, "compile_later", keep)
    m = phijax.load(TINY, progress=False)
    prompts = np.arange(3, 3 + ROWS * PROMPT).reshape(ROWS, PROMPT).tolist()
    m.generate(prompts, max_new_tokens=NEW, sampler=phijax.Sampler.greedy())
    assert len(compiled) == 1 and compiled[0] is not None
    cache_len = m.cache_len_for(PROMPT + NEW)
    return m, compiled[0].result(), KVCache.shape_for(m.config, m.decode_batch(ROWS), cache_len)


def test_decode_copies_no_cache(monkeypatch):
    _, program, shape = _compiled_decode(monkeypatch)
    cache_type = rf"\w+\[{','.join(map(str, shape))}\]"
    copies = re.findall(rf"= {cache_type}\S* copy\(", program.as_text())
    assert copies == []


def test_decode_temporaries_are_smaller_than_the_cache(monkeypatch):
    m, program, shape = _compiled_decode(monkeypatch)
    cache_bytes = 2 * int(np.prod(shape)) * m.params.backend.kv_dtype.itemsize
    analysis = program.memory_analysis()
    # the cache is donated: it is the output, aliased, not a temporary
    assert analysis.alias_size_in_bytes >= cache_bytes
    assert analysis.temp_size_in_bytes < cache_bytes
