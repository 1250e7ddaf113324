"""The judge (scores per row, resumes after a kill) and ``phijax run --verify``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from phijax.cli import main
from phijax.experiment import load_config, read_results, run, summary
from phijax.experiment.provenance import file_sha256
from phijax.experiment.runner import RESULTS, judge

from numerics import f32_atol
from processes import kill_midway
from rows import TINY_MODEL, keyed


def _config(tmp_path: Path, name="jv", **changes) -> Path:
    raw = {
        "name": name,
        "model": {"source": str(TINY_MODEL)},
        "chat": False,
        "prompts": ["hello there", "a b c", "the end"],
        "strategies": {
            "greedy": {"temperature": 0},
            "hot": {"temperature": 1.5},
            "nucleus": {"top_p": 0.8},
        },
        "samples": 2,
        "seeds": [0, 1],
        "max_new_tokens": 8,
        "batch_size": 6,
        "output": str(tmp_path / "results"),
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_judge_scores_every_row(tmp_path, tiny_model, smollm2_model):
    """A judge with another vocabulary (SmolLM2 judging the tiny model) scores each row's text."""
    path = _config(
        tmp_path, judge={"source": str(smollm2_model.path), "chat": True, "batch_size": 5}
    )
    config = load_config(path)
    results = run(config, model=tiny_model, progress=False)
    rows = read_results(results)
    assert len(rows) == 3 * 3 * 2 * 2
    scored = [r for r in rows if r["judge_logprob"] is not None]
    assert len(scored) >= len(rows) - 2 and all(r["judge"].endswith(":chat") for r in rows)
    r = scored[3]
    # the judge's score is loglikelihood() of the rendered prompt and the text, per token
    prompt = smollm2_model.tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}])
    [(total, _)] = smollm2_model.loglikelihood(prompt, r["text"])
    [lp] = smollm2_model.score(prompt, r["text"])
    assert r["judge_tokens"] == len(lp)
    # scored in another batch: the f32 bound per token (tests/numerics.py), and the 6 decimals
    ids = smollm2_model.tokenizer.encode(prompt + r["text"])
    atol = 2 * f32_atol(smollm2_model.config, float(np.ptp(smollm2_model.logits(ids)))) + 5e-7
    assert r["judge_logprob"] == pytest.approx(total / len(lp), abs=atol)
    table = {t["strategy"]: t for t in summary(rows)}
    for t in table.values():
        assert t["judge_perplexity_lo"] <= t["judge_perplexity"] <= t["judge_perplexity_hi"]
        assert t["judge_perplexity"] > 1
    prov = json.loads((results.parent / "provenance.json").read_text())
    assert (
        prov["judge"]["sha256"] == file_sha256(Path(smollm2_model.path)) != prov["model"]["sha256"]
    )
    assert rows[0]["judge"] == f"{prov['judge']['sha256'][:16]}:chat"
    assert judge(config, results, progress=False) == 0  # nothing left to score


@pytest.mark.slow
def test_judge_resumes_after_a_kill(tmp_path, tiny_model, smollm2_model):
    path = _config(
        tmp_path, judge={"source": str(smollm2_model.path), "chat": False, "batch_size": 1}
    )
    results = tmp_path / "results" / "jv" / RESULTS
    kill_midway(path, results, lambda data: data.count(b'"judge_logprob"') >= 3)
    before = read_results(results)
    judged = [r for r in before if "judge" in r]
    assert len(before) == 36 and 3 <= len(judged) < 36, "the judge was not killed midway"
    config = load_config(path)
    run(config, model=tiny_model, progress=False)
    after = read_results(results)
    assert len(after) == 36 == len(keyed(after)), "duplicates or lost rows"
    assert all("judge" in r for r in after)
    for r in judged:  # scores written before the kill are kept as they were
        assert keyed(after)[(r["strategy"], r["prompt_id"], r["seed"], r["sample"])] == r
    clean = run(config, model=tiny_model, output=tmp_path / "clean", progress=False)
    ours, theirs = keyed(after), keyed(read_results(clean))
    for k, r in ours.items():
        if r["judge_logprob"] is None:
            assert theirs[k]["judge_logprob"] is None
        else:
            assert r["judge_logprob"] == pytest.approx(theirs[k]["judge_logprob"], abs=1e-4)


def test_verify_passes_on_honest_rows_and_names_an_altered_one(tmp_path, tiny_model, capsys):
    path = _config(tmp_path)
    results = run(load_config(path), model=tiny_model, progress=False)
    assert main(["run", str(path), "--verify", "5", "--verify-seed", "7", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "all 5 rows regenerate to the same tokens" in captured.out
    assert "--verify-seed 7" in captured.err and "warning" not in captured.err
    # alter one token of one row
    rows = read_results(results)
    victim = next(r for r in rows if r["strategy"] == "hot" and len(r["tokens"]) > 2)
    victim["tokens"][1] = (victim["tokens"][1] + 1) % tiny_model.config.vocab_size
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["run", str(path), "--verify", "100", "--quiet"]) == 1
    out = capsys.readouterr().out
    name = f"hot/{victim['prompt_id']}/seed={victim['seed']}/sample={victim['sample']}"
    assert f"DIFFERS {name}: token 1 differs" in out and out.count("DIFFERS") == 1


def test_verify_warns_when_provenance_does_not_match(tmp_path, tiny_model, capsys):
    path = _config(tmp_path, max_new_tokens=4)
    results = run(load_config(path), model=tiny_model, progress=False)
    prov_path = results.parent / "provenance.json"
    prov = json.loads(prov_path.read_text())
    prov["versions"]["jax"] = "0.0.1"
    prov["device"]["kind"] = "TPU v9"
    prov["model"]["sha256"] = "0" * 64
    prov_path.write_text(json.dumps(prov))
    assert main(["run", str(path), "--verify", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: jax 0.0.1 made these rows" in err
    assert "'TPU v9'" in err and "model file sha256 000000000000" in err


def test_verify_without_results_is_a_config_error(tmp_path, capsys):
    assert main(["run", str(_config(tmp_path)), "--verify", "3"]) == 2
    assert "no results to verify" in capsys.readouterr().err
