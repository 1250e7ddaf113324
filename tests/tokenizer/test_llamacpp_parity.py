"""Token-for-token agreement with llama.cpp on real GGUF vocabularies.

The fixtures hold llama.cpp's tokenization of a corpus (unicode in many
scripts, emoji, whitespace runs, code, numbers, special-token text, long runs)
in three modes; ``tests/fixtures/make_tokenizer_fixtures.py`` made them with
llama-cpp-python, so CI needs no llama.cpp.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from phijax.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent.parent / "fixtures"


def _load(name: str) -> dict:
    return json.loads((FIXTURES / f"tokenizer_llamacpp_{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def case(request):
    path = request.getfixturevalue(f"{request.param}_gguf")
    fixture = _load(request.param)
    assert fixture["meta"]["sha256"] == _sha256(path), "fixture made from another file"
    return Tokenizer.from_gguf(path), fixture


def _sha256(path: Path) -> str:
    from phijax.pypi_models import MODELS

    return next(m.sha256 for m in MODELS.values() if m.filename == path.name)


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("plain", {"add_bos": False, "parse_special": False}),
        ("special", {"add_bos": False, "parse_special": True}),
        # llama.cpp's add_special: BOS exactly where the file's add_bos_token says.
        ("bos", {"add_bos": None, "parse_special": False}),
    ],
)
def test_encode_matches_llamacpp(case, mode, kwargs):
    tok, fixture = case
    assert len(fixture["cases"]) >= 150
    texts = [c["text"] for c in fixture["cases"]]
    got = tok.encode_batch(texts, **kwargs)
    mismatches = [
        (c["text"], c[mode], ids)
        for c, ids in zip(fixture["cases"], got, strict=True)
        if c[mode] != ids
    ]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ; first: {mismatches[0]!r}"


def test_explicit_add_bos_overrides_the_file(case):
    tok, fixture = case
    for c in fixture["cases"][:20]:
        assert tok.encode(c["text"], add_bos=True, parse_special=False) == [tok.bos_id, *c["plain"]]
        assert tok.encode(c["text"], add_bos=False, parse_special=False) == c["plain"]


def test_decode_matches_llamacpp(case):
    tok, fixture = case
    for c in fixture["cases"]:
        expected = base64.b64decode(c["detok_b64"]).decode("utf-8", errors="replace")
        assert tok.decode(c["special"]) == expected, c["text"]


def test_round_trip_where_representable(case):
    """decode(encode(s)) == s unless the vocabulary cannot spell s (<unk>, missing bytes) or s
    holds U+2581, which SentencePiece uses for the space."""
    tok, fixture = case
    unk = tok.token_to_id("<unk>")
    checked = 0
    for c in fixture["cases"]:
        ids = tok.encode(c["text"], add_bos=False, parse_special=False)
        decoded = tok.decode(ids)
        if "\ufffd" in decoded or unk in ids or "\u2581" in c["text"]:
            continue
        assert decoded == c["text"]
        checked += 1
    assert checked >= 0.9 * len(fixture["cases"])
