"""Scoring continuations: lm_eval's context/continuation split and ``Model.loglikelihood``.

The split is checked on Phi-3's own SentencePiece vocabulary (llama.cpp's
``ggml-vocab-phi-3.gguf``), whose dummy prefix made a continuation encoded alone carry a
token that is not there in context; the scorer on SmolLM2 and on a tiny model with the
Phi-3 vocabulary.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import phijax
from phijax import scoring
from phijax.errors import ConfigError, ContextLengthError
from phijax.experiment import load_config, read_results
from phijax.experiment.runner import judge
from phijax.gguf.synthetic import PHI3_MINI_TINY, write_phi3_mini_q4
from phijax.tokenizer import Tokenizer

from numerics import f32_atol

# (context, continuation, the continuation's tokens in context)
PHI3_CASES = [
    ("The capital of France is", " Paris", ["▁Paris"]),
    ("2 + 3 =", " 5", ["▁", "5"]),
    ("First line.", "\n", ["<0x0A>"]),
    ("The capital of France is ", "Paris", ["▁Paris"]),  # the space moves to the continuation
]


@pytest.fixture(scope="module")
def phi3_tok(phi3_vocab_gguf) -> Tokenizer:
    return Tokenizer.from_gguf(phi3_vocab_gguf)


@pytest.fixture(scope="module")
def phi3_model(tmp_path_factory, phi3_vocab_gguf):
    """Random 2-layer weights under Phi-3-mini's header and vocabulary."""
    path = tmp_path_factory.mktemp("phi3") / "phi3-vocab-2l.gguf"
    write_phi3_mini_q4(path, phi3_vocab_gguf, PHI3_MINI_TINY.replace(num_layers=2))
    return phijax.load(path, progress=False)


# -- the split -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ctx", "cont", "want"), PHI3_CASES)
def test_split_takes_the_continuations_tokens_in_context(phi3_tok, ctx, cont, want):
    c_ids, k_ids = scoring.encode_pair(phi3_tok, ctx, cont)
    stripped = ctx.rstrip()
    moved = ctx[len(stripped) :] + cont
    whole, alone = phi3_tok.encode(stripped + moved), phi3_tok.encode(stripped)
    assert c_ids == alone and k_ids == whole[len(alone) :]
    assert [phi3_tok.id_to_token(t) for t in k_ids] == want
    if ctx == stripped:  # encoded on its own, the continuation gets the dummy prefix's token
        assert phi3_tok.encode(cont, add_bos=False) != k_ids


def test_empty_context_is_the_prefix_token(phi3_tok):
    assert scoring.encode_pair(phi3_tok, "", " Paris") == (
        [phi3_tok.bos_id],
        phi3_tok.encode(" Paris", add_bos=False),
    )
    # a chat rendering that writes BOS itself gets no second one
    assert scoring.encode(phi3_tok, "<s><|user|>\nhi")[:2] == [phi3_tok.bos_id, 32010]


def test_pairs_reject_what_cannot_be_split(phi3_tok):
    with pytest.raises(ConfigError, match="2 contexts but 1 continuations"):
        scoring.as_pairs(phi3_tok, ["a", "b"], ["c"], method="loglikelihood")
    with pytest.raises(ConfigError, match="is text but contexts\\[0\\] is token ids"):
        scoring.as_pairs(phi3_tok, [[1, 450]], [" Paris"], method="loglikelihood")
    with pytest.raises(ConfigError, match="adds no tokens"):
        scoring.as_pairs(phi3_tok, "Paris", "", method="loglikelihood")
    pairs = scoring.as_pairs(phi3_tok, [[], "Hi"], [[3681], [3681]], method="x")
    assert pairs == [([phi3_tok.bos_id], [3681]), (phi3_tok.encode("Hi"), [3681])]
    rows = np.array([[1, 450], [1, 3681]])  # a 2-D id array is a list of rows
    assert scoring.as_pairs(phi3_tok, rows, rows[:, 1:], method="x") == [
        ([1, 450], [450]),
        ([1, 3681], [3681]),
    ]


