"""``phijax run CONFIG --verify N``: regenerate stored rows from their provenance, compare tokens.

A row holds what made it: the prompt, the full sampler, the seed and the sample
index; the config (same hash) gives chat, system, ``max_new_tokens`` and stops.
By the key rule, sample ``s`` of a seed is the same alone or in any batch, so
regenerating it must give the same tokens, bit for bit, when the code, the
libraries, the device kind and the model file are the same. Those are compared
with ``provenance.json`` first, and each difference is reported as a warning.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phijax.errors import ConfigError
from phijax.experiment.provenance import (
    backend_record,
    cpu_kernel,
    file_sha256,
    package_version,
)
from phijax.experiment.runner import (
    PROVENANCE,
    load_model,
    prompt_text,
    read_folder,
    result_dir,
)
from phijax.experiment.schema import ExperimentConfig
from phijax.sampling import Sampler


@dataclass
class Verification:
    """What ``verify`` checked: the draw's ``seed``, the row keys, the ones that differ
    (with a line each saying how), and warnings about provenance that does not match."""

    seed: int
    checked: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def row_name(row: dict[str, Any]) -> str:
    return f"{row['strategy']}/{row['prompt_id']}/seed={row['seed']}/sample={row['sample']}"


def sampler_of(row: dict[str, Any]) -> Sampler:
    """The row's Sampler, rebuilt from its stored fields. Fields this phijax's Sampler lacks
    (rows of another version, which :func:`provenance_warnings` reports) are left out."""
    fields = {
        k: tuple(map(tuple, v)) if k == "logit_bias" else tuple(v) if isinstance(v, list) else v
        for k, v in row["sampler"].items()
    }
    return Sampler.from_mapping(fields, drop_unknown=True)


def provenance_warnings(prov: dict[str, Any], model: Any) -> list[str]:
    """Each way this machine differs from the one that made the rows."""
    import jax

    now = {name: package_version(name) for name in ("phijax", "jax", "jaxlib")}
    out = []
    for name, version in now.items():
        then = prov.get("versions", {}).get(name)
        if then != version:
            out.append(f"{name} {then} made these rows, this is {version}")
    device = jax.local_devices()[0]
    then_dev = prov.get("device", {})
    if (then_dev.get("platform"), then_dev.get("kind")) != (device.platform, device.device_kind):
        out.append(f"rows made on {then_dev.get('platform')} {then_dev.get('kind')!r}, "
                   f"this is {device.platform} {device.device_kind!r}")  # fmt: skip
    then_backend, backend = prov.get("model", {}).get("backend"), backend_record(model.backend)
    if then_backend is not None and then_backend != backend:
        out.append(f"rows made with backend {then_backend}, this is {backend}")
    then_kernel, kernel = then_dev.get("cpu_kernel"), cpu_kernel(device.platform)
    packed = (then_backend or {}).get("packed") or prov.get("config", {}).get("model", {}).get(
        "quantized"
    )
    if packed and then_kernel != kernel:
        out.append(f"rows made with the CPU kernel {then_kernel!r}, this is {kernel!r}")
    sha = file_sha256(Path(model.path))
    then_sha = prov.get("model", {}).get("sha256")
    if then_sha != sha:
        out.append(
            f"model file sha256 {str(then_sha)[:12]}… made these rows, this one is {sha[:12]}…"
        )
    return out


def verify(
    config: ExperimentConfig,
    n: int,
    *,
    seed: int | None = None,
    output: str | Path | None = None,
    model: Any = None,
    progress: bool = True,
) -> Verification:
    """Regenerate ``n`` stored rows (all of them if fewer), drawn with ``seed`` (random when
    None, recorded in the result), and compare their tokens."""
    out = result_dir(config, output)
    prov_path = out / PROVENANCE
    rows = read_folder(out)
    if not rows or not prov_path.exists():
        raise ConfigError(f"{out}: no results to verify; run the config first (phijax run CONFIG).")
    prov = json.loads(prov_path.read_text())
    if prov.get("config_hash") != config.config_hash():
        raise ConfigError(
            f"{out} holds results of another config; verify with the config that made them."
        )
    if n <= 0:
        raise ConfigError(f"--verify {n}: give a positive number of rows to regenerate.")
    seed = secrets.randbelow(2**31) if seed is None else seed
    report = Verification(seed=seed)
    pick = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    chosen = [rows[i] for i in sorted(pick)]
    if model is None:
        model = load_model(config.model, progress)
    report.warnings = provenance_warnings(prov, model)
    groups: dict[tuple[int, tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in chosen:
        sampler = sampler_of(row)
        groups.setdefault((int(row["seed"]), sampler.order), []).append(row)
    for (group_seed, _), group in groups.items():
        num = max(int(r["sample"]) for r in group) + 1
        g = model.generate(
            [prompt_text(model, r["prompt"], config) for r in group], sampler=[sampler_of(r) for r in group],
            seed=group_seed, num_samples=num, max_new_tokens=config.max_new_tokens, stop=config.stop,
        )  # fmt: skip
        for i, row in enumerate(group):
            name = row_name(row)
            report.checked.append(name)
            again = [int(t) for t in g.tokens[i * num + int(row["sample"])]]
            if again != row["tokens"]:
                at = next((k for k, (a, b) in enumerate(zip(again, row["tokens"], strict=False)) if a != b),
                          min(len(again), len(row["tokens"])))  # fmt: skip
                report.differ.append(
                    f"{name}: token {at} differs (stored {row['tokens'][at : at + 3]}…, regenerated {again[at : at + 3]}…; "
                    f"lengths {len(row['tokens'])} vs {len(again)})"
                )
    return report
