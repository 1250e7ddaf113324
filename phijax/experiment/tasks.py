"""Task accuracy: a task's items as prompts with targets, and the rule that grades an answer.

A config's ``task:`` is a local JSONL file (one JSON object a line) with a prompt
template, a target template and an answer-extraction rule, or an lm_eval task by name,
loaded through lm_eval's ``TaskManager`` (its documents, ``doc_to_text`` with its few-shot
context and ``gen_prefix``, ``doc_to_target`` and its first filter pipeline). Every item
becomes a prompt; every generated row is graded: the answer extracted from its text,
normalised, and compared exactly with the normalised target (``correct``: 0 or 1).

Extraction and normalisation are pure functions over strings (:func:`extract`,
:func:`normalize`, :func:`grade`); the loaders only turn items into :class:`TaskItem`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from phijax.errors import ConfigError

PRESETS = {
    "number": r"(-?\$?\d[\d,]*(?:\.\d+)?)",
    "letter": r"\(?\b([A-J])\b\)?",
    "line": r"(?m)^\s*(\S.*?)\s*$",
}
"""Extraction presets: ``number`` (an integer or decimal, commas and a dollar sign allowed),
``letter`` (a multiple-choice letter A-J standing alone, e.g. ``(B)`` or ``B.``), ``line``
(the first non-empty line, stripped)."""

_EDGE = " \t\n.,;:!?\"'()[]{}"
_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(?:\.\d*)?")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class ExtractSpec(BaseModel):
    """How an answer is read from a generated text: ``regex`` (at most one group: the
    answer; without a group the whole match) or a ``preset`` (:data:`PRESETS`; ``line`` when
    neither is given), its ``first`` or ``last`` match, and whether answer and target are
    ``normalize``\\ d before the exact comparison."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regex: str | None = None
    preset: Literal["number", "letter", "line"] | None = None
    match: Literal["first", "last"] = "first"
    normalize: bool = True

    @field_validator("regex")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                groups = re.compile(value).groups
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
            if groups > 1:
                raise ValueError(
                    f"has {groups} groups; give at most one (the answer), "
                    "e.g. '(?:A|a)nswer: (\\d+)' with non-capturing (?:...) for the rest"
                )
        return value

    @model_validator(mode="after")
    def _regex_or_preset(self) -> ExtractSpec:
        if self.regex is not None and self.preset is not None:
            raise ValueError("give regex or preset, not both")
        return self

    @property
    def pattern(self) -> str:
        return self.regex if self.regex is not None else PRESETS[self.preset or "line"]


class TaskSpec(BaseModel):
    """A config's ``task:``: ``path`` (a JSONL file, relative to the config's folder) with
    ``prompt`` and ``target`` templates (``str.format`` fields of each item, e.g.
    ``"Q: {question}\\nA:"``), or ``lm_eval`` (a task name; ``include_path``: a folder of
    task YAMLs; ``num_fewshot``: the task's own by default; ``filter``: the name of one of
    its filter pipelines, the first by default). ``extract``: the answer rule (for lm_eval,
    replaces the task's filters). ``limit``: only the first items."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    prompt: str | None = None
    target: str = "{answer}"
    lm_eval: str | None = None
    include_path: str | None = None
    num_fewshot: int | None = Field(default=None, ge=0)
    filter: str | None = None
    extract: ExtractSpec | None = None
    limit: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> TaskSpec:
        if (self.path is None) == (self.lm_eval is None):
            raise ValueError(
                "give path (a JSONL file, with prompt and target templates) or lm_eval "
                "(an lm_eval task name), one of them"
            )
        if self.path is not None:
            if self.prompt is None:
                raise ValueError(
                    f"path {self.path!r} needs a prompt template, e.g. 'Q: {{question}}\\nA:'"
                )
            lm_only = [k for k in ("include_path", "num_fewshot", "filter") if getattr(self, k) is not None]  # fmt: skip
            if lm_only:
                raise ValueError(f"{', '.join(lm_only)}: only for an lm_eval task")
        elif self.prompt is not None or "target" in self.model_fields_set:
            raise ValueError(
                f"lm_eval {self.lm_eval!r} brings its own prompt and target; leave them out"
            )
        return self

    def rule(self) -> ExtractSpec:
        return self.extract or ExtractSpec()


@dataclass(frozen=True)
class TaskItem:
    """One item: its prompt ``id`` and ``text`` and the ``target`` answer."""

    id: str
    text: str
    target: str


@dataclass(frozen=True)
class Task:
    """A loaded task: its items and ``grade(item, text) -> (answer or None, correct)``."""

    items: list[TaskItem]
    grade: Callable[[TaskItem, str], tuple[str | None, bool]]


def extract(text: str, pattern: str, match: Literal["first", "last"] = "first") -> str | None:
    """The answer in ``text``: group 1 of the first (or last) match of ``pattern`` (the
    whole match if it has no group), stripped; None when nothing matches."""
    found = list(re.finditer(pattern, text))
    if not found:
        return None
    m = found[0] if match == "first" else found[-1]
    return (m.group(1) if m.re.groups else m.group(0)).strip()


def normalize(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed; a number (``"1,000"``,
    ``"$5.50"``, ``"3.0"``) as its plain decimal (``"1000"``, ``"5.5"``, ``"3"``)."""
    core = " ".join(text.lower().split()).strip(_EDGE)
    if _NUMBER.fullmatch(core):
        try:
            value = Decimal(core.replace(",", "").replace("$", "")).normalize()
        except InvalidOperation:
            pass
        else:
            return format(value if value else Decimal(0), "f")
    return " ".join(core.translate(_PUNCTUATION).split())


