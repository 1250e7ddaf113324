"""Phi-3's real vocabulary as a tokenizer, and as a ``tokenizer.json`` written from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tokenizers
from tokenizers import processors

from phijax.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def phi3_tokenizer(phi3_vocab_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(phi3_vocab_gguf)


@pytest.fixture(scope="session")
def phi3_tokenizer_json(tmp_path_factory, phi3_tokenizer) -> Path:
    """A ``tokenizer.json`` of Phi-3's vocabulary, serialized by HF ``tokenizers`` from the
    GGUF route, with the Llama-style post-processor that adds ``<s>`` (as Phi-3's own has)."""
    hf = tokenizers.Tokenizer.from_str(phi3_tokenizer.hf.to_str())
    hf.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    path = tmp_path_factory.mktemp("phi3-json") / "tokenizer.json"
    hf.save(str(path))
    return path