def test_plan_is_independent_of_input_order():
    lengths = [5, 40, 17, 17, 100, 3, 40, 4]
    keys = [(n, i % 2) for i, n in enumerate(lengths)]
    per_row = lambda width: scoring.BATCH_BYTES // 2  # noqa: E731 - two rows fit
    batches = scoring.batches(lengths, keys, None, per_row)
    assert [(len(rows), b, w) for rows, b, w in batches] == [
        (1, 1, 128), (2, 2, 48), (2, 2, 32), (2, 2, 16), (1, 2, 16)
    ]  # fmt: skip
    perm = [6, 2, 0, 7, 5, 1, 4, 3]
    moved = scoring.batches([lengths[i] for i in perm], [keys[i] for i in perm], None, per_row)
    assert [[perm[r] for r in rows] for rows, _, _ in moved] == [rows for rows, _, _ in batches]
    assert max(len(rows) for rows, _, _ in scoring.batches(lengths, keys, 1, per_row)) == 1


# -- the scorer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ctx", "cont", "want"), PHI3_CASES)
def test_phi3_score_and_loglikelihood_use_the_split(phi3_model, ctx, cont, want):
    c_ids, k_ids = scoring.encode_pair(phi3_model.tokenizer, ctx, cont)
    [lp] = phi3_model.score(ctx, cont)
    [by_ids] = phi3_model.score([c_ids], [k_ids])
    assert len(lp) == len(want)
    np.testing.assert_array_equal(lp, by_ids)  # the same rows: the same computation
    assert phi3_model.loglikelihood(ctx, cont) == phi3_model.loglikelihood([c_ids], [k_ids])


def test_loglikelihood_matches_logits(smollm2_model):
    m = smollm2_model
    ctx, cont = "The capital of France is", " Paris, a city on the Seine."
    c_ids, k_ids = scoring.encode_pair(m.tokenizer, ctx, cont)
    logits = m.logits(c_ids + k_ids).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    rows = np.arange(len(c_ids) - 1, len(c_ids) + len(k_ids) - 1)
    want = logp[rows, k_ids]
    [(total, greedy)] = m.loglikelihood(ctx, cont)
    [lp] = m.score(ctx, cont)
    # another batch shape than logits(): two f32 evaluations apart, per token (log-softmax
    # adds one more rounding of the same size)
    atol = 2 * f32_atol(m.config, float(np.ptp(logits)))
    np.testing.assert_allclose(lp, want, atol=atol)
    assert total == pytest.approx(want.sum(), abs=len(k_ids) * atol)
    assert greedy == bool((logits[rows].argmax(-1) == k_ids).all())
    assert lp[0] > -2  # " Paris" is likely


def _pairs():
    texts = [
        ("Question: What is the capital of France?\nAnswer:", " Paris"),
        ("Question: What is the capital of France?\nAnswer:", " Rome"),
        ("1, 2, 3, 4,", " 5, 6"),
        ("def add(a, b):\n", "    return a + b\n"),
        ("Once upon a time", ", there was a little fox who lived in the woods."),
        ("The sky is", " blue"),
        ("La tour Eiffel est à", " Paris"),
        ("x" * 90, " y"),
        ("In 1969, the Apollo 11 mission", " landed on the Moon."),
        ("The three primary colors are red,", " yellow and blue."),
        ("Water boils at", " 100 degrees Celsius."),
        ("", " Hello"),
    ]
    return [c for c, _ in texts], [k for _, k in texts]


