"""Load options are written once (:class:`phijax.options.LoadOptions`): ``load()``, experiment
configs and the CLI accept the same set, with the same validation."""

from __future__ import annotations

from pathlib import Path

import pytest

import phijax
from phijax import cli, options
from phijax.errors import ConfigError
from phijax.experiment.schema import ExperimentConfig, ModelSpec
from phijax.options import LoadOptions

TINY = Path(__file__).parent / "fixtures" / "model" / "gqa.gguf"
FIELDS = set(LoadOptions.model_fields)


def _flags(command: str) -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {a.dest for a in sub.choices[command]._actions}


def test_config_schema_and_cli_take_load_options():
    """ModelSpec (a config's ``model:``) is the options plus ``source``; every command that
    loads a model has a flag per option (``phijax run`` takes them as ``--set model.KEY=...``)."""
    assert set(ModelSpec.model_fields) - {"source"} == FIELDS
    assert {"layout", "mesh", "quantized", "dtype", "policy"} <= FIELDS
    for command in ("generate", "chat", "bench"):
        assert _flags(command) >= FIELDS, command


def test_flags_parse_to_load_options():
    args = cli.build_parser().parse_args(
        ["generate", "hi", "--no-quantized", "--layout", "stacked", "--mesh", "1,1",
         "--max-seq-len", "64", "--dtype", "bfloat16"]
    )  # fmt: skip
    got = options.parse(options.from_flags(args))
    assert (got.quantized, got.layout, got.mesh, got.max_seq_len, got.dtype) == (
        False, "stacked", (1, 1), 64, "bfloat16"
    )  # fmt: skip


def test_config_reaches_layout_and_mesh():
    config = ExperimentConfig(
        name="x", model={"source": "m.gguf", "layout": "stacked", "mesh": [1, 1]},
        prompts=[{"id": "a", "text": "hi"}],
    )  # fmt: skip
    assert config.model.load_options()["layout"] == "stacked"
    assert config.model.load_options()["mesh"] == (1, 1)


def test_unset_new_options_keep_old_config_hashes():
    """Configs written before ``layout``/``mesh``/``policy`` hash as they did."""
    plain = ExperimentConfig(
        name="x", model={"source": "m.gguf"}, prompts=[{"id": "a", "text": "b"}]
    )
    stacked = plain.model_copy(
        update={"model": plain.model.model_copy(update={"layout": "stacked"})}
    )
    assert plain.config_hash() != stacked.config_hash()
    assert plain.config_hash() == ExperimentConfig(**plain.model_dump()).config_hash()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quantised": True}, "unknown option 'quantised' \\(did you mean 'quantized'\\?\\)"),
        ({"layout": "rows"}, "layout = 'rows'"),
        ({"max_seq_len": 0}, "max_seq_len = 0"),
        ({"mesh": "3"}, "mesh"),
        ({"mesh": (2, 3)}, "needs 6 devices"),
    ],
)
def test_bad_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        phijax.load(TINY, progress=False, **kwargs)


def test_mesh_shape_loads_like_a_mesh():
    m = phijax.load(TINY, progress=False, mesh=(1, 1))
    assert m.mesh is not None and dict(m.mesh.shape) == {"data": 1, "model": 1}
