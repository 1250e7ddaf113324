"""Experiments under ``jax.distributed``: two real processes on this machine (a local
coordinator, gloo collectives on CPU) write the rows one process writes, and a job killed
midway resumes with no lost or duplicated row."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phijax.errors import ConfigError
from phijax.experiment import load_config, read_folder, read_results, run
from phijax.experiment.runner import RESULTS, results_files

from rows import experiment_config, keyed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: Path, count: int = 2) -> list[subprocess.Popen]:
    """``phijax run`` as ``count`` processes of one jax.distributed job."""
    port = _free_port()
    procs = []
    for i in range(count):
        argv = [sys.executable, "-m", "phijax.cli", "run", str(config), "--quiet", "--no-plots",
                "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(count), "--process-id", str(i)]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Wait for every process; their stdout. A failure or a hang fails the test (and kills all)."""
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err.decode()[-3000:]
            outs.append(out.decode())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def test_two_processes_write_the_rows_of_one(tmp_path, tiny_model):
    path = experiment_config(tmp_path, "dist")
    config = load_config(path)
    outs = _finish(_launch(path))
    folder = tmp_path / "results" / "dist"
    shards = [folder / "samples-0-of-2.jsonl", folder / "samples-1-of-2.jsonl"]
    assert results_files(folder) == shards and not (folder / RESULTS).exists()
    parts = [keyed(read_results(s)) for s in shards]
    assert parts[0] and parts[1] and not parts[0].keys() & parts[1].keys(), "each row in one shard"
    merged = keyed(read_folder(folder))
    one = keyed(
        read_results(run(config, model=tiny_model, output=tmp_path / "one", progress=False))
    )
    assert merged.keys() == one.keys() and len(one) == 4 * 4 * 2 * 2
    for k, row in one.items():
        assert merged[k]["tokens"] == row["tokens"], k
        assert merged[k]["logprobs"] == row["logprobs"], k  # same batches, same programs
    # process 0 reports every shard once all are written; process 1 only says where it wrote
    assert "| greedy | 16 |" in outs[0] and "process 1 of 2 wrote" in outs[1]
    assert "64 samples" in (folder / "report.md").read_text()
    # a single-process rerun of the folder finds nothing to do
    assert run(config, model=tiny_model, progress=False) == folder / RESULTS
    assert not (folder / RESULTS).exists() and keyed(read_folder(folder)) == merged


def test_a_killed_job_resumes_without_lost_or_duplicated_rows(tmp_path, tiny_model):
    path = experiment_config(
        tmp_path, "dist", batch_size=2, max_new_tokens=64
    )  # 32 batches: caught midway
    folder = tmp_path / "results" / "dist"
    procs = _launch(path)
    shard = folder / "samples-1-of-2.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if shard.exists() and shard.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.01)
    assert all(p.poll() is None for p in procs), "a process ended before the kill"
    os.kill(procs[1].pid, signal.SIGKILL)  # one host dies; the scheduler then stops the job
    time.sleep(0.5)
    os.kill(procs[0].pid, signal.SIGKILL)
    for p in procs:
        p.wait()
    before = keyed(read_folder(folder))
    assert 4 <= len(before) < 64, "the job was not killed midway"
    with open(shard, "ab") as f:  # and a line cut mid-write
        f.write(b'{"strategy": "greedy", "prompt_id": "p0", "se')
    _finish(_launch(path))
    after = read_folder(folder)
    assert len(after) == 64 == len(keyed(after)), "duplicates or lost rows"
    assert all(keyed(after)[k] == r for k, r in before.items()), "a written row changed"
    clean = keyed(read_results(run(load_config(path), model=tiny_model, output=tmp_path / "clean", progress=False)))  # fmt: skip
    assert {k: r["tokens"] for k, r in keyed(after).items()} == {
        k: r["tokens"] for k, r in clean.items()
    }


def test_rows_written_twice_are_refused_by_name(tmp_path, tiny_model):
    config = load_config(experiment_config(tmp_path, "dist", max_new_tokens=4))
    first = run(config, model=tiny_model, progress=False)
    (first.parent / "samples-1-of-2.jsonl").write_bytes(first.read_bytes().splitlines(True)[0])
    with pytest.raises(
        ConfigError, match=r"samples-1-of-2.jsonl: row .* is also in .*samples.jsonl"
    ):
        read_folder(first.parent)


def test_coordinator_flags_go_together(tmp_path):
    from phijax.cli import main

    assert (
        main(["run", str(experiment_config(tmp_path, "dist")), "--coordinator", "127.0.0.1:1"]) == 2
    )
