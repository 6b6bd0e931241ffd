"""Reading weights files safely: a ``.safetensors`` (its header alone, where names and shapes are
enough) or a ``.ckpt``/``.pt``/``.bin`` pickle through torch's weights-only unpickler. Nothing here
runs code from a file: a pickle that needs more than tensors and plain containers is refused. Every
failure is an UnsampleError that names the file and its role ("checkpoint", "LoRA", ...)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsampleError, first_line
from ..protocol import ErrorCode

Shapes = Mapping[str, tuple[int, ...]]


def read_state_dict(path: str | Path, role: str = "model") -> dict[str, torch.Tensor]:
    """All tensors in a ``.safetensors`` file, or in a pickle read with torch's weights-only loader.
    ``role`` ("motion module", "VAE", ...) names the file in errors."""
    file = existing_file(path, role)
    raw = _read_safetensors(file, role) if is_safetensors(file) else _read_pickle(file, role)
    return _tensors_only(raw, file)


def check_readable(path: str | Path, role: str) -> None:
    """Raise the error a damaged or unreadable weights file deserves; reads only a .safetensors
    header (which also tells a file cut short), and nothing of other formats."""
    file = Path(path)
    if is_safetensors(file):
        safetensors_shapes(file, role)


def existing_file(path: str | Path, role: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UnsampleError(ErrorCode.MODEL_NOT_FOUND, f"the {role} file {file} does not exist")
    return file


def is_safetensors(file: Path) -> bool:
    return file.suffix.lower() == ".safetensors"


@contextmanager
def _reading_safetensors(file: Path, role: str) -> Iterator[None]:
    """A .safetensors file's read errors in the user's words: damaged or cut short, or not readable."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as error:
        raise _unreadable_safetensors(file, role, error) from error
    except OSError as error:
        raise inaccessible(file, role, error) from error


def _read_safetensors(file: Path, role: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    with _reading_safetensors(file, role):
        return load_file(file)


def safetensors_shapes(file: Path, role: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes from the header alone: nothing else is read."""
    from safetensors import safe_open

    with _reading_safetensors(file, role), safe_open(file, "pt") as handle:
        names = handle.keys()  # a safetensors handle is not iterable itself
        return {key: tuple(handle.get_slice(key).get_shape()) for key in names}


def _unreadable(file: Path, role: str, error: Exception, as_what: str, why: str, advice: str = "") -> UnsampleError:
    message = f"the {role} file {file} {as_what}: {why} ({first_line(error)}){advice}"
    return UnsampleError(ErrorCode.MODEL_INVALID, message, str(error))


def _unreadable_safetensors(file: Path, role: str, error: Exception) -> UnsampleError:
    why = "it is cut short (an interrupted download?), damaged, or not a model at all"
    return _unreadable(file, role, error, "is not a readable .safetensors file", why)


def inaccessible(file: Path, role: str, error: OSError) -> UnsampleError:
    # The file is there (checked before) but the system refuses to hand it over: its permissions,
    # a disk or network share that fails. Nothing is wrong with the model itself, so not MODEL_INVALID.
    return UnsampleError(
        ErrorCode.MODEL_NOT_FOUND,
        f"the {role} file {file} exists but cannot be read ({error.strerror or first_line(error)}): "
        "check that your user may read it and that its disk is reachable",
        str(error),
    )


def _read_pickle(file: Path, role: str) -> Any:
    # weights_only: the unpickler builds tensors and plain containers and refuses everything else,
    # so no code in the file can run. There is deliberately no fallback to a full unpickle.
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise _unreadable_pickle(file, role, error) from error
        raise UnsampleError(
            ErrorCode.MODEL_INVALID,
            f"{file.name} holds Python objects besides weights, and loading it would run code from the "
            "file: it was refused and nothing in it was run. Use the .safetensors version of this model.",
            str(error),
        ) from error
    except OSError as error:
        raise inaccessible(file, role, error) from error
    except Exception as error:  # torch raises many kinds for a damaged archive; all mean the same here
        raise _unreadable_pickle(file, role, error) from error


def _unreadable_pickle(file: Path, role: str, error: Exception) -> UnsampleError:
    as_what, why = "cannot be read as a weights-only PyTorch checkpoint", "it is cut short, damaged or not a model"
    return _unreadable(file, role, error, as_what, why, ". Use the .safetensors version of this model.")


def _tensors_only(raw: Any, file: Path) -> dict[str, torch.Tensor]:
    # Lightning and the original training scripts nest the weights under "state_dict".
    while isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    tensors = (
        {key: value for key, value in raw.items() if isinstance(value, torch.Tensor)} if isinstance(raw, dict) else {}
    )
    if not tensors:
        raise UnsampleError(ErrorCode.MODEL_INVALID, f"{file.name} holds no model weights")
    return tensors


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def file_shapes(file: Path, role: str) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.Tensor] | None]:
    """Names and shapes, reading only the header of a .safetensors; a pickle must be read whole
    (the tensors are returned too, so that it is read once)."""
    if is_safetensors(file):
        return safetensors_shapes(file, role), None
    state = read_state_dict(file, role)
    return shapes_of(state), state


def has_prefix(names: Iterable[str], prefix: str) -> bool:
    return any(name.startswith(prefix) for name in names)