def grade(
    text: str, target: str, rule: ExtractSpec, ignore: tuple[str, ...] = ()
) -> tuple[str | None, bool]:
    """(extracted answer, whether it equals the target). ``ignore``: regexes removed from
    both before comparing (lm_eval's ``regexes_to_ignore``)."""
    answer = extract(text, rule.pattern, rule.match)
    if answer is None:
        return None, False
    return answer, _compare(answer, target, rule.normalize, ignore)


def _compare(answer: str, target: str, norm: bool, ignore: tuple[str, ...]) -> bool:
    for pattern in ignore:
        answer, target = re.sub(pattern, "", answer), re.sub(pattern, "", target)
    return normalize(answer) == normalize(target) if norm else answer.strip() == target.strip()


def load_task(spec: TaskSpec, base_dir: Path | None = None) -> Task:
    """The task's items (the first ``limit``) and its grader; a ConfigError names what is wrong."""
    return _local(spec, base_dir) if spec.path is not None else _lm_eval(spec, base_dir)


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path)
    return base_dir / p if not p.is_absolute() and base_dir is not None else p


def _local(spec: TaskSpec, base_dir: Path | None) -> Task:
    assert spec.path is not None and spec.prompt is not None
    path = _resolve(spec.path, base_dir)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"task.path {str(path)!r}: cannot read it ({e.strerror or e}).") from None
    items: list[TaskItem] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not a JSON line ({e.msg}).") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}:{number}: an item is a JSON object, e.g. {{\"question\": ..., \"answer\": ...}}.")  # fmt: skip
        item_id = str(doc.get("id", len(items)))
        items.append(
            TaskItem(
                item_id,
                _fill(spec.prompt, doc, path, number, "prompt"),
                _fill(spec.target, doc, path, number, "target"),
            )
        )
    items = items[: spec.limit]
    if not items:
        raise ConfigError(f"task.path {str(path)!r}: no items (one JSON object a line).")
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"task.path {str(path)!r}: item ids must be unique.")
    rule = spec.rule()
    return Task(items, lambda item, text: grade(text, item.target, rule))


def _fill(template: str, doc: dict[str, Any], path: Path, number: int, key: str) -> str:
    try:
        return template.format_map(doc)
    except KeyError as e:
        raise ConfigError(
            f"{path}:{number}: task.{key} {template!r} names {e.args[0]!r}, which this item "
            f"lacks; its fields: {', '.join(doc)}."
        ) from None
    except (ValueError, IndexError) as e:
        raise ConfigError(f"task.{key} {template!r}: not a str.format template ({e}).") from None


def _lm_eval(spec: TaskSpec, base_dir: Path | None) -> Task:
    """An lm_eval task's test (else validation) documents through its own templates."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(
            f"task.lm_eval = {spec.lm_eval!r} needs lm-evaluation-harness ({e}); install it "
            "with pip install 'phijax[eval]'."
        ) from None
    include = str(_resolve(spec.include_path, base_dir)) if spec.include_path else None
    try:
        tasks = TaskManager(include_path=include).load([spec.lm_eval])["tasks"]
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise ConfigError(
            f"task.lm_eval = {spec.lm_eval!r}: lm_eval cannot load it ({e})."
        ) from None
    if len(tasks) != 1:
        raise ConfigError(
            f"task.lm_eval = {spec.lm_eval!r} is a group of {len(tasks)} tasks "
            f"({', '.join(sorted(tasks)[:5])}, ...); name one of them."
        )
    task = next(iter(tasks.values()))
    task.set_fewshot_seed(seed=1234)  # lm_eval's default fewshot_random_seed
    shots = spec.num_fewshot if spec.num_fewshot is not None else task.config.num_fewshot or 0
    docs = list(task.eval_docs)[: spec.limit]
    items, by_id = [], {}
    for i, doc in enumerate(docs):
        text = task.fewshot_context(doc=doc, num_fewshot=shots, gen_prefix=task.doc_to_prefix(doc))
        target = task.doc_to_target(doc)
        if task.config.doc_to_choice is not None and isinstance(target, int):
            target = task.doc_to_choice(doc)[target]
        items.append(TaskItem(str(i), str(text), str(target)))
        by_id[str(i)] = doc
    if not items:
        raise ConfigError(f"task.lm_eval = {spec.lm_eval!r}: the task has no documents.")
    ignore = tuple(
        r
        for m in task.config.metric_list or []
        if m.get("metric") == "exact_match"
        for r in m.get("regexes_to_ignore", [])
    )
    if spec.extract is not None:
        rule = spec.extract
        return Task(items, lambda item, text: grade(text, item.target, rule, ignore))
    pipelines = {f.name: f for f in task._filters}
    name = spec.filter or next(iter(pipelines))
    if name not in pipelines:
        raise ConfigError(
            f"task.filter = {name!r}: {spec.lm_eval} has the filters {', '.join(pipelines)}."
        )
    pipeline = pipelines[name]

    def by_filters(item: TaskItem, text: str) -> tuple[str | None, bool]:
        resps: Any = [[text]]
        for make in pipeline.filters:
            resps = list(make().apply(resps, [by_id[item.id]]))
        answer = resps[0][0] if isinstance(resps[0], list) else resps[0]
        return str(answer), _compare(str(answer), item.target, True, ignore)

    return Task(items, by_filters)
