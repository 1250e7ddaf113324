"""The engine: batching, chunked prefill, compile reuse, generation and its errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import phijax
from phijax import Sampler, batching, driver, kernels, loading, steps
from phijax.errors import ConfigError, ContextLengthError, ResourceError

from numerics import assert_logits_close, f32_atol
from tracing import count_traces

GREEDY = Sampler.greedy()
MODEL_FIXTURES = Path(__file__).parent / "fixtures" / "model"


@pytest.fixture(scope="module")
def sliding():
    """Tiny phi3 with GQA and a sliding window of 8 (a fixture file, made with HF references)."""
    return phijax.load(MODEL_FIXTURES / "sliding_window.gguf", progress=False)


def _prompts(model, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, model.config.vocab_size, n).tolist() for n in lengths]


def test_bucket():
    assert [batching.bucket(n) for n in (1, 16, 17, 100, 256)] == [16, 16, 32, 128, 256]
    assert batching.bucket(3, 1) == 4


def test_big_batches_get_short_caches(smollm2_model):
    """Up to 8 rows a cache has at least 128 positions (generation lengths share a shape);
    from 32 rows, 32: the cache's memory is rows x positions. Above the floor, lengths step
    by powers of two and three quarters of them, and from 16 rows by eighths."""
    assert [driver.min_cache(r) for r in (1, 8, 9, 16, 32, 64)] == [128, 128, 64, 64, 32, 32]
    assert [smollm2_model.cache_len_for(37, rows) for rows in (1, 8, 32)] == [128, 128, 40]
    lengths = {n: driver.cache_len(n, 1) for n in (1, 128, 129, 192, 193, 256, 257, 3000)}
    assert lengths == {1: 128, 128: 128, 129: 192, 192: 192, 193: 256, 256: 256, 257: 384,
                       3000: 3072}  # fmt: skip
    eighths = [driver.cache_len(n, 32) for n in (1, 32, 33, 41, 49, 57, 65)]
    assert eighths == [32, 32, 40, 48, 56, 64, 80]
    assert [driver.cache_len(n, 16) for n in (64, 65, 97)] == [64, 80, 112]
    seen = []
    decode = steps.decode

    def spy(params, state, *args, **kwargs):
        seen.append(state.cache.max_seq)
        return decode(params, state, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(steps, "decode", spy)
        smollm2_model.generate([[7] * 20] * 32, max_new_tokens=17, sampler=Sampler.greedy())
    assert set(seen) == {40}


def test_batch_rows_match_solo_runs(smollm2_model):
    """Another batch shape is another GEMM kernel: rows differ from solo runs by f32
    summation order only (tests/numerics.py), with the same top-1 beyond near-ties."""
    prompts = _prompts(smollm2_model, (5, 23, 61))
    together = smollm2_model.logits(prompts)
    for p, got in zip(prompts, together, strict=True):
        assert_logits_close(got, smollm2_model.logits(p), smollm2_model.config)


def test_batched_greedy_generation_matches_solo(smollm2_model):
    prompts = ["The capital of France is", "def add(a, b):", "1, 2, 3, 4,"]
    together = smollm2_model.generate(prompts, sampler=GREEDY, max_new_tokens=20)
    scale = max(
        float(np.ptp(smollm2_model.logits(smollm2_model.tokenizer.encode(p)))) for p in prompts
    )
    # a logprob is a logit minus a logsumexp: each moves by at most the logits' bound
    atol = 2 * f32_atol(smollm2_model.config, scale)
    for i, p in enumerate(prompts):
        solo = smollm2_model.generate(p, sampler=GREEDY, max_new_tokens=20)
        assert solo.tokens[0] == together.tokens[i]
        assert solo.texts[0] == together.texts[i]
        np.testing.assert_allclose(solo.logprobs[0], together.logprobs[i], atol=atol, rtol=0)


@pytest.mark.parametrize("chunk", [8, 16])
def test_chunked_prefill_matches_one_pass(sliding, chunk):
    """The cached prefill in chunks (generate's path) gives each prompt's last logits as the
    one-pass forward does (m.logits, no cache); only the kernels' summation order differs."""
    prompts = _prompts(sliding, (40, 13))
    whole = sliding.logits(prompts)
    sliding.prefill_chunk = chunk
    try:
        last, _ = sliding._prefill(prompts, sliding.cache_len_for(64))
        gen_chunked = sliding.generate(prompts, sampler=GREEDY, max_new_tokens=10)
    finally:
        sliding.prefill_chunk = driver.PREFILL_CHUNK
    for a, b in zip(whole, last, strict=True):
        assert_logits_close(b, a[-1], sliding.config)
    assert gen_chunked.tokens == sliding.generate(prompts, sampler=GREEDY, max_new_tokens=10).tokens


def test_no_recompilation_after_warm_up(smollm2_model):
    smollm2_model.generate("Tell me a story about a cat.", max_new_tokens=20)
    smollm2_model.logits(smollm2_model.tokenizer.encode("Tell me a story about a cat."))
    with count_traces() as traces:
        # new prompts of the same bucket (<= 16 tokens), new generation lengths
        smollm2_model.generate("Why is the sky blue?", max_new_tokens=7)
        smollm2_model.generate("Name three rivers in Europe.", max_new_tokens=33)
        smollm2_model.logits(smollm2_model.tokenizer.encode("A different prompt here."))
    assert traces == []


def _attended(model, monkeypatch, **generate):
    """``model.generate(**generate)`` and each decode call's (attended slots, cache slots)."""
    seen = []
    decode = steps.decode

    def spy(params, state, *args, **kwargs):
        seen.append((kwargs["attend_len"], state.cache.max_seq))
        return decode(params, state, *args, **kwargs)

    monkeypatch.setattr(steps, "decode", spy)
    out = model.generate(**generate)
    monkeypatch.setattr(steps, "decode", decode)
    return out, seen


def test_decode_attends_to_a_bucket_of_the_filled_cache(monkeypatch):
    """Where XLA computes decode attention (no CPU kernel, as on GPU and TPU), decode reads a
    power-of-two bucket of the filled cache, not the whole cache."""
    monkeypatch.setenv("PHIJAX_CPU_KERNEL", "off")
    model = phijax.load(MODEL_FIXTURES / "sliding_window.gguf", progress=False)
    assert not model.params.backend.reads_cache_in_place
    _, seen = _attended(model, monkeypatch, prompts=[7] * 10, max_new_tokens=200)
    assert seen[0] == (128, 256)  # at most 10 + 16 tokens present: attends to 128 of 256 slots
    assert seen[-1] == (256, 256)
    assert all(attend <= cache for attend, cache in seen)


@pytest.mark.skipif(kernels.chosen() is None, reason="the CPU kernel's attention: needs a build")
def test_decode_on_the_cpu_kernel_attends_over_the_whole_cache(sliding, monkeypatch):
    """On the CPU kernel, whose attention stops after the last filled slot, every decode call
    of a generation attends over the whole cache (one compiled program, not one per bucket),
    with the bucketed calls' tokens and log-probabilities bit for bit. (tests/kernels fails
    where a compiler could have built the kernel and none runs.)"""
    assert sliding.params.backend.reads_cache_in_place
    request = dict(prompts=[[7] * 10, [5] * 3], max_new_tokens=200, top_logprobs=3)
    whole, seen = _attended(sliding, monkeypatch, **request)
    assert {attend for attend, _ in seen} == {256} and {cache for _, cache in seen} == {256}
    monkeypatch.setattr(driver, "attends_whole_cache", lambda params, request: False)
    buckets, seen = _attended(sliding, monkeypatch, **request)
    assert {attend for attend, _ in seen} == {128, 256}
    assert whole.tokens == buckets.tokens
    assert whole.top_logprobs == buckets.top_logprobs


def test_generate_streams_text_and_reports_finish(smollm2_model):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    start = time.perf_counter()
    g = smollm2_model.generate(
        ["<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n", "Once upon a time"],
        sampler=GREEDY,
        max_new_tokens=60,
        stream=lambda row, text: pieces[row].append(text),
    )
    wall = time.perf_counter() - start
    assert ["".join(pieces[i]) for i in (0, 1)] == g.texts
    assert g.finish_reasons[0] == "stop" and g.finish_reasons[1] == "length"
    assert len(g.tokens[1]) == 60 and len(g.logprobs[1]) == 60
    assert all(lp <= 0 for lp in g.logprobs[0] + g.logprobs[1])
    # the rates are the counts over the phases' seconds, which lie within the call: every
    # prompt token prefilled, every new token but each row's first (prefill samples it) decoded
    t = g.timings
    assert min(t["prefill_s"], t["decode_s"]) > 0 and t["prefill_s"] + t["decode_s"] <= wall
    assert round(t["prefill_tok_s"] * t["prefill_s"]) == sum(map(len, g.prompt_tokens))
    assert round(t["decode_tok_s"] * t["decode_s"]) == sum(map(len, g.tokens)) - 2


def test_chat_applies_the_template(smollm2_model):
    g = smollm2_model.generate("Say hi", chat=True, max_new_tokens=3)
    assert g.prompt_tokens[0][:2] == smollm2_model.tokenizer.encode("<|im_start|>system")


def test_prompt_longer_than_the_context_is_a_clear_error(sliding):
    too_long = [5] * (sliding.config.context_length + 1)
    with pytest.raises(ContextLengthError, match=r"257 tokens .* context of 256"):
        sliding.logits(too_long)
    with pytest.raises(ContextLengthError, match="lower max_new_tokens"):
        sliding.generate([5] * 200, max_new_tokens=100)


def test_max_seq_len_caps_requests(tmp_path):
    m = phijax.load(MODEL_FIXTURES / "plain.gguf", progress=False, max_seq_len=32)
    with pytest.raises(ContextLengthError, match="max_seq_len of 32"):
        m.generate([5] * 30, max_new_tokens=5)
    assert len(m.generate([5] * 30, max_new_tokens=2).tokens[0]) <= 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sliding_window": "maybe"}, "sliding_window"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"sliding_window": "on"}, "has no sliding window"),
    ],
)
def test_bad_load_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        phijax.load(MODEL_FIXTURES / "plain.gguf", progress=False, **kwargs)


