"""phijax's lm-evaluation-harness adapter (``phijax.lm_eval``, the optional ``phijax[eval]``).

Requests are built as lm_eval builds them and scored by ``Model.loglikelihood`` /
``Model.generate``; the slow tests run ``phijax eval`` on the local tasks of
``eval_tasks/`` and, where torch and transformers are installed, compare it request by
request with ``lm_eval --model hf`` on the same GGUF (``eval_tasks/parity.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="the optional extra: pip install 'phijax[eval]'")

from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

import phijax
from phijax import scoring
from phijax.errors import ConfigError
from phijax.lm_eval import (
    LocalTaskManager,
    PhijaxLM,
    index_without_builtins,
    local_tasks,
    render_chat,
    sampler_for,
)

ROOT = Path(__file__).resolve().parent.parent
MAX_LENGTH = 64


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def lm(smollm2_model) -> PhijaxLM:
    return PhijaxLM(pretrained=smollm2_model, max_length=MAX_LENGTH, batch_size=4)


def test_loglikelihood_is_the_models(lm, smollm2_model):
    """lm_eval's request building (empty and space-ended contexts included) over
    ``Model.loglikelihood``: the same pairs, so the same numbers, bit for bit."""
    pairs = [
        ("Question: What is the capital of France?\nAnswer:", " Paris"),
        ("The capital of Italy is ", "Rome"),
        ("", "Hello there"),
        ("word " * 80, "end"),  # longer than max_length: truncated from the left
    ]
    got = lm.loglikelihood(_requests("loglikelihood", pairs))
    want = smollm2_model.loglikelihood(
        [c for c, _ in pairs], [k for _, k in pairs], max_length=MAX_LENGTH, batch_size=4
    )
    assert got == want


def test_rolling_scores_every_token_once(lm, smollm2_model):
    text = "The river bends slowly through the valley, past farms and old stone bridges. " * 10
    [total] = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    ids = lm.tok_encode(text)
    windows = [
        make_disjoint_window(w)
        for w in get_rolling_token_windows(ids, lm.prefix_token_id, MAX_LENGTH, 1)
    ]
    assert len(windows) > 1 and sum(len(cont) for _, cont in windows) == len(ids)
    per_window = smollm2_model.loglikelihood(
        [c for c, _ in windows], [k for _, k in windows], max_length=MAX_LENGTH, batch_size=4
    )
    assert total == sum(ll for ll, _ in per_window)
    whole = PhijaxLM(pretrained=smollm2_model, max_length=512, batch_size=4)
    [one] = whole.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    assert one == smollm2_model.loglikelihood([[lm.prefix_token_id]], [ids], max_length=512)[0][0]


def test_generate_until(lm, smollm2_model):
    prompt = "Q: What is the capital of France?\nA:"
    kwargs = {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}
    long_prompt = "Some filler words. " * 30 + prompt  # longer than max_length - max_gen_toks
    out = lm.generate_until(
        _requests(
            "generate_until",
            [(prompt, kwargs), (prompt, {**kwargs, "until": ["", "\n"]}), (long_prompt, kwargs)],
        )
    )
    g = smollm2_model.generate(prompt, sampler=phijax.Sampler.greedy(), max_new_tokens=12)
    assert out[0] == g.texts[0].split("\n")[0] and out[0]
    assert out[1] == out[0]  # the empty stop string is dropped, not matched everywhere
    kept = scoring.encode(smollm2_model.tokenizer, long_prompt)[-(MAX_LENGTH - 12) :]
    g = smollm2_model.generate([kept], sampler=phijax.Sampler.greedy(), max_new_tokens=12)
    assert out[2] == g.texts[0].split("\n")[0]


def test_sampler_mapping():
    assert sampler_for({"do_sample": False, "temperature": 0.0}) == phijax.Sampler.greedy()
    s = sampler_for(
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.3}
    )
    assert (s.temperature, s.top_p, s.top_k) == (0.7, 0.9, 0)
    assert (s.repetition_penalty, s.repeat_last_n, s.penalize_prompt) == (1.3, -1, True)
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        sampler_for({"do_sample": True, "no_repeat_ngram_size": 3})
    with pytest.raises(ConfigError, match="num_beams"):
        sampler_for({"num_beams": 4})


def test_chat_template_continues_the_final_message(lm, smollm2_model):
    tok = smollm2_model.tokenizer
    chat = [{"role": "user", "content": "Q: What is 2 + 2?"}]
    assert lm.apply_chat_template(chat) == tok.apply_chat_template(chat)
    prefixed = [*chat, {"role": "assistant", "content": "The answer is"}]
    text = lm.apply_chat_template(prefixed, add_generation_prompt=False)
    closed = tok.apply_chat_template(prefixed, add_generation_prompt=False)
    assert closed.endswith("The answer is<|im_end|>\n")  # phijax's template rendering
    assert text == closed[: -len("<|im_end|>\n")]  # HF's continue_final_message
    assert render_chat(tok, prefixed, add_generation_prompt=False) == text


def test_model_args(smollm2_model, smollm2_gguf):
    lm = PhijaxLM.create_from_arg_obj(
        {"pretrained": smollm2_model, "max_length": 128},
        {"batch_size": "auto:4", "max_batch_size": 64, "device": "cuda:0"},
    )
    assert (lm.max_length, lm.batch_size, lm.prefix_token_id) == (128, None, 1)
    assert lm.eot_token_id == smollm2_model.tokenizer.eos_id
    with pytest.raises(ConfigError, match="'tokenizer'"):
        PhijaxLM(pretrained=smollm2_model, tokenizer="x")
    with pytest.raises(ConfigError, match="max_length=100000"):
        PhijaxLM(pretrained=smollm2_model, max_length=100000)
    with pytest.raises(ConfigError, match="batch_size=0"):
        PhijaxLM(pretrained=smollm2_model, batch_size=0)
    by_path = PhijaxLM.create_from_arg_string(f"pretrained={smollm2_gguf},max_length=32")
    assert by_path.max_length == 32 and by_path.model.path == smollm2_gguf


def test_local_tasks_need_no_builtin_index(tmp_path):
    """Only names lm_eval resolves alike without its built-in tasks skip their index."""
    local = str(ROOT / "eval_tasks")
    assert local_tasks(["phijax_facts_mc", "phijax_cloze_mc"], local)
    assert local_tasks(["phijax_local"], local)  # a group of local tasks
    assert not local_tasks(["phijax_facts_mc", "hellaswag"], local)  # a built-in task
    assert not local_tasks(["phijax_facts_m?"], local)  # a glob may match built-in names
    assert not local_tasks([str(ROOT / "eval_tasks" / "facts_mc.yaml")], local)
    assert not local_tasks(["phijax_facts_mc"], None) and not local_tasks(None, local)
    (tmp_path / "mixed.yaml").write_text("group: mixed\ntask:\n  - phijax_facts_mc\n  - arc_easy\n")
    (tmp_path / "facts.yaml").write_text((ROOT / "eval_tasks" / "facts_mc.yaml").read_text())
    (tmp_path / "tagged.yaml").write_text("tag: some_tag\ntask: tagged_task\n")
    assert local_tasks(["phijax_facts_mc"], str(tmp_path))
    assert not local_tasks(["mixed"], str(tmp_path))  # a local group with a built-in member
    assert not local_tasks(["some_tag"], str(tmp_path))  # built-in tasks may share a tag


def test_index_without_builtins_is_scoped():
    import lm_eval.evaluator
    import lm_eval.tasks

    builtin = lm_eval.tasks.TaskManager
    with index_without_builtins():
        assert lm_eval.tasks.TaskManager is LocalTaskManager
        manager = lm_eval.tasks.TaskManager(include_path=str(ROOT / "eval_tasks"))
    assert lm_eval.tasks.TaskManager is builtin and lm_eval.evaluator.TaskManager is builtin
    assert isinstance(manager, builtin)
    assert manager.all_tasks == [
        "phijax_cloze_mc", "phijax_facts_mc", "phijax_local", "phijax_short_answer_gen",
        "phijax_texts_rolling",
    ]  # fmt: skip


def _offline_env() -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_phijax_eval_cli(tmp_path, smollm2_gguf):
    """``phijax eval`` runs lm_eval's CLI on the local tasks, offline."""
    cmd = [
        sys.executable, "-m", "phijax.cli", "eval", "--model", str(smollm2_gguf),
        "--tasks", "phijax_facts_mc,phijax_texts_rolling", "--include_path", "eval_tasks",
        "--limit", "4", "--model_args", f"max_length={MAX_LENGTH}", "--batch_size", "8",
        "--output_path", str(tmp_path), "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=_offline_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = tmp_path.rglob("results_*.json")
    results = json.loads(path.read_text())["results"]
    assert 0 <= results["phijax_facts_mc"]["acc,none"] <= 1
    assert results["phijax_texts_rolling"]["word_perplexity,none"] > 1


# Runs phijax eval in a process that records the folders lm_eval's task index reads.
_RECORD_INDEX = """
import json, sys
from lm_eval.tasks._index import TaskIndex
from phijax.lm_eval import run_cli

build, roots = TaskIndex.build, []
def recording(paths, **kwargs):
    paths = list(paths)
    roots.extend(str(p) for p in paths)
    return build(paths, **kwargs)
TaskIndex.build = staticmethod(recording)
run_cli(sys.argv[1], sys.argv[2:])
print("INDEXED " + json.dumps(roots))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_phijax_eval_skips_the_builtin_index(tmp_path, smollm2_gguf):
    """``phijax eval`` on a local task reads no built-in task YAML and logs the same
    samples as lm_eval's normal path (taken for the glob ``phijax_facts_m?``, which lm_eval
    resolves against its full index): the same requests and the same log-likelihoods, exactly
    (the same program on the same batches in the same environment)."""
    import lm_eval.tasks

    builtin_root = str(Path(lm_eval.tasks.__file__).parent)
    parity, indexed = _parity_module(), {}
    for name, tasks in (("local", "phijax_facts_mc"), ("normal", "phijax_facts_m?")):
        cmd = [
            sys.executable, "-c", _RECORD_INDEX, str(smollm2_gguf), "--tasks", tasks,
            "--include_path", "eval_tasks", "--limit", "8", "--model_args",
            f"max_length={MAX_LENGTH}", "--batch_size", "8", "--log_samples",
            "--output_path", str(tmp_path / name), "--device", "cpu",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=ROOT, env=_offline_env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        [line] = [x for x in proc.stdout.splitlines() if x.startswith("INDEXED ")]
        indexed[name] = json.loads(line.removeprefix("INDEXED "))
    assert indexed["local"] and builtin_root not in indexed["local"]
    assert builtin_root in indexed["normal"]
    (local, _), (normal, _) = (parity.read_run(tmp_path / n) for n in ("local", "normal"))
    assert list(local) == list(normal) == ["phijax_facts_mc"]
    rows = [(r["doc_id"], r["arguments"], r["resps"]) for r in local["phijax_facts_mc"]]
    assert len(rows) == 8 and all(len(r[2]) == 4 for r in rows)
    assert rows == [(r["doc_id"], r["arguments"], r["resps"]) for r in normal["phijax_facts_mc"]]


def _parity_module():
    name = "eval_tasks_parity"
    if name not in sys.modules:  # registered first: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location(name, ROOT / "eval_tasks" / "parity.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_parity_with_hf(tmp_path, smollm2_gguf, chat):
    """The local tasks through ``phijax eval`` and ``lm_eval --model hf`` (transformers on the
    same GGUF, f32): every request within the f32 tolerance of parity.py, the same greedy
    flags, generations, request arguments and metrics."""
    for module in ("torch", "transformers", "accelerate"):
        pytest.importorskip(module, reason="the hf reference; else run eval_tasks/parity.py")
    parity = _parity_module()
    dirs = {b: tmp_path / b for b in ("phijax", "hf")}
    for backend, out in dirs.items():
        parity.run_lm_eval(
            backend, smollm2_gguf, out, max_length=MAX_LENGTH, chat=chat,
            batch_size=8 if backend == "phijax" else 1,
        )  # fmt: skip
    p = parity.compare(dirs["phijax"], dirs["hf"])
    print(f"requests {p.requests}, max |Δ loglik| {p.max_loglik_diff:.2e}, {p.metrics}")
    assert p.failures(parity.ATOL) == []
    assert p.requests["multiple_choice"] >= 4 * 20 and p.requests["generate_until"] >= 5
    assert p.requests["loglikelihood_rolling"] >= 3
    assert any(g.strip() for g in p.generations) and (chat or p.greedy_true > 0)  # not vacuous
    tok = phijax.Tokenizer.from_gguf(smollm2_gguf)
    texts = (ROOT / "eval_tasks" / "data" / "texts_rolling.jsonl").read_text().splitlines()
    assert all(
        len(tok.encode(json.loads(t)["text"])) > 2 * MAX_LENGTH for t in texts
    )  # windows roll
