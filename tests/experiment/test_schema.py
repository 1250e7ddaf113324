"""Config validation: unknown keys with suggestions, bad values naming the key, overrides, sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from phijax.errors import ConfigError
from phijax.experiment.schema import load_config, parse_config
from phijax.sampling import CANDLE_ORDER, Sampler

CONFIGS = Path(__file__).parents[2] / "configs"


def _base(**extra):
    return {"name": "t", "model": {"source": "pypi:smollm2"}, "prompts": ["hi"], **extra}


@pytest.mark.parametrize(
    "name", ["haiku.yaml", "demo.yaml", "compare_temperature_minp.yaml", "frontier.yaml"]
)
def test_shipped_configs_are_valid(name):
    config = load_config(CONFIGS / name)
    assert config.strategy_samplers()
    assert config.prompt_list(CONFIGS)


def test_haiku_reproduces_the_seed():
    config = load_config(CONFIGS / "haiku.yaml")
    [sampler] = config.strategy_samplers().values()
    assert sampler == Sampler.candle(temperature=1.0, repeat_penalty=1.2, repeat_last_n=64)
    assert not sampler.penalize_prompt and sampler.order == CANDLE_ORDER
    assert config.max_new_tokens == 100 and config.seeds == "random" and config.chat
    assert config.prompts[0].text == "Write a haiku about ice hockey"
    assert config.model.source.endswith("Phi-3-mini-4k-instruct-q4.gguf")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_base(sampels=3), r"unknown key 'sampels' \(did you mean 'samples'\?\)"),
        (
            _base(model={"source": "x", "sliding_widow": "on"}),
            r"model.sliding_widow.*did you mean 'sliding_window'",
        ),
        (
            _base(sampler={"temprature": 0.5}),
            r"sampler.temprature is not a sampler field \(did you mean 'temperature'\?\)",
        ),
        (
            _base(strategies={"a": {"top_p": 1.5}}),
            r"strategies.a: Sampler.top_p = 1.5; allowed: 0 < top_p <= 1",
        ),
        (_base(samples=0), r"samples = 0: .*greater than 0"),
        (
            _base(metrics=["distinct_3"]),
            r"unknown metric 'distinct_3' \(did you mean 'distinct_\d'\?\)",
        ),
        (_base(sweep={"temperature": [1]}), r"sweep key 'temperature'"),
        (_base(sweep={"strategies.nope.top_k": [1]}), r"no strategy 'nope'"),
        ({"name": "t", "model": {"source": "x"}}, r"give prompts"),
        (_base(seeds="sometimes"), r"seeds"),
        (
            _base(judge={"sorce": "pypi:smollm2"}),
            r"unknown key 'judge.sorce' \(did you mean 'source'\?\)",
        ),
        (_base(judge={"source": "x", "batch_size": 0}), r"judge.batch_size = 0: .*greater than 0"),
        (
            _base(strategies={"greedy": {}}, baseline="gredy"),
            r"baseline = 'gredy': no such strategy \(did you mean 'greedy'\?\)",
        ),
    ],
)
def test_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_overrides_and_sweeps(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: s\nmodel: {source: pypi:smollm2}\nprompts: [hi]\n"
        "strategies: {a: {top_p: 0.9}, b: {min_p: 0.1}}\n"
        "sweep: {sampler.temperature: [0.5, 1.0], strategies.a.top_k: [5, 10]}\n"
    )
    config = load_config(path, ["sampler.min_p=0.05", "max_new_tokens=7", "model.max_seq_len=256"])
    assert config.max_new_tokens == 7 and config.model.max_seq_len == 256
    samplers = config.strategy_samplers()
    assert len(samplers) == 8
    s = samplers["a[temperature=0.5,top_k=10]"]
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.5, 10, 0.9, 0.05)
    assert samplers["b[temperature=1.0,top_k=5]"].min_p == 0.1  # strategy beats base
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["max_new_tokens"])


def test_config_hash_is_stable_and_sensitive():
    a, b = parse_config(_base()), parse_config(_base())
    assert a.config_hash() == b.config_hash()
    assert parse_config(_base(samples=2)).config_hash() != a.config_hash()


def test_quantized_enters_the_hash_only_when_set():
    """``model.quantized`` (newer than the hash) leaves the hash of a config that does not set
    it as it was (this value was computed by the schema before the key existed), so older
    results folders still resume; setting it makes another experiment."""
    plain = parse_config(_base())
    assert plain.config_hash() == "817f4a5a1ddd2a73bb1f401a7c7fa373b01fd0f2b088872c3242f598154d6a18"
    packed = parse_config(_base(model={"source": "pypi:smollm2", "quantized": True}))
    assert packed.model.quantized and packed.config_hash() != plain.config_hash()
    mapped = parse_config(_base(model={"source": "pypi:smollm2", "map_prepared": True}))
    assert mapped.model.map_prepared and mapped.config_hash() == plain.config_hash()


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="a YAML mapping"):
        load_config(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_report_only_keys_leave_the_hash_alone():
    """Adding a judge or a baseline to a config keeps its results folder usable."""
    a = parse_config(_base())
    b = parse_config(
        _base(judge={"source": "pypi:smollm2"}, baseline="default", metrics=["length"])
    )
    assert a.config_hash() == b.config_hash()