def test_bad_generate_arguments(sliding):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        sliding.generate([5, 6], max_new_tokens=0)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        sliding.logits([5, sliding.config.vocab_size])
    with pytest.raises(ConfigError, match="at least one prompt"):
        sliding.generate([])


def test_sliding_window_switch_changes_long_range_attention():
    on = phijax.load(MODEL_FIXTURES / "sliding_window.gguf", progress=False)
    off = phijax.load(MODEL_FIXTURES / "sliding_window.gguf", progress=False, sliding_window="off")
    ids = _prompts(on, (30,))[0]
    a, b = on.logits(ids), off.logits(ids)
    assert_logits_close(a[:8], b[:8], on.config)  # within the window: the same attention
    assert np.abs(a[8:] - b[8:]).max() > 1e-2


def test_load_refuses_what_cannot_fit(monkeypatch):
    monkeypatch.setattr(loading, "available_memory", lambda: 10_000)
    with pytest.raises(ResourceError, match=r"plain.gguf: the weights need .* but 0.0 GB are free"):
        phijax.load(MODEL_FIXTURES / "plain.gguf", progress=False)


# -- sampling through the engine ----------------------------------------------------

SAMPLED = Sampler(temperature=0.9, top_p=0.95, repetition_penalty=1.2)


def test_a_samples_tokens_do_not_depend_on_the_batch(sliding):
    """The key rule: sample s of a prompt gets the same tokens alone, in a bigger batch,
    beside other prompts and beside other samplers."""
    a, b = [11, 12, 13, 14], [40, 41]
    alone = sliding.generate(a, sampler=SAMPLED, seed=3, num_samples=2, max_new_tokens=24)
    mixed = sliding.generate(
        [b, a, b],
        sampler=[Sampler(top_k=5), SAMPLED, GREEDY],
        seed=3,
        num_samples=3,
        max_new_tokens=24,
    )
    assert mixed.tokens[3:5] == alone.tokens  # prompt 1, samples 0 and 1
    assert mixed.prompt_tokens[3] == a and len(mixed.tokens) == 9