def test_results_do_not_depend_on_order_or_batch_size(smollm2_model):
    m = smollm2_model
    ctxs, conts = _pairs()
    base = m.loglikelihood(ctxs, conts, batch_size=8)
    assert m.loglikelihood(ctxs, conts, batch_size=8) == base  # two runs: identical
    perm = np.random.default_rng(0).permutation(len(ctxs))
    moved = m.loglikelihood([ctxs[i] for i in perm], [conts[i] for i in perm], batch_size=8)
    assert [moved[list(perm).index(i)] for i in range(len(perm))] == base  # same batches
    single = m.loglikelihood(ctxs, conts, batch_size=1)
    for ctx, cont, (a, ga), (b, gb) in zip(ctxs, conts, base, single, strict=True):
        c_ids, k_ids = scoring.encode_pair(m.tokenizer, ctx, cont)
        logits = m.logits(c_ids + k_ids)[len(c_ids) - 1 : -1]
        # rows of 1 and 8 differ by f32 summation order: per token two evaluations apart
        atol = 2 * f32_atol(m.config, float(np.ptp(logits)))
        assert a == pytest.approx(b, abs=len(k_ids) * atol)
        top2 = np.sort(logits, -1)[:, -2:]
        if (top2[:, 1] - top2[:, 0] > 2 * atol).all():  # no near-tie a rounding could flip
            assert ga == gb


def test_empty_and_overlong_contexts(smollm2_model):
    m = smollm2_model
    tok = m.tokenizer
    [(empty, _)] = m.loglikelihood("", " Hello")
    [(by_ids, _)] = m.loglikelihood([[tok.bos_id]], [tok.encode(" Hello", add_bos=False)])
    assert empty == by_ids and np.isfinite(empty)
    ctx = "The quick brown fox jumps over the lazy dog. " * 40  # ~400 tokens
    c_ids, k_ids = scoring.encode_pair(tok, ctx, "The end")
    assert len(c_ids) > 300
    [(cut, _)] = m.loglikelihood(ctx, "The end", max_length=64)  # truncated, not raised
    keep = 64 + 1 - len(k_ids)
    [(kept, _)] = m.loglikelihood([c_ids[-keep:]], [k_ids], max_length=64)
    assert cut == kept
    [lp] = m.score(ctx, "The end", max_length=64)
    assert len(lp) == len(k_ids)
    with pytest.raises(ContextLengthError, match="more than max_length=2"):
        m.loglikelihood("Hi", " there, friend", max_length=2)
    with pytest.raises(ConfigError, match="max_length=0"):
        m.loglikelihood("Hi", " there", max_length=0)


@pytest.mark.parametrize("chat", [False, True])
def test_judge_scores_equal_loglikelihood(tmp_path, phi3_model, chat):
    """A Phi-3-vocabulary judge scores each sample's text as it stands after the prompt."""
    source = str(phi3_model.path)
    config = tmp_path / "judged.yaml"
    config.write_text(
        yaml.safe_dump({
            "name": "judged", "model": {"source": source}, "prompts": ["unused"],
            "strategies": {"greedy": {"temperature": 0}}, "output": str(tmp_path),
            "judge": {"source": source, "chat": chat, "batch_size": 2},
        })
    )  # fmt: skip
    results = tmp_path / "judged" / "samples.jsonl"
    results.parent.mkdir()
    samples = [
        {"prompt": "The capital of France is", "text": " Paris, of course."},
        {"prompt": "2 + 3 =", "text": " 5"},
        {"prompt": "Write two lines.", "text": "\nOne.\nTwo."},
    ]
    results.write_text("".join(json.dumps(r) + "\n" for r in samples))
    assert judge(load_config(config), results, model=phi3_model, progress=False) == 3
    tok = phi3_model.tokenizer
    for r in read_results(results):
        prompt = r["prompt"]
        if chat:
            prompt = tok.apply_chat_template([{"role": "user", "content": prompt}])
        [(total, _)] = phi3_model.loglikelihood(prompt, r["text"])
        [lp] = phi3_model.score(prompt, r["text"])
        assert r["judge_tokens"] == len(lp)
        # batched with another row: the f32 bound per token (tests/numerics.py), 6 decimals
        ids = scoring.encode(tok, prompt + r["text"])
        atol = 2 * f32_atol(phi3_model.config, float(np.ptp(phi3_model.logits(ids)))) + 5e-7
        assert r["judge_logprob"] == pytest.approx(total / len(lp), abs=atol)
    first = read_results(results)[0]  # alone, " Paris" would have cost an extra "▁" token
    assert first["judge_tokens"] == len(tok.encode(first["text"], add_bos=False)) - 1
