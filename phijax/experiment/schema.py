"""Experiment configs: YAML validated by a typed pydantic schema, CLI overrides, sweeps.

A config names a model, prompts (or a ``task``: items with targets, graded for
accuracy, see ``tasks``), a base ``sampler`` and named ``strategies``
(each a set of :class:`~phijax.Sampler` fields over the base), how many samples
per prompt, seeds, and an optional ``sweep`` over any key. Unknown keys are
rejected with a "did you mean" suggestion; bad values name the key and the
allowed range (the Sampler's own validation). ``--set KEY=VALUE`` overrides any
key with a dotted path (``sampler.temperature=0.7``,
``strategies.greedy.temperature=0``); values are parsed as YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phijax.errors import ConfigError, suggest
from phijax.experiment.tasks import ExtractSpec, TaskSpec, load_task
from phijax.options import LoadOptions
from phijax.sampling import CANDLE_ORDER, LLAMACPP_ORDER, Sampler

SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(Sampler))
METRICS = (
    "accuracy", "length", "distinct_1", "distinct_2", "self_bleu", "repetition", "mean_logprob", "perplexity",
    "judge_logprob", "judge_perplexity",
)  # fmt: skip
REPORT_ONLY = ("judge", "baseline", "metrics")
"""Keys that change the report, not the samples: left out of the config hash."""
PRESETS = {"default": Sampler(), "candle": Sampler.candle(), "greedy": Sampler.greedy()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(LoadOptions):
    """What ``phijax.load`` gets: ``source`` and its options (:class:`phijax.options.LoadOptions`)."""

    source: str

    def load_options(self) -> dict[str, Any]:
        """The :class:`~phijax.options.LoadOptions` fields, as ``phijax.load`` keywords."""
        return {name: getattr(self, name) for name in LoadOptions.model_fields}


class JudgeSpec(ModelSpec):
    """A second model that scores every sample; ``chat``: score the continuation after the
    judge's chat template of the prompt (as a user turn), else after the raw prompt text;
    ``batch_size``: sequences per scoring call."""

    chat: bool = True
    batch_size: int = Field(default=8, gt=0)


class Prompt(_Strict):
    id: str
    text: str


class ExperimentConfig(_Strict):
    """A whole study. ``samples`` continuations per prompt, per strategy, per seed."""

    name: str
    model: ModelSpec
    prompts: list[Prompt] = Field(default_factory=list)
    prompts_file: str | None = None
    task: TaskSpec | None = None
    chat: bool = True
    system: str | None = None
    sampler: dict[str, Any] = Field(default_factory=dict)
    preset: Literal["default", "candle", "greedy"] = "default"
    strategies: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}})
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    samples: int = Field(default=1, gt=0)
    seeds: list[int] | Literal["random"] = Field(default_factory=lambda: [0])
    max_new_tokens: int = Field(default=100, gt=0)
    stop: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: list(METRICS))
    batch_size: int = Field(default=32, gt=0)
    output: str = "results"
    judge: JudgeSpec | None = None
    baseline: str | None = None

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_ids(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [
                {"id": f"p{i}", "text": p} if isinstance(p, str) else p for i, p in enumerate(value)
            ]
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        for m in value:
            if m == "tok_s":
                raise ValueError(
                    "'tok_s' is not a metric: speed is a batch's, not a sample's, and every "
                    "report gives it beside the metrics (report.md's Speed section, speed.csv); "
                    "leave it out of metrics"
                )
            if m not in METRICS:
                raise ValueError(
                    f"unknown metric {m!r}{suggest(m, METRICS)}; known: {', '.join(METRICS)}"
                )
        return value

    @field_validator("sampler")
    @classmethod
    def _sampler_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_sampler_keys(value, "sampler")
        return value

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("at least one strategy is needed")
        for name, fields in value.items():
            _check_sampler_keys(fields, f"strategies.{name}")
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep_keys(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            head, _, rest = key.partition(".")
            if head not in ("sampler", "strategies") or not rest:
                raise ValueError(
                    f"sweep key {key!r}: sweep sampler fields, e.g. 'sampler.temperature'"
                )
            if not values:
                raise ValueError(f"sweep key {key!r} has no values")
        return value

    @model_validator(mode="after")
    def _prompts_given(self) -> ExperimentConfig:
        if self.task is not None and (self.prompts or self.prompts_file):
            raise ValueError(
                "a task gives the prompts (one per item); leave out prompts and prompts_file"
            )
        if not self.prompts and not self.prompts_file and self.task is None:
            raise ValueError(
                "give prompts (a list), prompts_file (a text file, one prompt a line) or a task"
            )
        ids = [p.id for p in self.prompts]
        if len(set(ids)) != len(ids):
            raise ValueError("prompt ids must be unique")
        return self

    # -- derived --------------------------------------------------------------

    def config_hash(self) -> str:
        """sha256 of the canonical JSON of the validated config (what the samples were made
        with; the report-only keys ``judge``, ``baseline`` and ``metrics`` are left out)."""
        data = self.model_dump(mode="json", exclude=set(REPORT_ONLY))
        for name in (
            "quantized",
            "layout",
            "mesh",
            "policy",
            "activations",
        ):  # added later: unset or
            if not data["model"][name]:  # off: the hash of a config made before them stays
                del data["model"][name]
        if data["task"] is None:  # likewise
            del data["task"]
        del data["model"]["map_prepared"]  # how the weights reach memory changes no result
        blob = json.dumps(
            data,
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def prompt_list(self, base_dir: Path | None = None) -> list[Prompt]:
        """The prompts: the config's, its prompts_file's lines, or its task's items."""
        if self.task is not None:
            return [Prompt(id=i.id, text=i.text) for i in load_task(self.task, base_dir).items]
        prompts = list(self.prompts)
        if self.prompts_file:
            path = Path(self.prompts_file)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            except OSError as e:
                raise ConfigError(
                    f"prompts_file {str(path)!r}: cannot read it ({e.strerror or e})."
                ) from None
            prompts += [Prompt(id=f"{path.stem}{i}", text=t) for i, t in enumerate(lines) if t]
        return prompts

    def strategy_samplers(self) -> dict[str, Sampler]:
        """Each (swept) strategy's validated Sampler, named ``strategy`` or
        ``strategy[key=value,...]`` for sweep points."""
        points = [
            dict(zip(self.sweep, combo, strict=True))
            for combo in itertools.product(*self.sweep.values())
        ] or [{}]
        out: dict[str, Sampler] = {}
        for point in points:
            base = dict(self.sampler)
            strategies = copy.deepcopy(self.strategies)
            for key, value in point.items():
                head, _, rest = key.partition(".")
                if head == "sampler":
                    _check_sampler_keys({rest: value}, "sweep")
                    base[rest] = value
                else:
                    strategy, _, field = rest.partition(".")
                    if strategy not in strategies:
                        raise ConfigError(
                            f"sweep key {key!r}: no strategy {strategy!r}{suggest(strategy, strategies)}."
                        )
                    _check_sampler_keys({field: value}, "sweep")
                    strategies[strategy][field] = value
            label = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())
            for name, fields in strategies.items():
                full = f"{name}[{label}]" if label else name
                out[full] = _make_sampler(
                    PRESETS[self.preset], {**base, **fields}, f"strategies.{name}"
                )
        return out