def test_a_light_sampler_gets_the_same_tokens_beside_a_filter(sliding):
    """Alone, a row that needs only the light stages (temperature, penalties) runs in the
    light chain; beside a filter, in the whole chain: the same tokens either way, and their
    log-probabilities but for the order of a sum. A log-probability is a logit less a
    logsumexp over the vocabulary, which XLA may reduce in another order in the other program
    and batch (1 ulp on an AMD Zen 3; bit for bit on an Intel Xeon): each moves by at most the
    logits' rounding bound."""
    light, a = Sampler(temperature=0.8, repetition_penalty=1.3), [11, 12, 13, 14]
    alone = sliding.generate(a, sampler=light, seed=3, num_samples=2, max_new_tokens=24)
    mixed = sliding.generate(
        [a, [40, 41]], sampler=[light, Sampler(min_p=0.1)], seed=3, num_samples=2,
        max_new_tokens=24,
    )  # fmt: skip
    assert mixed.tokens[:2] == alone.tokens and alone.tokens[0] != alone.tokens[1]
    atol = 2 * f32_atol(sliding.config, float(np.ptp(sliding.logits(a))))
    np.testing.assert_allclose(mixed.logprobs[:2], alone.logprobs, atol=atol, rtol=0)


def test_same_seed_same_tokens_in_another_process(sliding):
    code = (
        "import json, phijax, sys; from phijax import Sampler;"
        f"m = phijax.load({str(MODEL_FIXTURES / 'sliding_window.gguf')!r}, progress=False);"
        "g = m.generate([3, 4, 5], sampler=Sampler(temperature=0.9, top_p=0.95, repetition_penalty=1.2),"
        " seed=11, num_samples=2, max_new_tokens=20); print(json.dumps(g.tokens))"
    )
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    )
    here = sliding.generate([3, 4, 5], sampler=SAMPLED, seed=11, num_samples=2, max_new_tokens=20)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here.tokens


