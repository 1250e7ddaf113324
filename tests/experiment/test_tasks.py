"""Task accuracy: answer extraction and normalisation, task configs and their errors, a run
whose rows are graded and whose report has accuracy with intervals and paired differences."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from phijax.errors import ConfigError
from phijax.experiment import load_config, read_results, run
from phijax.experiment.metrics import row_metrics
from phijax.experiment.report import differences, summary
from phijax.experiment.tasks import (
    ExtractSpec,
    TaskItem,
    TaskSpec,
    extract,
    grade,
    load_task,
    normalize,
)

from rows import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000", "1000"),
        ("$5.50", "5.5"),
        ("3.0.", "3"),
        ("-0", "0"),
        ("-12", "-12"),
        (" Paris. ", "paris"),
        ("St. Louis!", "st louis"),
        ("New   York", "new york"),
        ("(B)", "b"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("text", "rule", "expected"),
    [
        (" 12 apples, then 1,500 pears", ExtractSpec(preset="number"), "12"),
        (" 12 apples, then 1,500 pears", ExtractSpec(preset="number", match="last"), "1,500"),
        ("The answer is (C).", ExtractSpec(preset="letter"), "C"),
        ("I think B. Or A", ExtractSpec(preset="letter", match="last"), "A"),
        ("\n\n  Paris is the one \nnext", ExtractSpec(), "Paris is the one"),
        ("#### 72", ExtractSpec(regex=r"#### (\S+)"), "72"),
        ("answer 72", ExtractSpec(regex=r"\d+"), "72"),
        ("no digits", ExtractSpec(preset="number"), None),
    ],
)
def test_extract(text, rule, expected):
    assert extract(text, rule.pattern, rule.match) == expected


def test_grade():
    number = ExtractSpec(preset="number", match="last")
    assert grade("so it costs $1,000.00", "1000", number) == ("$1,000.00", True)
    assert grade("so it costs 999", "1000", number) == ("999", False)
    assert grade("nothing", "1000", number) == (None, False)
    assert grade(" paris", "Paris", ExtractSpec()) == ("paris", True)
    assert grade(" paris", "Paris", ExtractSpec(normalize=False)) == ("paris", False)
    # lm_eval's regexes_to_ignore apply to both sides (gsm8k's target holds the working)
    assert grade("72", "She sold 48 + 24 = 72.\n#### 72", ExtractSpec(), (r"(?s).*#### ",))[1]


def test_accuracy_metric():
    rows = [{"prompt_id": "p", "correct": c} for c in (1, 0, 1, None)]  # None: a row no task graded
    values, weights, transform = row_metrics(rows, ["accuracy"])["accuracy"]
    assert (values * weights)[weights > 0].sum() / weights.sum() == pytest.approx(2 / 3, abs=1e-15)
    assert list(weights) == [1, 1, 1, 0] and transform is not None
    assert row_metrics([{"prompt_id": "p"}], ["accuracy"]) == {}


def _task_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


ITEMS = [
    json.dumps({"q": "one", "a": "x"}),
    json.dumps({"q": "two", "a": "y", "id": "second"}),
    "",
    json.dumps({"q": "three", "a": 3}),
]


def test_local_task_items(tmp_path):
    task = load_task(
        TaskSpec(path="task.jsonl", prompt="Q: {q}\nA:", target="{a}"),
        _task_file(tmp_path, ITEMS).parent,
    )
    assert task.items == [
        TaskItem("0", "Q: one\nA:", "x"),
        TaskItem("second", "Q: two\nA:", "y"),
        TaskItem("2", "Q: three\nA:", "3"),
    ]
    assert task.grade(task.items[2], " 3.\nmore") == ("3.", True)


def _config(tmp_path: Path, **changes) -> dict:
    _task_file(tmp_path, ITEMS)
    return {
        "name": "acc",
        "model": {"source": str(TINY_MODEL)},
        "chat": False,
        "task": {"path": "task.jsonl", "prompt": "{q} =", "target": "{a}"},
        "strategies": {"greedy": {"temperature": 0}, "hot": {"temperature": 1.5}},
        "seeds": [0, 1],
        "max_new_tokens": 4,
        "batch_size": 8,
        "output": str(tmp_path / "results"),
        **changes,
    }


def _load(tmp_path: Path, raw: dict):
    path = tmp_path / "acc.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"path": "task.jsonl", "promt": "{q}"},
            "unknown key 'task.promt' (did you mean 'prompt'?)",
        ),
        (
            {"path": "task.jsonl", "prompt": "{q}", "extract": {"regx": "a"}},
            "did you mean 'regex'?",
        ),
        ({"path": "task.jsonl"}, "needs a prompt template"),
        ({"prompt": "{q}"}, "give path"),
        ({"path": "task.jsonl", "lm_eval": "gsm8k", "prompt": "{q}"}, "give path"),
        ({"lm_eval": "gsm8k", "prompt": "{q}"}, "brings its own prompt and target"),
        ({"path": "task.jsonl", "prompt": "{q}", "num_fewshot": 2}, "only for an lm_eval task"),
        ({"path": "t", "prompt": "{q}", "extract": {"regex": "(a)(b)"}}, "has 2 groups"),
        ({"path": "t", "prompt": "{q}", "extract": {"regex": "(a"}}, "not a regular expression"),
        ({"path": "t", "prompt": "{q}", "extract": {"regex": "a", "preset": "number"}}, "not both"),
    ],
)
def test_task_schema_errors(tmp_path, task, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(tmp_path, _config(tmp_path, task=task))


def test_a_task_replaces_prompts(tmp_path):
    with pytest.raises(ConfigError, match="a task gives the prompts"):
        _load(tmp_path, _config(tmp_path, prompts=["hello"]))


@pytest.mark.parametrize(
    ("lines", "prompt", "message"),
    [
        (None, "{q}", "cannot read it"),
        (["{not json"], "{q}", r"task.jsonl:1: not a JSON line"),
        (["[1, 2]"], "{q}", r"task.jsonl:1: an item is a JSON object"),
        (
            [json.dumps({"q": "a", "a": "b"})],
            "{question}",
            "names 'question', which this item lacks; its fields: q, a",
        ),
        ([json.dumps({"q": "a", "a": "b", "id": 1})] * 2, "{q}", "item ids must be unique"),
        ([""], "{q}", "no items"),
    ],
)
def test_task_file_errors(tmp_path, lines, prompt, message):
    if lines is not None:
        _task_file(tmp_path, lines)
    spec = TaskSpec(path="task.jsonl", prompt=prompt, target="{a}")
    with pytest.raises(ConfigError, match=message):
        load_task(spec, tmp_path)


def test_lm_eval_task_without_lm_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"task.lm_eval = 'gsm8k' needs .*phijax\[eval\]"):
        load_task(TaskSpec(lm_eval="gsm8k"))


def test_lm_eval_task_through_its_filters(monkeypatch):
    pytest.importorskip("lm_eval", reason="the optional extra: pip install 'phijax[eval]'")
    monkeypatch.chdir(REPO)  # the task's data_files are relative to the repository root
    spec = TaskSpec(lm_eval="phijax_short_answer_gen", include_path="eval_tasks", limit=2)
    task = load_task(spec, REPO)
    assert [i.text for i in task.items] == ["Q: What is the capital of France? A:", "Q: What is three plus four? A:"]  # fmt: skip
    assert [i.target for i in task.items] == ["Paris", "7"]
    # the task's last_word filter: the last word of the answer, compared case-insensitively
    assert task.grade(task.items[0], " The capital of France is paris.") == ("paris", True)
    assert task.grade(task.items[1], " It is 8") == ("8", False)


def test_run_grades_rows_and_reports_accuracy(tmp_path, tiny_model):
    config = _load(tmp_path, _config(tmp_path))
    rows = read_results(run(config, model=tiny_model, base_dir=tmp_path, progress=False))
    assert len(rows) == 3 * 2 * 2
    targets = {"0": "x", "second": "y", "2": "3"}
    for r in rows:
        assert r["target"] == targets[r["prompt_id"]]
        assert (r["answer"], bool(r["correct"])) == grade(r["text"], r["target"], ExtractSpec())
    table = {t["strategy"]: t for t in summary(rows, n_boot=200)}
    for name in ("greedy", "hot"):
        mine = [r["correct"] for r in rows if r["strategy"] == name]
        t = table[name]
        assert t["accuracy"] == pytest.approx(sum(mine) / len(mine), abs=1e-12)  # a mean of 0/1
        assert t["accuracy_lo"] <= t["accuracy"] <= t["accuracy_hi"]
    diffs = [d for d in differences(rows, "greedy", n_boot=200) if d["metric"] == "accuracy"]
    assert len(diffs) == 1 and diffs[0]["strategy"] == "hot" and diffs[0]["pairs"] == 6
    # rows without a task have no accuracy
    plain = [{k: v for k, v in r.items() if k not in ("target", "answer", "correct")} for r in rows]
    assert "accuracy" not in summary(plain, n_boot=10)[0]