def _make_sampler(base: Sampler, fields: dict[str, Any], where: str) -> Sampler:
    fields = {
        k: tuple(map(tuple, v)) if k == "logit_bias" else tuple(v) if isinstance(v, list) else v
        for k, v in fields.items()
    }
    if "order" in fields and isinstance(fields["order"], str):
        fields["order"] = {"llama.cpp": LLAMACPP_ORDER, "candle": CANDLE_ORDER}.get(
            fields["order"], (fields["order"],)
        )
    try:
        return base.replace(**fields)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_sampler_keys(fields: dict[str, Any], where: str) -> None:
    for key in fields:
        if key not in SAMPLER_FIELDS:
            raise ValueError(f"{where}.{key} is not a sampler field{suggest(key, SAMPLER_FIELDS)}")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides (dotted keys, YAML values) applied to a raw config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. sampler.temperature=0.7.")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section.")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read, override and validate a YAML config; every problem is a ConfigError naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e}).") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a YAML mapping (key: value lines).")
    return parse_config(apply_overrides(raw, overrides), str(path))


def parse_config(raw: dict[str, Any], where: str = "config") -> ExperimentConfig:
    try:
        config = ExperimentConfig.model_validate(raw)
        names = config.strategy_samplers()
        if config.baseline is not None and config.baseline not in names:
            raise ConfigError(
                f"baseline = {config.baseline!r}: no such strategy{suggest(config.baseline, names)}; "
                f"give one of {', '.join(names)}."
            )
    except ValidationError as e:
        raise ConfigError(f"{where}: " + "; ".join(_describe(err) for err in e.errors())) from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return config


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = (
            ExperimentConfig
            if len(err["loc"]) == 1
            else {
                "model": ModelSpec,
                "judge": JudgeSpec,
                "task": TaskSpec,
                "task.extract": ExtractSpec,
            }.get(".".join(str(p) for p in err["loc"][:-1]))
        )
        fields = parent.model_fields if parent is not None else {}
        return f"unknown key {key!r}{suggest(str(err['loc'][-1]), fields)}"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{key}{shown}: {msg}" if key else msg
