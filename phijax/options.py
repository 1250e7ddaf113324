"""How to load a model: :class:`LoadOptions`, the one definition of :func:`phijax.load`'s options.

``phijax.load(source, **options)`` validates its keywords here; an experiment config's
``model:`` section is these fields plus ``source`` (:class:`phijax.experiment.schema.ModelSpec`);
the CLI's model flags are generated from them (:func:`add_flags`). A new option is one
field here, with its description, and reaches all three.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from phijax.errors import ConfigError, suggest

DTYPES = ("float32", "bfloat16", "float16")


class LoadOptions(BaseModel):
    """The options of :func:`phijax.load` (``None``: the backend's measured default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description="compute dtype (default: float32 on CPU, bfloat16 on GPU/TPU)",
    )
    quantized: bool | None = Field(
        default=None,
        description="keep quantized matrices packed (integers + block scales, decoded in each "
        "product; the f32 mode's weights bit for bit); default: packed on CPU when phijax's "
        "kernel runs (fastest at batch 1-8, a quarter of f32's memory), else dense",
    )
    max_seq_len: int | None = Field(
        default=None,
        gt=0,
        description="a cap on prompt + new tokens (default: the model's context)",
        json_schema_extra={"metavar": "N"},
    )
    sliding_window: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="auto follows the file (2047 for a 4k Phi-3 file that does not say, as HF "
        "does); on requires a window; off attends to the whole context",
    )
    tokenizer: Any = Field(
        default=None,
        description="a tokenizer.json overriding the file's vocabulary",
        json_schema_extra={"metavar": "TOKENIZER_JSON"},
    )
    layout: Literal["layers", "stacked"] | None = Field(
        default=None,
        description="layers: one array per layer (CPU default from 1B parameters, fastest decode "
        "there); stacked: [layers, ...] arrays under a scan (accelerator default, and on CPU below "
        "1B parameters when the kernel runs: compile time and program memory independent of "
        "depth)",
    )
    mesh: Any = Field(
        default=None,
        description="split over devices: a ('data', 'model') mesh of that shape (from "
        "Python also a jax.sharding.Mesh)",
        json_schema_extra={"metavar": "DATA,MODEL"},
    )

    activations: Literal["f32", "int8"] | None = Field(
        default=None,
        description="int8: round each packed product's input to int8 per block as llama.cpp does "
        "(its numerics, and integer products on CPU); default f32",
    )
    map_prepared: bool | None = Field(
        default=None,
        description="map a packed CPU load's prepared weights (their file's page-cache pages, "
        "copy-on-write; the default) or, if false, read them into fresh memory: Phi-3-mini "
        "loaded in 0.2-0.35 s instead of 0.8-1.2 s and decoded as fast on two VMs, but one "
        "older run decoded 17% slower over a lazily faulted mapping (docs/benchmarks.md)",
    )
    policy: Literal["cpu", "gpu", "tpu"] | None = Field(
        default=None,
        description="whose defaults to apply (default: the platform JAX runs on); e.g. gpu on "
        "a CPU reproduces the accelerator configuration (stacked, bf16 weights and cache, "
        "XLA's products) there",
    )

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_name(cls, value: Any) -> Any:
        """Accept a numpy/JAX dtype (``jnp.bfloat16``) as well as its name."""
        if value is None or isinstance(value, str):
            return value
        try:
            return np.dtype(value).name
        except TypeError:
            return value

    @field_validator("mesh", mode="before")
    @classmethod
    def _mesh_shape(cls, value: Any) -> Any:
        """``"2,1"`` or ``[2, 1]`` → ``(2, 1)``; a Mesh object passes as it is."""
        if isinstance(value, str):
            value = value.replace("x", ",").split(",")
        if isinstance(value, (list, tuple)):
            try:
                shape = tuple(int(v) for v in value)
            except (TypeError, ValueError):
                shape = ()
            if len(shape) != 2 or min(shape) < 1:
                raise ValueError(
                    "give a jax.sharding.Mesh, or two positive sizes DATA,MODEL such as 2,1"
                )
            return shape
        return value

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizer_path(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value


def parse(options: Mapping[str, Any], where: str = "phijax.load") -> LoadOptions:
    """``options`` as :class:`LoadOptions`, or a :class:`ConfigError` naming the key, the
    value and what to give instead (with a "did you mean" for a misspelt key)."""
    unknown = [k for k in options if k not in LoadOptions.model_fields]
    if unknown:
        raise ConfigError(
            f"{where}: unknown option {unknown[0]!r}{suggest(unknown[0], LoadOptions.model_fields)}; "
            "the options are "
            f"{', '.join(LoadOptions.model_fields)}."
        )
    try:
        return LoadOptions(**options)
    except ValidationError as e:
        error = e.errors()[0]
        key = ".".join(map(str, error["loc"]))
        why = error["msg"].removeprefix("Value error, ")
        raise ConfigError(
            f"{where}: {key} = {options.get(key)!r}: {why} "
            f"({LoadOptions.model_fields[key].description})."
        ) from None


def add_flags(parser: argparse.ArgumentParser | Any) -> None:
    """One command-line flag per :class:`LoadOptions` field (``--max-seq-len``, ...)."""
    for name, field in LoadOptions.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _kinds(field.annotation)
        if bool in kind:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        elif kind and isinstance(kind[0], str):
            parser.add_argument(flag, choices=kind, default=field.default, help=field.description)
        else:
            typ = int if int in kind else str
            metavar = (field.json_schema_extra or {}).get("metavar", name.upper())
            parser.add_argument(
                flag, type=typ, default=None, metavar=metavar, help=field.description
            )


def from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`LoadOptions` fields set on the command line (see :func:`add_flags`)."""
    return {name: getattr(args, name) for name in LoadOptions.model_fields}


def _kinds(annotation: Any) -> tuple[Any, ...]:
    """The base types or literal values of a field's annotation, ``None`` left out."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    args = typing.get_args(annotation)
    if not args:
        return (annotation,)
    return tuple(v for a in args if a is not type(None) for v in _kinds(a))