def test_different_seeds_differ(sliding):
    g1 = sliding.generate([3, 4, 5], sampler=SAMPLED, seed=1, max_new_tokens=20)
    g2 = sliding.generate([3, 4, 5], sampler=SAMPLED, seed=2, max_new_tokens=20)
    assert g1.tokens != g2.tokens
    assert g1.seeds == [1]


def test_switching_sampler_values_does_not_recompile(sliding):
    sliding.generate([3, 4, 5], sampler=SAMPLED, max_new_tokens=20)
    with count_traces() as traces:
        sliding.generate(
            [7, 8], sampler=Sampler(top_k=4, min_p=0.1, temperature=0.5), seed=5, max_new_tokens=20
        )
        sliding.generate(
            [7, 8, 9], sampler=Sampler(mirostat_tau=3.0, dry_multiplier=0.5), max_new_tokens=9
        )
    assert traces == []


def test_stop_strings_and_ids(smollm2_model):
    free = smollm2_model.generate("1, 2, 3, 4,", sampler=GREEDY, max_new_tokens=30)
    assert ", 8," in free.texts[0]
    g = smollm2_model.generate("1, 2, 3, 4,", sampler=GREEDY, max_new_tokens=30, stop=[", 8"])
    assert g.finish_reasons == ["stop"] and free.texts[0].startswith(g.texts[0])
    assert g.texts[0].endswith("7") and ", 8" not in g.texts[0]
    seven = smollm2_model.tokenizer.encode(" 7", add_bos=False)[-1]
    h = smollm2_model.generate("1, 2, 3, 4,", sampler=GREEDY, max_new_tokens=30, stop=[seven])
    assert h.finish_reasons == ["stop"] and seven not in h.tokens[0]


def test_stream_iterator_and_callback_agree(smollm2_model):
    pieces = list(
        smollm2_model.stream("Say hi", chat=True, sampler=SAMPLED, seed=4, max_new_tokens=25)
    )
    g = smollm2_model.generate("Say hi", chat=True, sampler=SAMPLED, seed=4, max_new_tokens=25)
    assert "".join(pieces) == g.texts[0]


def test_top_logprobs(smollm2_model):
    g = smollm2_model.generate(
        "The capital of France is", sampler=GREEDY, max_new_tokens=5, top_logprobs=3
    )
    assert len(g.top_logprobs[0]) == len(g.tokens[0])
    for token, lp, top in zip(g.tokens[0], g.logprobs[0], g.top_logprobs[0], strict=True):
        assert top[0][0] == token and abs(top[0][1] - lp) < 1e-5  # greedy: the top alternative
        assert top[0][1] >= top[1][1] >= top[2][1]


def test_score_matches_logits(smollm2_model):
    tok = smollm2_model.tokenizer
    prompt, cont = "The capital of France is", " Paris, a city on the Seine."
    [lp] = smollm2_model.score([prompt], [cont])
    ids, cont_ids = tok.encode(prompt), tok.encode(cont, add_bos=False)
    logits = smollm2_model.logits(ids + cont_ids)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    want = logp[np.arange(len(ids) - 1, len(ids) + len(cont_ids) - 1), cont_ids]
    # logits from one call, log-softmax in JAX vs numpy: a length-vocab reduction apart
    np.testing.assert_allclose(lp, want, atol=2 * f32_atol(smollm2_model.config, np.ptp(logits)))
    assert lp[0] > -2  # " Paris" is likely
    with pytest.raises(ConfigError, match="2 prompts but 1"):
        smollm2_model.score(["a", "b"], ["c"])
