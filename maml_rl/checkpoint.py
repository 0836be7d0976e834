"""Checkpoints: written atomically, loaded without running code.

Writing goes to a temporary file in the same folder, then renames it over the target
(:func:`maml_rl.files.atomic_write`), so a crash, kill -9 or Ctrl-C mid-write never leaves a
truncated checkpoint. A checkpoint holds only tensors and plain data (dicts, lists, str, int,
float, bool, None); loading uses ``torch.load(weights_only=True)``, which refuses anything else,
so a crafted file cannot run code (the clipped meta-steps' Adam moments and eta, under
``meta_optimizer``, are tensors too). Checkpoints written before format 2 also hold the numpy RNG
state as a numpy array; exactly the numpy globals needed to rebuild such an array are allowed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maml_rl.errors import CheckpointError
from maml_rl.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array rebuilder, any version
LEGACY_NUMPY_GLOBALS: list[Any] = [
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),  # written with numpy < 2
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType
]
"""What format-1 checkpoints need besides tensors and plain data: the uint32 numpy array of the
RNG state (``numpy.ndarray`` rebuilt by ``_reconstruct`` with its ``numpy.dtype``)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (temporary file + ``os.replace``)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file of ``path`` (a file, or a run folder holding ``checkpoint.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint of :func:`save_checkpoint` (a file, or a run folder holding one).

    Never unpickles code: raises :class:`~maml_rl.errors.CheckpointError` naming the file when
    it holds anything but tensors, plain data (and a format-1 checkpoint's numpy RNG array), or
    is truncated, corrupt or not a maml-rl checkpoint at all.
    """
    path = resolve_checkpoint(path)
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise CheckpointError(
                f"{path}: refused to load: it holds a {found.group(1)!r} object, and maml-rl "
                "checkpoints hold only tensors and plain data (it was altered or not written by "
                "maml-rl; loading it could run code)"
            ) from None
        raise CheckpointError(f"{path} is not a maml-rl checkpoint ({_first_line(err)})") from None
    except OSError:  # unreadable (permissions, I/O): not the file's content
        raise
    except Exception as err:  # torch raises many kinds on truncated or foreign bytes
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {_first_line(err)}"
        ) from None
    if not isinstance(state, dict) or not {"policy", "config", "iteration"} <= set(state):
        raise CheckpointError(f"{path} is not a maml-rl checkpoint (no policy, config, iteration)")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def numpy_rng_to_plain(state: tuple[Any, ...]) -> dict[str, Any]:
    """``np.random.get_state()`` as a tensor and plain data (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def numpy_rng_from_plain(state: Any) -> tuple[Any, ...]:
    """The argument of ``np.random.set_state`` for a state of :func:`numpy_rng_to_plain` (or the
    tuple a format-1 checkpoint stored as it was)."""
    if not isinstance(state, dict):
        return tuple(state)
    keys = np.asarray(state["keys"].numpy(), dtype=np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
