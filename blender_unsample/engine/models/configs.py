"""The diffusers configs a single file needs (layer sizes, tokenizer vocabulary, training schedule):
from a folder the user names, else from the Hugging Face cache of a reference repo, downloaded
(configs and tokenizer files only, never weights) only when allowed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..errors import UnsampleError, first_line
from ..protocol import HUB_ID, ErrorCode

log = logging.getLogger(__name__)

# Configs and tokenizer vocabularies only: a few MB, never the weights.
CONFIG_FILES = ["*.json", "**/*.json", "*.txt", "**/*.txt"]


def resolve_config(
    config: str | Path | None,
    default_repo: str,
    role: str,
    allow_download: bool = False,
    required: Iterable[str] = (),
) -> Path:
    """The local folder with the diffusers configs for a single file.

    ``config`` may name a folder (used as it is) or a Hub repo id; without it, ``default_repo``. A repo
    comes from the Hugging Face cache, or is fetched (configs and tokenizer files only) when
    ``allow_download``; otherwise MODEL_NOT_FOUND says which repo is missing and how to get it.
    ``required`` lists paths the folder must have (``unet/config.json``, ...): a cached copy without
    them counts as missing, a named folder without them is refused.
    """
    required = list(required)
    if config:
        folder = Path(config).expanduser()
        if folder.is_dir():
            if missing := _missing(folder, required):
                raise UnsampleError(
                    ErrorCode.MODEL_NOT_FOUND,
                    f"the config folder {folder} for the {role} has no {', '.join(missing)}: name a diffusers "
                    f"folder of the matching kind (such as a local copy of {default_repo})",
                )
            return folder
        if not HUB_ID.match(str(config)):
            raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"the config folder {config} for the {role} does not exist")
    repo = str(config) if config else default_repo
    cached = _cached_configs(repo, required)
    if cached is not None:
        return cached
    if not allow_download:
        raise UnsampleError(
            ErrorCode.MODEL_NOT_FOUND,
            f"the {role} needs the configs of {repo} (a few MB of settings and tokenizer files, no weights), "
            f"which are not in the Hugging Face cache and downloads are off: allow downloads once (command "
            f"line: --allow-download) to fetch them, or name a config folder: a local diffusers copy of {repo}",
        )
    return _download_configs(repo, required, role)


def _missing(folder: Path, required: Iterable[str]) -> list[str]:
    return [name for name in required if not (folder / name).exists()]


def _cached_configs(repo: str, required: list[str]) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, allow_patterns=CONFIG_FILES, local_files_only=True))
    except (OSError, ValueError):  # not cached (or not a valid repo id, which cannot be cached either)
        return None
    return None if _missing(folder, required) else folder


def _download_configs(repo: str, required: list[str], role: str) -> Path:
    from huggingface_hub import snapshot_download

    log.info("downloading the configs of %s from the Hugging Face Hub", repo)
    try:
        folder = Path(snapshot_download(repo, allow_patterns=CONFIG_FILES))
    except (OSError, ValueError) as error:
        raise UnsampleError(
            ErrorCode.MODEL_NOT_FOUND,
            f"cannot download the configs of {repo} for the {role}: {first_line(error)}",
            str(error),
        ) from error
    if missing := _missing(folder, required):
        raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"{repo} has no {', '.join(missing)} for the {role}")
    return folder
