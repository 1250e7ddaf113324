"""Run an experiment config: batched generation, JSONL results with provenance, resumable.

Results go to ``<output>/<name>/samples.jsonl``, one JSON object a line, one line
per sample, keyed by (strategy, prompt id, seed, sample index), with
``provenance.json`` beside it. Each batch's lines are written with one
``write`` and an ``fsync``; after a crash the last line may be cut, and a
rerun drops it, skips every batch already written and generates the rest: no
duplicate and no lost rows, and the same tokens a clean run would have produced
(batches are formed from the whole plan, so a rerun's batches are the clean run's).

A config with a ``task`` makes one prompt per task item, and each row also gets the item's
``target``, the ``answer`` extracted from its text (null when none is found) and ``correct``
(1 when the answer matches the target, else 0): the ``accuracy`` metric (``tasks``).

Under ``jax.distributed`` (several processes, e.g. one per host) the batches are dealt
out over the processes: process ``i`` of ``n`` generates every ``n``-th batch from the
``i``-th into its own shard, ``samples-{i}-of-{n}.jsonl``. Readers merge every shard of a
folder (:func:`read_folder`), so the rows, and their tokens, are those of one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import phijax
from phijax.errors import ConfigError
from phijax.experiment.provenance import file_sha256, provenance
from phijax.experiment.schema import ExperimentConfig, ModelSpec, Prompt
from phijax.experiment.tasks import Task, TaskItem, load_task
from phijax.sampling import Sampler
from phijax.scoring import encode_pair

RESULTS = "samples.jsonl"
PROVENANCE = "provenance.json"
_SHARDS = "samples-*-of-*.jsonl"


@dataclass(frozen=True)
class Job:
    """``samples`` continuations of one prompt under one strategy and seed."""

    strategy: str
    sampler: Sampler
    prompt: Prompt
    seed: int


def result_dir(config: ExperimentConfig, output: str | os.PathLike | None = None) -> Path:
    return Path(output or config.output) / config.name


def read_results(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The complete rows of a results file. A cut last line (a crash mid-write) is ignored,
    or with ``repair`` cut off the file so appends start on a fresh line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1
    rows = []
    for number, line in enumerate(data[:good].splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise ConfigError(
                f"{path}:{number}: not a JSON line; the results file is damaged. Move it away and rerun."
            ) from None
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def shard_name(index: int, count: int) -> str:
    """The results file process ``index`` of ``count`` writes (``samples.jsonl`` alone)."""
    return RESULTS if count == 1 else f"samples-{index}-of-{count}.jsonl"


def results_files(out: Path) -> list[Path]:
    """Every results file of a folder: ``samples.jsonl`` and the shards of multi-process runs."""
    files = [out / RESULTS] if (out / RESULTS).exists() else []
    return files + sorted(out.glob(_SHARDS))


def read_folder(out: Path, *, repair: Path | None = None) -> list[dict[str, Any]]:
    """The complete rows of every results file of a folder, merged; a row key found in two
    files (two runs wrote the same folder at once) is an error naming both. ``repair``: the
    one file (this process's) whose cut last line is cut off, as in :func:`read_results`."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, int, int], Path] = {}
    for path in results_files(out):
        for row in read_results(path, repair=path == repair):
            key = _key(row)
            if key in seen:
                raise ConfigError(
                    f"{path}: row {key} is also in {seen[key]}; two runs wrote {out} at once. "
                    "Keep one of the files (or rerun into an empty --output)."
                )
            seen[key] = path
            rows.append(row)
    return rows


def _key(row: dict[str, Any]) -> tuple[str, str, int, int]:
    return row["strategy"], row["prompt_id"], row["seed"], row["sample"]


def _seeds(config: ExperimentConfig, out: Path, processes: int) -> list[int]:
    """The config's seeds; ``random`` draws one, recorded in provenance.json so a rerun resumes it
    (with several processes, process 0's draw, sent to all)."""
    if config.seeds != "random":
        return list(config.seeds)
    previous = out / PROVENANCE
    seed = (
        json.loads(previous.read_text())["seeds"][0]
        if previous.exists()
        else secrets.randbelow(2**31)
    )
    if processes > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        seed = int(multihost_utils.broadcast_one_to_all(np.int64(seed)))
    return [seed]


def jobs_for(
    config: ExperimentConfig,
    seeds: list[int],
    base_dir: Path | None = None,
    task: Task | None = None,
) -> list[Job]:
    """Every (strategy, seed, prompt) job; ``task``: the config's task, already loaded."""
    prompts = (
        [Prompt(id=i.id, text=i.text) for i in task.items]
        if task is not None
        else config.prompt_list(base_dir)
    )
    return [
        Job(name, sampler, prompt, seed)
        for name, sampler in config.strategy_samplers().items()
        for seed in seeds
        for prompt in prompts
    ]


def _batches(jobs: list[Job], samples: int, batch_size: int) -> Iterator[list[Job]]:
    """Jobs that can share a generate() call (same seed and stage order), at most
    ``batch_size`` rows each, in plan order."""
    groups: dict[tuple[int, tuple[str, ...]], list[Job]] = {}
    for job in jobs:
        groups.setdefault((job.seed, job.sampler.order), []).append(job)
    per = max(1, batch_size // samples)
    for group in groups.values():
        for i in range(0, len(group), per):
            yield group[i : i + per]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def run(
    config: ExperimentConfig,
    *,
    model: Any = None,
    output: str | os.PathLike | None = None,
    base_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Generate every missing row of ``config``; returns this process's results file.

    ``model``: an already loaded :class:`~phijax.Model` (else ``config.model`` is loaded).
    Under ``jax.distributed`` each process generates its share of the batches into its own
    shard (see the module docstring); call it in every process.
    """
    import jax

    index, count = jax.process_index(), jax.process_count()
    out = result_dir(config, output)
    out.mkdir(parents=True, exist_ok=True)
    results = out / shard_name(index, count)
    prov_path = out / PROVENANCE
    config_hash = config.config_hash()
    if prov_path.exists():
        previous = json.loads(prov_path.read_text())
        if previous.get("config_hash") != config_hash:
            raise ConfigError(
                f"{out} holds results of another config (hash {previous.get('config_hash', '?')[:12]}, "
                f"this one {config_hash[:12]}). Use another output folder (--output) or another name."
            )
    seeds = _seeds(config, out, count)
    task = load_task(config.task, base_dir) if config.task is not None else None
    jobs = jobs_for(config, seeds, base_dir, task)
    done = {_key(r) for r in read_folder(out, repair=results)}
    mine = list(_batches(jobs, config.samples, config.batch_size))[index::count]
    todo = [
        batch
        for batch in mine
        if any((j.strategy, j.prompt.id, j.seed, s) not in done for j in batch for s in range(config.samples))
    ]  # fmt: skip
    if todo:
        model = model if model is not None else load_model(config.model, progress)
        prov = provenance(model, config, seeds)
        if index == 0 and not prov_path.exists():
            tmp = prov_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(prov, indent=2))
            tmp.replace(prov_path)
        total = sum(len(b) for b in mine) * config.samples
        left = sum(len(b) for b in todo) * config.samples
        bar = tqdm(total=total, initial=total - left, desc=config.name if count == 1 else f"{config.name} [{index}/{count}]",
                   unit="sample", disable=None if progress else True)  # fmt: skip
        for batch in todo:
            bar.update(_generate_batch(model, config, batch, done, prov, results, task))
        bar.close()
    if config.judge is not None:  # this process's shard, and a share of earlier runs' files
        current = {shard_name(i, count) for i in range(count)}
        others = [f for f in results_files(out) if f.name not in current]
        for path in [results, *others[index::count]]:
            if path.exists():
                judge(config, path, model=model, progress=progress)
    return results


def _generate_batch(
    model: Any,
    config: ExperimentConfig,
    batch: list[Job],
    done: set,
    prov: dict[str, Any],
    results: Path,
    task: Task | None = None,
) -> int:
    """Generate one batch and append its rows not yet ``done``, graded when there is a
    ``task``; returns how many were written."""
    items = {i.id: i for i in task.items} if task is not None else {}
    prompts = [prompt_text(model, j.prompt.text, config) for j in batch]
    g = model.generate(
        prompts, sampler=[j.sampler for j in batch], seed=batch[0].seed, num_samples=config.samples,
        max_new_tokens=config.max_new_tokens, stop=config.stop,
    )  # fmt: skip
    rows = []
    for r, (job, sample) in enumerate((j, s) for j in batch for s in range(config.samples)):
        if (job.strategy, job.prompt.id, job.seed, sample) in done:
            continue
        rows.append(
            {
                "experiment": config.name,
                "strategy": job.strategy,
                "prompt_id": job.prompt.id,
                "seed": job.seed,
                "sample": sample,
                "prompt": job.prompt.text,
                "text": g.texts[r],
                "tokens": g.tokens[r],
                "logprobs": [round(lp, 6) for lp in g.logprobs[r]],
                "finish_reason": g.finish_reasons[r],
                **(_graded(task, items[job.prompt.id], g.texts[r]) if task is not None else {}),
                "timings": {k: round(v, 4) for k, v in g.timings.items()},
                "sampler": _sampler_dict(job.sampler),
                "config_hash": prov["config_hash"],
                "model_sha256": prov["model"]["sha256"],
                "phijax": prov["versions"]["phijax"],
            }
        )
    _write(results, rows)
    return len(rows)


def _graded(task: Task, item: TaskItem, text: str) -> dict[str, Any]:
    answer, correct = task.grade(item, text)
    return {"target": item.target, "answer": answer, "correct": int(correct)}


def load_model(spec: ModelSpec, progress: bool) -> Any:
    return phijax.load(spec.source, progress=progress, **spec.load_options())


def _rewrite(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the results file with ``rows`` atomically (a kill leaves the old or the new file)."""
    tmp = path.with_suffix(".rewrite")
    with open(tmp, "wb") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def judge(
    config: ExperimentConfig, results: Path, *, model: Any = None, progress: bool = True
) -> int:
    """Score every row not yet scored by ``config.judge``; returns how many were scored.

    Each row gets ``judge_logprob`` (mean log-probability per token of its text after its
    prompt, under the judge; null for an empty continuation), ``judge_tokens`` (the judge's
    token count: its text's tokens as they stand after the prompt, split as lm_eval does, so
    the scores are ``Model.loglikelihood``'s over the prompt and text) and ``judge`` (the
    judge file's sha256 prefix and chat flag). After each batch the results file is replaced
    atomically, so a killed run resumes with no lost or duplicated scores, and a row scored by
    another judge is scored again. ``model``: the generator, reused when the judge is the same
    model spec.
    """
    import jax

    spec = config.judge
    if spec is None:
        return 0
    rows = read_results(results, repair=True)
    judge_model = None
    if (
        model is not None
        and spec.model_dump(exclude={"chat", "batch_size"}) == config.model.model_dump()
    ):
        judge_model = model
    if judge_model is None:
        judge_model = load_model(
            ModelSpec(**spec.model_dump(exclude={"chat", "batch_size"})), progress
        )
    sha = file_sha256(Path(judge_model.path))
    judge_id = f"{sha[:16]}:{'chat' if spec.chat else 'raw'}"
    prov_path = results.parent / PROVENANCE
    if prov_path.exists() and jax.process_index() == 0:  # one writer
        prov = json.loads(prov_path.read_text())
        info = {
            "source": spec.source,
            "path": str(judge_model.path),
            "sha256": sha,
            "chat": spec.chat,
            "id": judge_id,
        }
        if prov.get("judge") != info:
            prov["judge"] = info
            tmp = prov_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(prov, indent=2))
            tmp.replace(prov_path)
    todo = [i for i, r in enumerate(rows) if r.get("judge") != judge_id]
    tok = judge_model.tokenizer
    # identical (prompt, text) pairs (greedy's samples) are scored once; shorter ones first, so a
    # batch pads little
    pairs: dict[tuple[str, str], list[int]] = {}
    for i in todo:
        pairs.setdefault((rows[i]["prompt"], rows[i]["text"]), []).append(i)
    encoded = []
    for (prompt, text), members in pairs.items():
        ctx, cont = (
            encode_pair(tok, _judge_prompt(tok, prompt, config, spec.chat), text)
            if text
            else ([], [])
        )
        if not cont:  # nothing to score
            for i in members:
                rows[i].update(judge_logprob=None, judge_tokens=0, judge=judge_id)
            continue
        encoded.append((ctx, cont, members))
    encoded.sort(key=lambda e: len(e[0]) + len(e[1]))
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"{config.name} judge", unit="sample",
               disable=None if progress else True)  # fmt: skip
    if todo and not encoded:  # only empty continuations
        _rewrite(results, rows)
    for start in range(0, len(encoded), spec.batch_size):
        batch = encoded[start : start + spec.batch_size]
        scores = judge_model.score([e[0] for e in batch], [e[1] for e in batch])
        for (_, _, members), lp in zip(batch, scores, strict=True):
            for i in members:
                rows[i].update(
                    judge_logprob=round(float(lp.mean()), 6), judge_tokens=len(lp), judge=judge_id
                )
        _rewrite(results, rows)
        bar.update(sum(len(e[2]) for e in batch))
    bar.close()
    return len(todo)


def _judge_prompt(tok: Any, text: str, config: ExperimentConfig, chat: bool) -> str:
    """The prompt as the judge reads it: the text, or the judge's chat rendering of it."""
    if not chat:
        return text
    messages = ([{"role": "system", "content": config.system}] if config.system else []) + [
        {"role": "user", "content": text}
    ]
    return tok.apply_chat_template(messages)


def prompt_text(model: Any, text: str, config: ExperimentConfig) -> str | list[int]:
    if not config.chat:
        return text
    messages = ([{"role": "system", "content": config.system}] if config.system else []) + [
        {"role": "user", "content": text}
    ]
    return model.tokenizer.encode_chat(messages)


def _sampler_dict(s: Sampler) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
