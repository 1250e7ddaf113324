"""The runner: rows with provenance, determinism, resume after a killed run, the CLI end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import pytest

from phijax.errors import ConfigError
from phijax.experiment import load_config, read_results, run
from phijax.experiment.runner import RESULTS

from processes import kill_midway
from rows import experiment_config, keyed


def test_rows_and_provenance(tmp_path, tiny_model):
    config = load_config(experiment_config(tmp_path))
    results = run(config, model=tiny_model, progress=False)
    rows = read_results(results)
    assert len(rows) == 4 * 4 * 2 * 2 == len(keyed(rows))
    row = rows[0]
    for key in ("strategy", "prompt_id", "prompt", "seed", "sample", "tokens", "text", "logprobs",
                "finish_reason", "timings", "sampler", "config_hash", "model_sha256", "phijax"):  # fmt: skip
        assert key in row
    prov = json.loads((results.parent / "provenance.json").read_text())
    assert prov["config_hash"] == config.config_hash() == row["config_hash"]
    assert prov["model"]["sha256"] == row["model_sha256"] and len(row["model_sha256"]) == 64
    assert (
        prov["versions"]["jax"]
        and prov["device"]["platform"] == jax.devices()[0].platform
        and prov["seeds"] == [0, 1]
    )
    # a row is exactly what generate() gives for its key, alone
    r = keyed(rows)[("nucleus", "p2", 1, 1)]
    sampler = config.strategy_samplers()["nucleus"]
    g = tiny_model.generate("the end", sampler=sampler, seed=1, num_samples=2, max_new_tokens=12)
    assert g.tokens[1] == r["tokens"] and g.texts[1] == r["text"]
    # a second run has nothing to do
    assert run(config, model=tiny_model, progress=False) == results and len(
        read_results(results)
    ) == len(rows)


def test_a_results_folder_of_another_config_is_refused(tmp_path, tiny_model):
    run(
        load_config(experiment_config(tmp_path, max_new_tokens=4)), model=tiny_model, progress=False
    )
    with pytest.raises(ConfigError, match="holds results of another config"):
        run(
            load_config(experiment_config(tmp_path, max_new_tokens=5)),
            model=tiny_model,
            progress=False,
        )


@pytest.mark.slow
def test_resume_after_a_killed_run(tmp_path, tiny_model):
    path = experiment_config(
        tmp_path, batch_size=2, max_new_tokens=64
    )  # long enough to be caught midway
    results = tmp_path / "results" / "exp" / RESULTS
    kill_midway(path, results, lambda data: data.count(b"\n") >= 3)
    before = read_results(results)
    assert 3 <= len(before) < 64, "the run was not killed midway"
    with open(results, "ab") as f:  # and a line cut mid-write
        f.write(b'{"strategy": "greedy", "prompt_id": "p0", "se')
    config = load_config(path)
    run(config, model=tiny_model, progress=False)
    after = read_results(results)
    assert len(after) == 64 == len(keyed(after)), "duplicates or lost rows"
    assert all(keyed(after)[k] == r for k, r in keyed(before).items())
    clean = run(config, model=tiny_model, output=tmp_path / "clean", progress=False)
    ours, theirs = keyed(after), keyed(read_results(clean))
    assert {k: r["tokens"] for k, r in ours.items()} == {k: r["tokens"] for k, r in theirs.items()}


def test_cli_run_and_report_on_the_demo(tmp_path, capsys):
    from phijax.cli import main

    assert main(_small_run("demo.yaml", tmp_path)) == 0
    out = capsys.readouterr().out
    for strategy in ("greedy", "temp_1.0", "top_p_0.9", "min_p_0.1", "candle"):
        assert f"| {strategy} |" in out
    assert "distinct_2" in out and "self_bleu" in out and "judge_perplexity" in out
    assert "Differences from greedy (paired)" in out and "Δ mean_logprob" in out
    assert "Speed (over batches, not samples)" in out and "tok_s" not in out
    folder = tmp_path / "demo"
    assert (folder / "report.md").exists() and (folder / "differences.csv").exists()
    with open(folder / "speed.csv", newline="") as f:
        speed = {r["strategy"]: r for r in csv.DictReader(f)}
    # 2 samples: the four strategies of one stage order share one generate() call, the
    # candle order has its own; speed is per call
    for name in ("temp_1.0", "top_p_0.9", "min_p_0.1"):
        assert {**speed[name], "strategy": "greedy"} == speed["greedy"]
    assert speed["(all)"]["batches"] == "2" and speed["candle"]["batches"] == "1"
    assert int(speed["(all)"]["decode_tokens"]) == sum(
        int(speed[name]["decode_tokens"]) for name in ("greedy", "candle")
    )
    assert (folder / "quality_diversity.png").stat().st_size > 1000
    rows = read_results(folder / RESULTS)
    assert all(isinstance(r["judge_logprob"], float) and r["judge_tokens"] > 0 for r in rows)
    with open(folder / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    metrics = [c for c in table[0] if f"{c}_lo" in table[0]]
    assert {
        "length",
        "distinct_2",
        "self_bleu",
        "mean_logprob",
        "judge_logprob",
        "judge_perplexity",
    } <= set(metrics)
    for row in table:
        for m in metrics:
            assert float(row[f"{m}_lo"]) <= float(row[m]) <= float(row[f"{m}_hi"]), (
                row["strategy"],
                m,
            )
    assert (
        main(
            [
                "report",
                str(folder),
                "--out",
                str(tmp_path / "r"),
                "--no-plots",
                "--baseline",
                "min_p_0.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| greedy |" in out and "Differences from min_p_0.1 (paired)" in out
    with open(tmp_path / "r" / "summary.csv", newline="") as f:
        assert list(csv.DictReader(f)) == table  # the same results give the same intervals
    assert main(["report", str(folder), "--baseline", "gredy", "--no-plots"]) == 2
    assert "did you mean 'greedy'" in capsys.readouterr().err


@pytest.mark.slow
def test_frontier_config_draws_the_frontier(tmp_path, capsys):
    from phijax.cli import main

    assert main(_small_run("frontier.yaml", tmp_path)) == 0
    assert "Differences from temperature[temperature=1.0] (paired)" in capsys.readouterr().out
    assert (tmp_path / "frontier" / "frontier.png").stat().st_size > 10_000


def test_cli_config_errors_are_one_line(tmp_path, capsys):
    from phijax.cli import main

    path = experiment_config(tmp_path)
    assert main(["run", str(path), "--set", "sampler.top_p=7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phijax: error: ") and "top_p = 7" in err and "\n" not in err


def _small_run(config: str, out: Path) -> list[str]:
    """CLI arguments running a shipped config small (2 samples of 6 tokens) into ``out``."""
    path = Path(__file__).parents[2] / "configs" / config
    return [
        "run",
        str(path),
        "--output",
        str(out),
        "--quiet",
        "--set",
        "samples=2",
        "--set",
        "max_new_tokens=6",
    ]
